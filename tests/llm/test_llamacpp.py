"""SmolLM2 on llama.cpp (the compact profile's default): the shipped GGUF's weights, no torch.

The reference is the torch engine on the fp32 copy that ``models pull`` converts from the
shipped GGUF with transformers (its Q4_1 weights dequantised), itself checked against HF
``generate`` in test_engine.py.  llama.cpp runs the float16 copy ``models pull`` writes with
the gguf package (:func:`widen_gguf`): the same weights, computed in float16, so the two may
part only at a near-tie; the quality bar is the first sentence equal on >= 80 % of a held
set of prompts.  (On the 4-bit file itself llama.cpp rounds activations to 8 bits and agreed
on 4 of these 10.)"""

from __future__ import annotations

import numpy as np
import pytest

from facestream import assets
from facestream.llm.llamacpp import GgufTokenizer, LlamaCppEngine
from facestream.llm.requests import GenerationRequest
from facestream.llm.smollm import SmolDescriber, chatml

FACTS = [
    f"{who}, about {age} years old; expression: {label} ({score}%)"
    + ("; action units: AU12 3.1, AU25 2.4" if label == "happy" else "")
    for who, age, label, score in [
        ("a woman", 25, "happy", 81), ("a man", 47, "neutral", 64),
        ("a woman", 70, "sad", 55), ("a man", 8, "surprise", 72),
        ("a woman", 33, "angry", 48), ("a man", 61, "fear", 39),
        ("a woman", 19, "disgust", 44), ("a man", 30, "happy", 90),
        ("a woman", 52, "neutral", 70), ("a man", 75, "sad", 51),
    ]
]


@pytest.fixture(scope="module")
def gguf(settings):
    return assets.require(settings.cache_dir, assets.SMOLLM_F16)


def test_the_float16_copy_holds_the_shipped_weights(settings, gguf):
    """Checked against the fp32 copy transformers made from the 4-bit file (another reader
    of the same format): every matrix equal to float16 rounding."""
    import gguf as gguf_package
    from safetensors.numpy import load_file

    reference = load_file(str(settings.cache_dir / assets.SMOLLM_DIR / "model.safetensors"))
    tensors = {t.name: t for t in gguf_package.GGUFReader(str(gguf)).tensors}
    pairs = {"blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
             "blk.29.attn_output.weight": "model.layers.29.self_attn.o_proj.weight",
             "token_embd.weight": "model.embed_tokens.weight"}
    for ours, theirs in pairs.items():
        assert tensors[ours].tensor_type == gguf_package.GGMLQuantizationType.F16
        got = np.asarray(tensors[ours].data, np.float32)
        want = reference[theirs]
        assert got.shape == want.shape, ours
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6, err_msg=ours)


@pytest.fixture(scope="module")
def llama_describer(gguf):
    return SmolDescriber(gguf, runtime="llamacpp", max_new_tokens=40, threads=1)


@pytest.fixture(scope="module")
def torch_describer(settings, smol):
    return SmolDescriber(settings.cache_dir / assets.SMOLLM_DIR, runtime="torch",
                         max_new_tokens=40, threads=1)


def test_the_prompt_is_the_shipped_chat_template_and_tokenizes_alike(smol, gguf):
    _, hf = smol
    messages = [{"role": "system", "content": SmolDescriber.SYSTEM},
                {"role": "user", "content": f"Facts: {FACTS[0]}\nDescribe the face."}]
    text = chatml(messages)
    assert text == hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ours = GgufTokenizer.from_file(gguf)
    assert ours.encode(text) == hf(text, add_special_tokens=False).input_ids
    ids = hf(FACTS[3], add_special_tokens=False).input_ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_descriptions_match_the_fp32_reference_on_most_prompts(llama_describer,
                                                                torch_describer):
    ours = llama_describer.describe(FACTS)
    reference = torch_describer.describe(FACTS)
    assert all(text.strip() for text in ours), ours
    same = sum(a == b for a, b in zip(ours, reference))
    assert same >= 0.8 * len(FACTS), list(zip(ours, reference))


@pytest.mark.parametrize("shared_prefix,draft_tokens", [(False, 0), (True, 0), (True, 4)],
                         ids=["no-prefix", "shared-prefix", "shared-prefix-drafts"])
