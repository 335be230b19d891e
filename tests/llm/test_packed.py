"""The engine's oneDNN-packed output head (CPU, fp32): the same products as the plain
weight, the same greedy tokens as HF ``generate`` on the real SmolLM2-135M-Instruct,
and the model itself left untouched."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from facestream.llm import packed
from facestream.llm.engine import Engine
from facestream.llm.requests import GenerationRequest
from tests.llm.test_engine import NEW, check_against, greedy, prompts, reference  # noqa: F401

pytestmark = pytest.mark.skipif(not packed.usable(torch.zeros(1)),
                                reason="this torch build has no oneDNN packed linear on CPU")


@pytest.mark.parametrize("shape", [(1, 96), (2, 96), (8, 96), (33, 96), (3, 5, 96)])
def test_a_packed_linear_gives_the_plain_product_for_any_rows(shape):
    torch.manual_seed(0)
    linear = nn.Linear(96, 640)
    x = torch.randn(*shape)
    with torch.inference_mode():
        got = packed.PackedLinear(linear)(x)
        want = F.linear(x, linear.weight, linear.bias)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_engine_packs_copies_on_cpu_fp32_only_and_leaves_the_model_alone(smol):
    model, tokenizer = smol
    head = model.lm_head
    engine = Engine(model, tokenizer, max_batch=2, max_seq_len=64)
    assert engine._parts.packed and isinstance(engine._parts.lm_head, packed.PackedLinear)
    # The model's own module is as it was (generate and others use it).
    assert model.lm_head is head and isinstance(head, nn.Linear)
    assert not Engine(model, tokenizer, max_batch=2, max_seq_len=64,
                      packed_weights=False)._parts.packed
    half = copy.deepcopy(model).to(torch.bfloat16)
    assert not Engine(half, tokenizer, max_batch=2, max_seq_len=64)._parts.packed


@pytest.mark.slow
def test_packed_and_plain_weights_give_hf_generates_greedy_tokens(smol, prompts, reference):
    model, tokenizer = smol
    for packed_weights in (True, False):
        engine = Engine(model, tokenizer, max_batch=3, max_seq_len=160,
                        packed_weights=packed_weights)
        assert engine._parts.packed == packed_weights
        results = engine.generate([greedy(i, p) for i, p in enumerate(prompts)])
        check_against(results, reference, tokenizer, tokenizer.eos_token_id)
        late = engine.generate([GenerationRequest("late", prompts[0], max_new_tokens=NEW)])
        assert late[0].token_ids == reference[0]
