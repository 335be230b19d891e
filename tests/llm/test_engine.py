"""The continuous-batching engine against HF ``generate`` run one request at a time, on the
real SmolLM2-135M-Instruct weights (fp32, CPU): mixed prompt lengths, requests joining a
running batch, a shared-prefix cache, visual-token splices, stop strings, seeded sampling,
shedding.  A small random LLaMA with confident logits runs the same comparison on CPU and,
marked gpu, on CUDA in fp32, fp16 and bf16 (no model files needed there), and drives the
static decode step across batch and key-span buckets as requests join and leave (on CUDA
with its CUDA graphs on and off)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading

import pytest
import torch

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.llm import decoder, packed
from facestream.llm.backends import make_engine
from facestream.llm.decoder import StaticDecoder, batch_bucket, span_bucket
from facestream.llm.engine import Engine, nucleus, sample
from facestream.llm.kv_cache import LlamaParts, SlotKVCache
from facestream.llm.requests import GenerationRequest, GenerationResult, QueueFull, RequestError
from tests.helpers import REPO

NEW = 12                    # new tokens per request: enough to cover EOS and stop strings
IMAGE = -200                # out-of-vocabulary placeholder, as LLaVA uses
N_VISUAL = 20
QUESTIONS = (
    "Describe the facial expression of a smiling woman.",
    "Answer yes or no only: is a frown a sign of anger?",
    "Which facial action units are active when someone raises the inner brows, drops the "
    "jaw and stretches the lips horizontally in fear? Explain each briefly.",
    "Reply with one word: the opposite of happy.",
    "What does a face look like when a person is surprised, and how does it differ from a "
    "face showing fear, in terms of the eyes, the brows and the mouth?",
)


@pytest.fixture(scope="module")
def prompts(smol) -> list[tuple[int, ...]]:
    _, tokenizer = smol
    return [tuple(tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                add_generation_prompt=True)["input_ids"])
            for q in QUESTIONS]


def hf_generate(model, *, ids: tuple[int, ...] | None = None,
                embeds: torch.Tensor | None = None, new: int = NEW) -> tuple[int, ...]:
    """HF greedy generate for one request (token ids, or spliced embeddings [T, hidden]);
    the generated ids, EOS included if reached."""
    device = model.device
    with torch.inference_mode():
        if embeds is not None:      # with inputs_embeds only, generate returns just new ids
            mask = torch.ones(1, embeds.shape[0], dtype=torch.long, device=device)
            out = model.generate(inputs_embeds=embeds[None], attention_mask=mask,
                                 do_sample=False, max_new_tokens=new)
            return tuple(out[0].tolist())
        tensor = torch.tensor([ids], device=device)
        out = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                             max_new_tokens=new)
        return tuple(out[0, len(ids):].tolist())


@pytest.fixture(scope="module")
def reference(smol, prompts) -> list[tuple[int, ...]]:
    model, _ = smol
    return [hf_generate(model, ids=p) for p in prompts]


def greedy(i: int, ids: tuple[int, ...], **kw) -> GenerationRequest:
    return GenerationRequest(f"r{i}", ids, max_new_tokens=NEW, **kw)


def check_against(results: list[GenerationResult], expected: list[tuple[int, ...]],
                  tokenizer, eos: int) -> None:
    for result, tokens in zip(results, expected):
        assert result.token_ids == tokens, result.request_id
        assert result.text == tokenizer.decode(tokens, skip_special_tokens=True)
        assert result.finish_reason == ("eos" if tokens[-1] == eos else "length")
        assert 0 < result.ttft_s <= result.latency_s


@pytest.mark.slow
def test_batched_greedy_equals_hf_generate(smol, prompts, reference):
    model, tokenizer = smol
    assert len({len(p) for p in prompts}) == len(prompts)          # mixed lengths
    assert any(t[-1] == tokenizer.eos_token_id for t in reference)  # one ends early
    engine = Engine(model, tokenizer, max_batch=3, max_seq_len=160)  # fewer slots than requests
    results = engine.generate([greedy(i, p) for i, p in enumerate(prompts)])
    check_against(results, reference, tokenizer, tokenizer.eos_token_id)
    stats = engine.stats
    assert stats["running"] == stats["queued"] == 0
    assert stats["tokens"] == sum(len(t) for t in reference)
    assert stats["prefill_tokens"] == sum(len(p) for p in prompts)


@pytest.mark.slow
def test_requests_join_a_running_batch(smol, prompts, reference):
    model, tokenizer = smol
    engine = Engine(model, tokenizer, max_batch=4, max_seq_len=160)
    early = [engine.submit(greedy(i, prompts[i])) for i in (0, 2)]
    for _ in range(3):
        assert engine.step() == []
    late = {i: engine.submit(greedy(i, prompts[i])) for i in (1, 3, 4)}
    engine.step()
    assert engine.stats["running"] == 4 and engine.stats["queued"] == 1
    assert not any(f.done() for f in early)
    while not all(f.done() for f in [*early, *late.values()]):
        engine.step()
    order = [0, 2, 1, 3, 4]
    results = [f.result() for f in early] + [late[i].result() for i in (1, 3, 4)]
    check_against(results, [reference[i] for i in order], tokenizer, tokenizer.eos_token_id)


@pytest.mark.slow
def test_prefix_cache_keeps_output_and_saves_prefill(smol, prompts, reference):
    model, tokenizer = smol
    shared = 0
    while all(p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    assert shared > 10                                      # the template's system prompt
    runs = {}
    for prefix in ((), prompts[0][:shared]):
        engine = Engine(model, tokenizer, max_batch=5, max_seq_len=160, prefix_ids=prefix)
        results = engine.generate([greedy(i, p) for i, p in enumerate(prompts)])
        check_against(results, reference, tokenizer, tokenizer.eos_token_id)
        runs[len(prefix)] = engine.stats
    assert runs[shared]["prefix_hits"] == len(prompts) and runs[0]["prefix_hits"] == 0
    assert runs[0]["prefill_tokens"] - runs[shared]["prefill_tokens"] == len(prompts) * shared


@pytest.fixture(scope="module")
def visual_case(smol):
    """Two prompts with N_VISUAL image placeholders each; their visual tokens are seeded
    "encoder features" [N_VISUAL, 64] through a seeded Linear(64 -> hidden), scaled to the
    model's mean embedding norm; and HF generate on the spliced inputs_embeds."""
    model, tokenizer = smol
    embed = model.get_input_embeddings()
    hidden = embed.weight.shape[1]
    torch.manual_seed(0)
    projector = torch.nn.Linear(64, hidden)
    target_norm = embed.weight.norm(dim=-1).mean()
    cases = []
    for question in ("What expression does this face show?",
                     "Describe the eyes and the mouth of this person in detail."):
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"@IMG@\n{question}"}],
                                             add_generation_prompt=True, tokenize=False)
        before, after = text.split("@IMG@")
        ids = (*tokenizer(before, add_special_tokens=False)["input_ids"], *[IMAGE] * N_VISUAL,
               *tokenizer(after, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            visual = projector(torch.randn(N_VISUAL, 64))                   # [20, hidden]
            visual = visual * (target_norm / visual.norm(dim=-1, keepdim=True))
            idx = torch.tensor(ids)
            embeds = embed(idx.masked_fill(idx == IMAGE, 0))                # [T, hidden]
            embeds[idx == IMAGE] = visual
        cases.append((ids, visual, hf_generate(model, embeds=embeds)))
    return cases


@pytest.mark.slow
def test_visual_splice_equals_hf_inputs_embeds(smol, prompts, reference, visual_case):
    model, tokenizer = smol
    engine = Engine(model, tokenizer, max_batch=3, max_seq_len=160, image_token_id=IMAGE)
    requests = [greedy(10 + i, ids, visual=visual) for i, (ids, visual, _) in
                enumerate(visual_case)]
    results = engine.generate([requests[0], greedy(0, prompts[0]), requests[1]])
    expected = [visual_case[0][2], reference[0], visual_case[1][2]]
    check_against(results, expected, tokenizer, tokenizer.eos_token_id)
    assert visual_case[0][2] != visual_case[1][2]


@pytest.fixture(scope="module")
def small_engine(smol):
    model, tokenizer = smol
    return Engine(model, tokenizer, max_batch=2, max_seq_len=64, image_token_id=IMAGE)


@pytest.mark.parametrize("ids, visual_shape, max_new, match", [
    ((5, IMAGE, IMAGE, 6), (3, 576), 4, "prompt has 2 image placeholders but 3 visual tokens"),
    ((5, 6), (1, 576), 4, "prompt has 0 image placeholders but 1 visual tokens"),
    ((5, IMAGE, 6), None, 4, "prompt has 1 image placeholders but 0 visual tokens"),
    ((5, IMAGE, 6), (1, 64), 4, "hidden size 64 but the model's hidden size is 576"),
    ((5,) * 60, None, 8, r"prompt \(60 tokens\) \+ max_new_tokens \(8\) = 68 exceeds "
                         "max_seq_len 64"),
    ((5, 49152), None, 4, "token id 49152 is outside the vocabulary"),
])
def test_bad_requests_are_refused_at_submit(small_engine, ids, visual_shape, max_new, match):
    visual = None if visual_shape is None else torch.zeros(visual_shape)
    with pytest.raises(RequestError, match=match) as info:
        small_engine.submit(GenerationRequest("bad", ids, visual=visual,
                                              max_new_tokens=max_new))
    assert isinstance(info.value, ValueError)
    assert small_engine.stats["queued"] == 0


@pytest.mark.parametrize("fields, match", [
    ({"prompt_ids": ()}, "prompt_ids is empty"),
    ({"max_new_tokens": 0}, "max_new_tokens=0"),
    ({"temperature": -1.0}, "temperature=-1.0"),
    ({"top_p": 0.0}, r"top_p=0.0; must lie in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p=1.5"),
    ({"stop": ("",)}, "empty stop string"),
    ({"visual": torch.zeros(576)}, r"visual has shape \(576,\)"),
    ({"seed": 2 ** 64}, r"seed=18446744073709551616"),
])
def test_bad_request_values(fields, match):
    with pytest.raises(RequestError, match=match):
        GenerationRequest("bad", **{"prompt_ids": (1, 2), **fields})


@pytest.mark.slow
def test_stop_string_cuts_text_and_ends_generation(smol, prompts, reference):
    model, tokenizer = smol
    full = tokenizer.decode(reference[2], skip_special_tokens=True)
    stop = full.split()[4]                                  # a word in the middle
    engine = Engine(model, tokenizer, max_batch=2, max_seq_len=160)
    stopped, other = engine.generate([greedy(0, prompts[2], stop=("@@never@@", stop)),
                                      greedy(1, prompts[0])])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[:full.index(stop)]
    assert reference[2][:len(stopped.token_ids)] == stopped.token_ids
    assert len(stopped.token_ids) < len(reference[2])
    assert other.token_ids == reference[0]


@pytest.mark.slow
def test_seeded_sampling_does_not_depend_on_batch_mates(smol, prompts):
    model, tokenizer = smol
    engine = Engine(model, tokenizer, max_batch=4, max_seq_len=160)

    def sampled(seed: int, i: int = 1) -> GenerationRequest:
        return GenerationRequest(f"s{seed}-{i}", prompts[i], max_new_tokens=NEW,
                                 temperature=1.0, seed=seed, ignore_eos=True)

    alone = engine.generate([sampled(7)])[0]
    crowded = engine.generate([greedy(0, prompts[0]), sampled(8, 2), sampled(7),
                               sampled(9, 4)])[2]
    other_seed = engine.generate([sampled(8)])[0]
    assert crowded.token_ids == alone.token_ids and crowded.text == alone.text
    assert other_seed.token_ids != alone.token_ids
    assert len(alone.token_ids) == NEW


@pytest.fixture(scope="module")
def tiny_model():
    """A one-layer random LLaMA: for tests about scheduling, not numerics."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, vocab_size=64,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_full_queue_sheds_oldest_non_urgent(tiny_model):
    engine = Engine(tiny_model, None, max_batch=1, max_seq_len=16, queue_size=3)
    ids = (5, 6, 7)

    def submit(name: str):
        return engine.submit(GenerationRequest(name, ids, urgent=name.startswith("u"),
                                               max_new_tokens=2, ignore_eos=True))

    futures = {name: submit(name) for name in ("n1", "u1", "n2")}
    futures["n3"] = submit("n3")
    assert futures["n1"].done() and not futures["n2"].done()
    futures["u2"] = submit("u2")
    futures["u3"] = submit("u3")
    shed = [futures[n].result() for n in ("n1", "n2", "n3")]
    assert [(r.request_id, r.finish_reason) for r in shed] == [
        ("n1", "shed"), ("n2", "shed"), ("n3", "shed")]
    assert engine.stats["shed"] == 3 and engine.stats["queued"] == 3
    with pytest.raises(QueueFull, match="holds 3 urgent requests"):
        submit("u4")
    with pytest.raises(QueueFull):
        submit("n4")
    while engine.stats["queued"] or engine.stats["running"]:
        engine.step()
    assert [len(futures[n].result().token_ids) for n in ("u1", "u2", "u3")] == [2, 2, 2]
    assert engine.stats["shed"] == 3


def test_stop_strings_need_a_tokenizer(tiny_model):
    engine = Engine(tiny_model, None, max_batch=1, max_seq_len=16)
    with pytest.raises(RequestError, match="stop strings need a tokenizer"):
        engine.submit(GenerationRequest("x", (5, 6), stop=("a",), max_new_tokens=4))


@pytest.mark.slow
def test_background_loop_serves_threads(smol, prompts, reference):
    model, tokenizer = smol
    engine = Engine(model, tokenizer, max_batch=2, max_seq_len=160)
    engine.start()
    results: dict[int, GenerationResult] = {}

    def client(i: int) -> None:
        results[i] = engine.submit(greedy(i, prompts[i])).result(timeout=120)

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    check_against([results[i] for i in (0, 1, 3)], [reference[i] for i in (0, 1, 3)],
                  tokenizer, tokenizer.eos_token_id)
    with pytest.raises(RequestError, match="engine is closed"):
        engine.submit(greedy(0, prompts[0]))


@pytest.fixture
def bench(monkeypatch):
    """bench/bench_llm.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_llm", REPO / "bench" / "bench_llm.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_llm", module)      # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def test_bench_shape_path_runs_on_cpu(bench):
    """bench_llm.py's 7B-shape path (random weights, visual placeholders, HF batched
    baseline; one task per window, then three sharing each window's visual tokens) with the
    tiny shape, so it is known to run before it reaches a GPU."""
    rows = bench.shape_bench(shape_name="tiny", device=torch.device("cpu"),
                             dtype=torch.float32, batches=(1, 3))
    assert [(r["batch"], r["run"]) for r in rows] == [(1, "engine"), (1, "hf"),
                                                      (3, "engine"), (3, "hf")]
    assert all(r["tokens_per_s"] > 0 and r["greedy_agree"] == 1.0 for r in rows)
    rows = bench.shape_bench(shape_name="tiny", device=torch.device("cpu"),
                             dtype=torch.float32, batches=(2,), tasks=3)
    assert [r["run"] for r in rows] == ["engine", "engine_unshared", "hf"]
    assert all(r["tokens_per_s"] > 0 and r["greedy_agree"] == 1.0 for r in rows)


def test_bench_decode_step_mode_runs_on_cpu(bench):
    """bench_llm.py --decode-step with the tiny shape: every CPU variant timed per batch
    (``plain``, the engine without its packed output head, where packing applies)."""
    rows = bench.decode_step_bench(shape_name="tiny", device=torch.device("cpu"),
                                   dtype=torch.float32, batches=(1, 3), steps=2, rounds=1)
    variants = ["rebuilt", "static"] + (["plain"] if packed.usable(torch.zeros(1)) else [])
    assert [(r["batch"], r["variant"]) for r in rows] == [
        (batch, variant) for batch in (1, 3) for variant in variants]
    assert all(r["ms_per_step"] > 0 for r in rows)


def random_llama(*, device: str, dtype: torch.dtype, std: float = 0.08):
    """A small random LLaMA with GQA whose logits have clear winners (weights wider than the
    usual 0.02 init), so greedy tokens are decided by the model, not by rounding."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2, intermediate_size=512, vocab_size=1000,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, std)
    return model.to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float32, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.float16, marks=pytest.mark.gpu),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.gpu),
])
def test_random_llama_greedy_equals_hf_generate(device, dtype):
    """Tiny-config tier: the engine on each device/dtype vs HF generate one request at a
    time, with a visual splice, mixed lengths and a late arrival."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = random_llama(device=device, dtype=dtype)
    requests, expected = random_requests(model)
    engine = Engine(model, None, max_batch=3, max_seq_len=96, image_token_id=IMAGE)
    got, _ = run_with_late_arrivals(engine, requests)
    assert got == expected


def random_requests(model, *, head: tuple[int, ...] = ()
                    ) -> tuple[list[GenerationRequest], list[tuple[int, ...]]]:
    """Five requests to a :func:`random_llama` (10 new tokens): ``head``, then random ids of
    mixed lengths, the second prompt with 8 image placeholders after its first 4 ids; and HF
    generate's tokens for each, one request at a time."""
    device, dtype = model.device, model.dtype
    generator = torch.Generator().manual_seed(1)
    prompts = [tuple(torch.randint(3, 1000, (n,), generator=generator).tolist())
               for n in (5, 23, 61, 9, 40)]
    prompts[1] = prompts[1][:4] + (IMAGE,) * 8 + prompts[1][4:]
    prompts = [head + ids for ids in prompts]
    visual = (torch.randn(8, 256, generator=generator) * 0.08).to(device=device, dtype=dtype)
    requests = [GenerationRequest(f"t{i}", ids, visual=visual if IMAGE in ids else None,
                                  max_new_tokens=10) for i, ids in enumerate(prompts)]
    return requests, [hf_generate(model, embeds=spliced(model, r), new=10) for r in requests]


def spliced(model, request: GenerationRequest) -> torch.Tensor:
    """The request's prompt embeddings with its visual tokens at the placeholders, as HF
    ``generate`` gets them: [T, hidden]."""
    idx = torch.tensor(request.prompt_ids, device=model.device)
    with torch.inference_mode():
        embeds = model.get_input_embeddings()(idx.masked_fill(idx == IMAGE, 0))
        if request.visual is not None:
            embeds[idx == IMAGE] = request.visual
    return embeds


def run_with_late_arrivals(engine: Engine, requests: list[GenerationRequest]
                           ) -> tuple[list[tuple[int, ...]], list[tuple[int, int]]]:
    """Submit the first two requests, step once, submit the rest, step until all are done:
    the token ids of each, and per step how many prompt positions were prefilled and how
    many tokens generated."""
    first = [engine.submit(r) for r in requests[:2]]
    counts = [_step_counts(engine)]
    rest = [engine.submit(r) for r in requests[2:]]
    while not all(f.done() for f in first + rest):
        counts.append(_step_counts(engine))
    return [f.result().token_ids for f in first + rest], counts


def _step_counts(engine: Engine) -> tuple[int, int]:
    before = engine.stats
    engine.step()
    after = engine.stats
    return (after["prefill_tokens"] - before["prefill_tokens"],
            after["tokens"] - before["tokens"])


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "one-by-one"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 0])
def test_chunked_prefill_equals_hf_generate(chunk, pack):
    """Prompts prefilled at most ``chunk`` positions per step (0: whole prompts), packed into
    one forward or one forward per request: greedy tokens equal HF generate's, one request at
    a time, with the static prefix cache, late arrivals and chunk boundaries inside the
    visual placeholders (chunk 1: between every two; chunk 7: the placeholders lie at
    positions 10-17 and the first chunk after the 6-token prefix ends at 13).  No step
    prefills more than the budget, and answers are decoded in steps that prefill others."""
    model = random_llama(device="cpu", dtype=torch.float32)
    head = (1, 17, 29, 31, 5, 6)
    requests, expected = random_requests(model, head=head)
    engine = Engine(model, None, max_batch=3, max_seq_len=96, image_token_id=IMAGE,
                    prefix_ids=head, prefill_chunk=chunk, pack_prefill=pack)
    got, counts = run_with_late_arrivals(engine, requests)
    assert got == expected
    assert max(prefilled for prefilled, _ in counts) <= (chunk or 96)
    assert any(prefilled and generated for prefilled, generated in counts)
    stats = engine.stats
    assert stats["prefix_hits"] == len(requests)
    assert stats["prefill_tokens"] == sum(len(r.prompt_ids) - len(head) for r in requests)
    if chunk == 1:
        assert len(counts) > sum(len(r.prompt_ids) - len(head) for r in requests)


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "one-by-one"])
@pytest.mark.parametrize("chunk", [0, 5])
def test_a_windows_tasks_compute_their_shared_prefix_once(chunk, pack):
    """Three tasks asked of each of two windows: prompts of 4 ids + 8 image placeholders +
    a question of the task's own, the window's visual tokens one tensor.  The engine
    prefills each window's 12-position shared prefix once and copies it into its other
    tasks' slots: from a task already decoding (window 0's first task runs a step before the
    others arrive), from one prefilled in the same forward (window 1), and — with 5
    positions per step — only once the first task has prefilled past it.  The answers are
    HF generate's, token for token, and the same as with a copy of the tensor per task
    (nothing shared); the counters show the prefill saved."""
    model = random_llama(device="cpu", dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    head = (1, 40, 41, 42)
    questions = [(50, 51, 52), (60, 61, 62, 63, 64, 65, 66, 67, 68), tuple(range(70, 84))]
    visuals = [torch.randn(8, 256, generator=generator) * 0.08 for _ in range(2)]
    requests = [GenerationRequest(f"w{w}-{q}", head + (IMAGE,) * 8 + question,
                                  visual=visual, max_new_tokens=10)
                for w, visual in enumerate(visuals) for q, question in enumerate(questions)]
    expected = [hf_generate(model, embeds=spliced(model, r), new=10) for r in requests]
    runs = {}
    for share in (True, False):
        engine = Engine(model, None, max_batch=6, max_seq_len=64, image_token_id=IMAGE,
                        prefill_chunk=chunk, pack_prefill=pack)
        mine = [r if share else dataclasses.replace(r, visual=r.visual.clone())
                for r in requests]
        first = engine.submit(mine[0])
        engine.step()
        rest = [engine.submit(r) for r in mine[1:]]
        while not all(f.done() for f in [first, *rest]):
            engine.step()
        assert [f.result().token_ids for f in [first, *rest]] == expected, share
        runs[share] = engine.stats
    prompt_positions = sum(len(r.prompt_ids) for r in requests)
    assert runs[False]["shared_prefix_tokens"] == runs[False]["prefix_hits"] == 0
    assert runs[False]["prefill_tokens"] == prompt_positions
    assert runs[True]["shared_prefix_tokens"] == 4 * 12 and runs[True]["prefix_hits"] == 4
    assert runs[True]["prefill_tokens"] == prompt_positions - 4 * 12


def test_a_negative_prefill_chunk_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="prefill_chunk=-1; need >= 0"):
        Engine(tiny_model, None, max_batch=1, max_seq_len=16, prefill_chunk=-1)