def test_concurrent_requests_batch_and_give_the_texts_of_one_at_a_time(gguf, shared_prefix,
                                                                       draft_tokens):
    """Six requests through four slots (slots reused, mixes changing) give the texts each
    gives alone, with and without the system prompt's prefix copied into the slots, and
    with drafted tokens checked in the same steps (slots' drafts of different lengths).  Not
    bit for bit: a step over several tokens multiplies the weights as a matrix product,
    whose sums run in another order than one token's, so a near tie may flip (1 token
    stream in 16 on the describer's prompts, at 40 tokens); one in six is allowed."""
    system = [{"role": "system", "content": "Be brief."}]
    tokenizer = GgufTokenizer.from_file(gguf)
    prompts = [tuple(tokenizer.encode(chatml(system + [{"role": "user", "content": f}])))
               for f in FACTS[:6]]
    common = next(i for i, (x, y) in enumerate(zip(*prompts[:2])) if x != y)
    assert common > 5
    engine = LlamaCppEngine(gguf, max_batch=4, max_seq_len=256, threads=1,
                            prefix_ids=prompts[0][:common] if shared_prefix else (),
                            draft_tokens=draft_tokens)

    def request(i, ids):
        return GenerationRequest(f"r{i}", ids, max_new_tokens=24)

    alone = [engine.generate([request(i, ids)])[0].token_ids for i, ids in enumerate(prompts)]
    steps_before, hits_before = engine.stats["steps"], engine.stats["prefix_hits"]
    together = engine.generate([request(i, ids) for i, ids in enumerate(prompts)])
    steps = engine.stats["steps"] - steps_before
    assert steps < sum(len(t) for t in alone), "six requests of 4 slots were not batched"
    if shared_prefix:
        assert engine.stats["prefix_hits"] - hits_before == 6
    if draft_tokens:            # the answers given alone are the drafts of the batched ones
        assert engine.stats["draft_accepted"] > 0
    agree = sum(r.token_ids == a for r, a in zip(together, alone))
    assert agree >= 5, [(r.text, tokenizer.decode(a)) for r, a in zip(together, alone)]
    engine.close()


def test_a_request_with_visual_tokens_is_refused(gguf):
    import torch

    from facestream.llm.requests import RequestError

    engine = LlamaCppEngine(gguf, max_batch=1, max_seq_len=64, threads=1)
    with pytest.raises(RequestError, match="visual tokens"):
        engine.submit(GenerationRequest("v", (1, 2), visual=torch.zeros(2, 8)))
    engine.close()


def test_a_missing_or_broken_gguf_names_the_fix(tmp_path):
    from facestream.errors import AssetError

    with pytest.raises(AssetError, match="models pull"):
        LlamaCppEngine(tmp_path / "absent.gguf")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(AssetError, match="models pull --force"):
        LlamaCppEngine(broken)


def test_drafted_decoding_writes_the_same_sentences_in_fewer_passes(gguf, llama_describer):
    """Speculative decoding (``llm_draft_tokens``): the second time round the held prompts,
    the answers of the first are drafts, and most tokens come several per pass.  The text is
    what plain decoding writes (a pass over several tokens sums in another order, so one near
    tie in ten may flip, as for concurrent requests), and a rejected draft leaves nothing
    behind in the cache (stale positions would garble every later token)."""
    plain = llama_describer.describe(FACTS)
    drafted = SmolDescriber(gguf, runtime="llamacpp", max_new_tokens=40, threads=1,
                            draft_tokens=6)
    first = drafted.describe(FACTS)
    before = dict(drafted.stats)
    second = drafted.describe(FACTS)
    stats = {k: drafted.stats[k] - before[k] for k in ("steps", "tokens", "drafted",
                                                       "draft_accepted")}
    assert sum(a == b for a, b in zip(first, plain)) >= 9, list(zip(first, plain))
    assert sum(a == b for a, b in zip(second, plain)) >= 9, list(zip(second, plain))
    assert stats["draft_accepted"] > 0.5 * stats["tokens"], stats
    assert stats["steps"] < 0.5 * stats["tokens"], stats


def test_drafts_that_are_always_wrong_change_nothing(gguf, llama_describer, monkeypatch):
    """A draft the model rejects at every token costs a pass but decides nothing."""
    from facestream.llm import drafts

    engine = SmolDescriber(gguf, runtime="llamacpp", max_new_tokens=40, threads=1,
                           draft_tokens=4)
    monkeypatch.setattr(drafts.AnswerDrafts, "propose",
                        lambda self, prompt, generated, limit: [7] * limit)
    got, want = engine.describe(FACTS[:4]), llama_describer.describe(FACTS[:4])
    assert sum(a == b for a, b in zip(got, want)) >= 3, list(zip(got, want))
    assert engine.stats["drafted"] > 0 and engine.stats["draft_accepted"] == 0