# ---- the static decode step: buckets, parking, CUDA graphs ------------------------------

JOIN_LENGTHS = (5, 23, 61, 9, 40, 14, 30)     # prompt tokens
JOIN_NEW = (16, 3, 6, 10, 4, 9, 7)            # answer tokens: they leave at different steps


def joining_case(device: str, dtype: torch.dtype):
    """:func:`random_llama`, seven prompts and HF generate's answers to each, alone."""
    model = random_llama(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(2)
    prompts = [tuple(torch.randint(3, 1000, (n,), generator=generator).tolist())
               for n in JOIN_LENGTHS]
    expected = [hf_generate(model, ids=p, new=n) for p, n in zip(prompts, JOIN_NEW)]
    return model, prompts, expected


def join_and_leave(engine: Engine, prompts) -> list[tuple[int, ...]]:
    """Three requests start, three join two steps later (into the slot one has freed and
    above), the last a step after that; answers of different lengths make the batch grow,
    then shrink to slot 0 alone.  The token ids of each, in prompt order."""
    requests = [GenerationRequest(f"j{i}", p, max_new_tokens=n)
                for i, (p, n) in enumerate(zip(prompts, JOIN_NEW))]
    futures = [engine.submit(r) for r in requests[:3]]
    engine.step()
    engine.step()
    futures += [engine.submit(r) for r in requests[3:6]]
    engine.step()
    futures.append(engine.submit(requests[6]))
    while not all(f.done() for f in futures):
        engine.step()
    return [f.result().token_ids for f in futures]


def test_batch_and_span_buckets():
    assert [batch_bucket(n, 12) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]
    assert [span_bucket(n, 1000) for n in (1, 16, 17, 100, 128, 129, 300, 999)] == [
        16, 16, 32, 128, 128, 256, 384, 1000]
    assert span_bucket(70, 96) == 96


def test_batch_crossing_buckets_equals_hf_generate(monkeypatch):
    """Requests join and leave, so the static step runs at several batch and key-span
    buckets (seen through the real decode_step), with parked slots below and above the
    running ones; every answer equals HF generate's for that request alone."""
    model, prompts, expected = joining_case("cpu", torch.float32)
    shapes, decode_step = [], decoder.decode_step

    def recording(parts, cache, tokens, positions, *, span):
        shapes.append((tokens.shape[0], span))
        return decode_step(parts, cache, tokens, positions, span=span)

    monkeypatch.setattr(decoder, "decode_step", recording)
    engine = Engine(model, None, max_batch=8, max_seq_len=96)
    assert join_and_leave(engine, prompts) == expected
    assert {rows for rows, _ in shapes} == {1, 2, 4, 8}
    assert {span for _, span in shapes} == {32, 64, 96}


def test_parked_rows_leave_the_cache_untouched(tiny_model):
    """A step over 4 rows with one running slot: the parked slots' keys and values are
    unchanged except at the parking position, the running one's only at its position."""
    parts = LlamaParts.from_model(tiny_model, max_seq_len=16)
    cache = SlotKVCache.allocate(parts, slots=4, max_seq_len=16, device=torch.device("cpu"),
                                 dtype=torch.float32)
    with torch.inference_mode():
        cache.k.normal_()
        cache.v.normal_()
        before_k, before_v = cache.k.clone(), cache.v.clone()
        static = StaticDecoder(parts, cache, max_batch=4, max_seq_len=16, cuda_graphs=True)
        static.place([2], [7], [5])
        assert static.step(rows=3, span=6).shape == (4, 64)
    for after, before in ((cache.k, before_k), (cache.v, before_v)):
        changed = (after != before).any(dim=(0, 2, 4))                # [slots, positions]
        assert changed.nonzero().tolist() == [[0, 15], [1, 15], [2, 5], [3, 15]]


def test_cuda_graphs_setting_is_accepted_and_ignored_on_cpu(tiny_model, monkeypatch):
    assert Settings.load(environ={}).llm_cuda_graphs is True
    assert Settings.load(environ={"FACESTREAM_LLM_CUDA_GRAPHS": "false"}).llm_cuda_graphs \
        is False

    def no_graph(*args, **kwargs):
        raise AssertionError("the CPU path made a CUDA graph")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", no_graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", no_graph)
    answers = set()
    for cuda_graphs in (True, False):
        engine = make_engine(endpoint="", model=tiny_model, tokenizer=None, max_batch=2,
                             max_seq_len=16, cuda_graphs=cuda_graphs)
        results = engine.generate([GenerationRequest(f"g{i}", (5, 6, 7)[i:], max_new_tokens=6,
                                                     ignore_eos=True) for i in range(3)])
        answers.add(tuple(r.token_ids for r in results))
    assert len(answers) == 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_graphs_equal_eager_and_hf_generate(dtype):
    """On CUDA: the decode step replayed from CUDA graphs and run eagerly give HF generate's
    tokens, token for token, while requests join and leave across buckets."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model, prompts, expected = joining_case("cuda", dtype)
    for cuda_graphs in (False, True):
        engine = Engine(model, None, max_batch=8, max_seq_len=96, cuda_graphs=cuda_graphs)
        assert join_and_leave(engine, prompts) == expected, f"cuda_graphs={cuda_graphs}"
        assert (engine._decoder.graph_count >= 3) == cuda_graphs


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    """Sorted probabilities .5, .3, .15, .05: top_p .5 keeps the first, .6 the first two,
    .8 still two (.5 + .3 reaches it), .81 three; the top token always stays."""
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    kept = {p: (nucleus(probs.clone(), p) > 0).nonzero().flatten().tolist()
            for p in (0.01, 0.5, 0.6, 0.8, 0.81, 1.0)}
    assert kept == {0.01: [1], 0.5: [1], 0.6: [1, 3], 0.8: [1, 3], 0.81: [0, 1, 3],
                    1.0: [0, 1, 2, 3]}


def test_sampling_with_top_p_draws_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]])).repeat(400, 1)
    generators = [torch.Generator().manual_seed(i) for i in range(400)]
    drawn = sample(logits, [1.0] * 400, generators, top_ps=[0.6] * 400).tolist()
    assert set(drawn) == {1, 3}
    everything = sample(logits, [1.0] * 400, generators).tolist()
    assert set(everything) == {0, 1, 2, 3}
    assert sample(logits[:1], [0.0], [None], top_ps=[0.01]).tolist() == [1]   # greedy
