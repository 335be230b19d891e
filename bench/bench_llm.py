"""LLM engine benchmark: facestream's continuous-batching engine vs transformers ``generate``.

Two modes, each measuring the engine and its baseline in the same process on the same
prompts:

``--model-shape smollm2`` (default, CPU): the real SmolLM2-135M-Instruct weights (fp32).
    (a) throughput: 16 chat prompts about faces (37-59 tokens), 32 new tokens each.  Baseline:
        HF ``generate`` one request at a time.  Engine: ``Engine.generate`` over all 16 with
        ``max_batch`` 1, 4, 8, 16.  For equal work nobody stops early: no stop strings, the
        engine ignores end-of-sequence tokens (``ignore_eos``) and HF gets
        ``min_new_tokens`` = ``max_new_tokens``.  Tokens/s counts generated tokens over wall
        time including prefill.  Both sides are warmed up, then ``--rounds`` (default 3)
        rounds run every side once, in turn; medians (and the spread) are reported and the
        ratio is median engine / median baseline.
    (b) time to first token under load: the engine's loop thread (``max_batch`` 8) serves 32
        requests arriving as a Poisson process at ``--load`` x the batch-8 throughput
        measured in (a); p50/p95 of submit -> first token and submit -> finished.
    The engine runs as facestream serves: with the shared system prompt (the chat
    template's, 31 tokens) as its prefix cache, the requests admitted in a step prefilled
    together in one packed forward, at most ``llm_prefill_chunk``'s default (512) prompt
    positions per step, and (on CPU in fp32) its MLPs and output head on oneDNN-packed
    copies of their weights.  Three extra rows at batch 8: without the prefix cache, with
    each request's prefill run as a forward of its own (the one-by-one baseline,
    ``pack_prefill=False``), and on the model's plain weights (``packed_weights=False``).  On CPU, prefill of these short prompts costs as much compute
    as the answers, so the prefix cache and packed prefill matter as much as batching.
    ``--long-prompts`` puts the same ~200-token passage after every question (prompts of
    235-257 tokens: the passage is not in the shared prefix), where prefill dominates.

``--model-shape 7b`` (``--device cuda``): a LLaMA-7B-shaped ``LlamaForCausalLM`` (hidden
    4096, 32 layers, 32 heads, MLP 11008, vocab 32000; Face-LLaVA's Vicuna-7B shape) with
    random fp16 weights made directly on the GPU.  Each window is a Face-LLaVA video prompt:
    BOS + 8 system ids + 2,056 image placeholders (random visual embeddings) + a 32-48 token
    question; 64-token answers.  For batch 1, 2, 4, ..., 64: the engine (``max_batch`` = batch,
    one window per slot) vs HF ``generate`` on the same windows, left-padded
    ``inputs_embeds`` batched at the same size (batch 1 = one at a time).  Windows/s,
    tokens/s, ratio, peak ``torch.cuda.max_memory_allocated``, and whether the greedy tokens
    agree.  ``--tasks-per-window N`` asks every window N questions (the same N for every
    window, one request and one slot each, as Face-LLaVA's tasks): the engine shares each
    window's visual prefix across them, and runs once more with a copy of the visual tensor
    per request ("engine_unshared") to show what sharing saves.  Needs torch and
    transformers only (no tokenizer, no model files, no network);
    from facestream it imports only ``facestream.llm.engine`` and ``facestream.llm.requests``.
``--model-shape tiny``: the same code path with a toy shape, for a CPU check.

``--decode-step`` (with a random-weight shape: ``7b`` on cuda, ``135m`` (SmolLM2-135M's
    shape) or ``tiny`` on CPU): the engine's decode step alone.  For each batch size, one
    engine holds that many windows (prefilled once), every slot running and none joining;
    each timed run is ``--steps`` calls of ``Engine.step``, i.e. decode + token choice + the
    host reading and accepting the tokens.  Variants, on the same engine and cache: the
    static path eagerly (``static``), the static path replaying CUDA graphs (``graphs``,
    cuda only), the static path with the model's plain output head instead of the engine's
    oneDNN-packed copy (``plain``, CPU fp32 only; printed as ``packed head: static / plain``),
    and the path it replaced (``rebuilt``: Python lists and fresh tensors every step, exactly
    ``max(slot) + 1`` rows and the exact key span).  All are warmed up (graphs
    captured), then ``--rounds`` rounds run each variant once, in turn; medians of ms per
    step and the ratio ``rebuilt`` / variant.

``--stall`` (a random-weight shape: ``7b`` on cuda, ``tiny`` on CPU): how long the running
    answers stall while long prompts are admitted.  ``--stall-running`` (16) windows are
    decoding when ``--stall-admitted`` (16) more arrive at once; every step gives each
    running request a token, so the longest step until every new prompt has its first
    token is the longest gap between two tokens of a running answer.  Per
    ``prefill_chunk`` in ``--stall-chunks`` (0 = whole prompts, the baseline, and 512),
    interleaved over ``--rounds`` after a warm-up of each.

Every row is printed as a table line and as a ``JSON {...}`` line; the shaped models',
``--decode-step``'s and ``--stall``'s last line is ``RESULT {json}`` (shape, device, every row: what
bench/gpu_check.sh's summary reads).

    .venv/bin/python bench/bench_llm.py [--quick] [--long-prompts] [--threads N]   # CPU
    python bench/bench_llm.py --device cuda --model-shape 7b --quick
    python bench/bench_llm.py --decode-step --model-shape 135m --batches 1,8 --threads 1
    python bench/bench_llm.py --decode-step --device cuda --model-shape 7b
    python bench/bench_llm.py --stall --device cuda --model-shape 7b
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facestream.llm import packed as packing  # noqa: E402
from facestream.llm.engine import Engine  # noqa: E402
from facestream.llm.kv_cache import decode_step  # noqa: E402
from facestream.llm.requests import GenerationRequest  # noqa: E402

QUESTIONS = (
    "What expression is on this face?",
    "Describe the facial expression of a woman who has just heard surprising news.",
    "Which facial action units are active in a genuine smile?",
    "Is a frown with pressed lips more likely to mean anger or sadness?",
    "How can you tell fear from surprise by looking at the eyebrows and the eyes?",
    "Estimate the age of a man with grey hair and deep wrinkles around the eyes.",
    "List the visible facial attributes of a person wearing glasses and a beard.",
    "What does raised inner brows and a lowered lip corner usually express?",
    "Give a short justification for labelling a face as happy.",
    "Can a face look neutral and tired at the same time? Explain briefly.",
    "Describe the mouth of someone showing disgust.",
    "What changes around the eyes when a person squints in bright light?",
    "Summarise the emotional state of a person who is crying and smiling at once, with "
    "reference to the cheeks, the eyes and the mouth.",
    "Which muscles pull the lip corners down?",
    "Describe a contempt expression in one sentence.",
    "Compare the faces of a person who is bored and one who is sleepy.",
)

# --long-prompts: the same passage after every question (after, so that the prompts part
# where the questions start and the passage is not in the shared prefix), so prefill dominates.
PASSAGE = (
    "\n\nContext: the clip shows one person seated at a desk under office lighting, facing the "
    "camera at a slight angle. Over ten seconds the person first listens with a relaxed "
    "face, lips closed and brows level; then the inner brows rise and draw together, the "
    "upper eyelids lift so that more of the white of the eyes shows, and the lips part and "
    "stretch sideways. A moment later the brows relax again, the cheeks rise, crow's feet "
    "appear at the outer corners of the eyes and the lip corners pull up into a smile that "
    "shows the upper teeth. Towards the end the person glances down, the head tilts a "
    "little to the left, the lips press together and one lip corner tightens, while the "
    "eyes narrow slightly. The person wears thin-framed glasses and has short dark hair, a "
    "trimmed beard and no visible makeup; the lighting is even and there is no occlusion "
    "of the face apart from the glasses, which reflect the screen now and then.")


@dataclass(frozen=True)
class EngineRun:
    batch: int
    prefix_cache: bool = True
    packed_prefill: bool = True
    packed_weights: bool = True

    @property
    def label(self) -> str:
        return (f"engine, max_batch {self.batch}" + ("" if self.prefix_cache else
                                                     ", no prefix cache")
                + ("" if self.packed_prefill else ", prefill one by one")
                + ("" if self.packed_weights else ", plain weights"))


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    visual_tokens: int
    answer_tokens: int


SHAPES = {
    "7b": Shape(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008,
                vocab=32000, visual_tokens=2056, answer_tokens=64),
    "135m": Shape(hidden=576, layers=30, heads=9, kv_heads=3, intermediate=1536,
                  vocab=49152, visual_tokens=0, answer_tokens=32),    # SmolLM2-135M's shape
    "tiny": Shape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512,
                  visual_tokens=24, answer_tokens=8),
}
IMAGE_TOKEN_ID = -200           # LLaVA's placeholder convention: outside the vocabulary


def emit(row: dict) -> None:
    print("JSON " + json.dumps(row), flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ---- SmolLM2 on CPU --------------------------------------------------------------------

def default_model_dir() -> Path:
    base = os.environ.get("FACESTREAM_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facestream")
    return Path(base) / "models" / "smollm2-135m-instruct"


def smollm2_bench(*, model_dir: Path, new_tokens: int, batches: tuple[int, ...],
                  load: float, arrivals: int, rounds: int, long_prompts: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    after = PASSAGE if long_prompts else ""
    prompts = [tuple(tokenizer.apply_chat_template(
        [{"role": "user", "content": q + after}], add_generation_prompt=True)["input_ids"])
        for q in QUESTIONS]
    lengths = [len(p) for p in prompts]
    print(f"SmolLM2-135M fp32, CPU, {torch.get_num_threads()} threads; {len(prompts)} prompts "
          f"of {min(lengths)}-{max(lengths)} tokens, {new_tokens} new tokens each, no early "
          "stop", flush=True)
    total = len(prompts) * new_tokens

    def requests(tag: str) -> list[GenerationRequest]:
        return [GenerationRequest(f"{tag}{i}", p, max_new_tokens=new_tokens, ignore_eos=True)
                for i, p in enumerate(prompts)]

    shared = 0
    while all(len(p) > shared and p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    prefix = prompts[0][:shared]            # the chat template's system prompt
    extra = 8 if 8 in batches else max(batches)
    runs = [EngineRun(batch) for batch in batches]
    runs += [EngineRun(extra, prefix_cache=False), EngineRun(extra, packed_prefill=False),
             EngineRun(extra, packed_weights=False)]

    def hf_pass() -> float:
        """Tokens/s of HF generate, one prompt at a time, over all prompts."""
        start = time.perf_counter()
        with torch.inference_mode():
            for p in prompts:
                ids = torch.tensor([p])
                model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               pad_token_id=tokenizer.pad_token_id)
        return total / (time.perf_counter() - start)

    def engine_pass(run: EngineRun, tag: str) -> float:
        engine = Engine(model, tokenizer, max_batch=run.batch,
                        prefix_ids=prefix if run.prefix_cache else (),
                        pack_prefill=run.packed_prefill, packed_weights=run.packed_weights,
                        max_seq_len=max(lengths) + new_tokens)
        start = time.perf_counter()
        results = engine.generate(requests(tag))
        return sum(len(r.token_ids) for r in results) / (time.perf_counter() - start)

    # Both sides warmed up, then rounds in which every side runs once, in turn, so drift on
    # a shared machine hits all of them; medians over the rounds.
    with torch.inference_mode():
        ids = torch.tensor([prompts[0]])
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    Engine(model, tokenizer, max_batch=2, max_seq_len=max(lengths) + new_tokens).generate(
        requests("warm")[:2])
    hf: list[float] = []
    measured: dict[EngineRun, list[float]] = {run: [] for run in runs}
    for r in range(rounds):
        hf.append(hf_pass())
        for run in runs:
            measured[run].append(engine_pass(run, f"r{r}b{run.batch}-"))
    base_tps = statistics.median(hf)
    print(f"{rounds} interleaved rounds; median tokens/s (min-max)")
    print(f"{'run':<44}{'tokens/s':>10}{'spread':>16}{'vs HF':>8}")
    print(f"{'HF generate, one at a time':<44}{base_tps:>10.1f}"
          f"{f'{min(hf):.1f}-{max(hf):.1f}':>16}{1.0:>8.2f}")
    emit({"bench": "llm_cpu", "run": "hf_one_at_a_time", "tokens_per_s": round(base_tps, 2),
          "long_prompts": long_prompts, "rounds": [round(x, 2) for x in hf]})
    engine_tps = {}
    for run, values in measured.items():
        tps = statistics.median(values)
        if run == EngineRun(run.batch):
            engine_tps[run.batch] = tps
        print(f"{run.label:<44}{tps:>10.1f}{f'{min(values):.1f}-{max(values):.1f}':>16}"
              f"{tps / base_tps:>8.2f}", flush=True)
        emit({"bench": "llm_cpu", "run": "engine", "max_batch": run.batch,
              "prefix_cache_tokens": len(prefix) if run.prefix_cache else 0,
              "packed_prefill": run.packed_prefill, "packed_weights": run.packed_weights,
              "long_prompts": long_prompts,
              "tokens_per_s": round(tps, 2), "rounds": [round(x, 2) for x in values],
              "ratio_vs_hf": round(tps / base_tps, 3)})
    batch = 8 if 8 in engine_tps else max(engine_tps)
    ttft_under_load(model, tokenizer, prompts, batch=batch, new_tokens=new_tokens,
                    rate=load * engine_tps[batch] / new_tokens, arrivals=arrivals,
                    prefix=prefix)


def ttft_under_load(model, tokenizer, prompts, *, batch: int, new_tokens: int, rate: float,
                    arrivals: int, prefix: tuple[int, ...]) -> None:
    """Poisson arrivals at ``rate`` requests/s into the engine's loop thread."""
    import random

    engine = Engine(model, tokenizer, max_batch=batch, prefix_ids=prefix,
                    max_seq_len=max(len(p) for p in prompts) + new_tokens)
    engine.start()
    rng = random.Random(0)
    futures = []
    for i in range(arrivals):
        futures.append(engine.submit(GenerationRequest(
            f"load{i}", prompts[i % len(prompts)], max_new_tokens=new_tokens,
            ignore_eos=True)))
        time.sleep(rng.expovariate(rate))
    results = [f.result() for f in futures]
    engine.close()
    ttft = [r.ttft_s * 1000 for r in results]
    latency = [r.latency_s * 1000 for r in results]
    row = {"bench": "llm_cpu", "run": "ttft_under_load", "max_batch": batch,
           "arrival_rate_per_s": round(rate, 3), "requests": arrivals,
           "ttft_ms_p50": round(statistics.median(ttft), 1),
           "ttft_ms_p95": round(percentile(ttft, 0.95), 1),
           "latency_ms_p50": round(statistics.median(latency), 1),
           "latency_ms_p95": round(percentile(latency, 0.95), 1)}
    print(f"TTFT under load (Poisson, {rate:.2f} req/s, max_batch {batch}, {arrivals} "
          f"requests): p50 {row['ttft_ms_p50']:.0f} ms, p95 {row['ttft_ms_p95']:.0f} ms; "
          f"latency p50 {row['latency_ms_p50']:.0f} ms, p95 {row['latency_ms_p95']:.0f} ms")
    emit(row)


# ---- LLaMA-7B shape with random weights ------------------------------------------------

def random_llama(shape: Shape, *, device: torch.device, dtype: torch.dtype):
    """A LlamaForCausalLM of ``shape`` with N(0, 0.02) weights and unit norms, built on the
    meta device and materialised directly on ``device`` (no CPU copy of the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         intermediate_size=shape.intermediate, vocab_size=shape.vocab,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
        # Buffers were left uninitialised by to_empty: rebuild the rotary table's inv_freq.
        rotary = type(model.model.rotary_emb)(config=config).to(device)
        model.model.rotary_emb = rotary
    model.generation_config.pad_token_id = 0
    return model.eval()


@dataclass(frozen=True)
class Window:
    ids: tuple[int, ...]        # BOS, system ids, image placeholders, question ids
    visual: torch.Tensor        # [visual_tokens, hidden]


def make_windows(shape: Shape, count: int, *, device, dtype) -> list[Window]:
    generator = torch.Generator().manual_seed(1)
    windows = []
    for _ in range(count):
        question_len = int(torch.randint(32, 49, (), generator=generator))
        system = torch.randint(3, shape.vocab, (8,), generator=generator).tolist()
        question = torch.randint(3, shape.vocab, (question_len,), generator=generator).tolist()
        ids = (1, *system, *([IMAGE_TOKEN_ID] * shape.visual_tokens), *question)
        visual = torch.randn(shape.visual_tokens, shape.hidden, generator=generator) * 0.02
        windows.append(Window(ids, visual.to(device=device, dtype=dtype)))
    return windows


def hf_embeds(model, windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded inputs_embeds [B, T, hidden] and attention_mask [B, T] for HF generate."""
    embed = model.get_input_embeddings()
    width = max(len(w.ids) for w in windows)
    rows, masks = [], []
    for w in windows:
        ids = torch.tensor(w.ids, device=embed.weight.device)
        is_image = ids == IMAGE_TOKEN_ID
        row = embed(ids.masked_fill(is_image, 0))
        row[is_image] = w.visual
        pad = width - len(w.ids)
        rows.append(torch.cat([row.new_zeros(pad, row.shape[1]), row]))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long, device=ids.device),
                                torch.ones(len(w.ids), dtype=torch.long, device=ids.device)]))
    return torch.stack(rows), torch.stack(masks)


def task_prompts(shape: Shape, windows: list[Window], tasks: int) -> list[Window]:
    """One prompt per (window, task): with one task, the windows themselves; with more, each
    window's BOS + system ids + placeholders, then the task's question (the same questions
    for every window, as Face-LLaVA asks them), all a window's prompts holding its one
    visual tensor."""
    if tasks == 1:
        return windows
    generator = torch.Generator().manual_seed(2)
    questions = [tuple(torch.randint(3, shape.vocab, (int(n),), generator=generator).tolist())
                 for n in torch.randint(32, 49, (tasks,), generator=generator)]
    head = 1 + 8 + shape.visual_tokens
    return [Window(w.ids[:head] + q, w.visual) for w in windows for q in questions]


def shape_bench(*, shape_name: str, device: torch.device, dtype: torch.dtype,
                batches: tuple[int, ...], answer_tokens: int | None = None,
                tasks: int = 1) -> list[dict]:
    """Engine vs HF generate on a random-weight model of ``SHAPES[shape_name]``, ``tasks``
    questions per window (one request, and one engine slot, each); returns the rows it
    prints.  With more than one task the engine also runs with a copy of the visual tensor
    per request ("engine_unshared"), so the windows' visual prefixes are not shared."""
    shape = SHAPES[shape_name]
    if answer_tokens is not None:
        shape = dataclasses.replace(shape, answer_tokens=answer_tokens)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def reset_peak() -> None:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib() -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")

    model = random_llama(shape, device=device, dtype=dtype)
    windows = make_windows(shape, max(batches), device=device, dtype=dtype)
    prompts = task_prompts(shape, windows, tasks)
    max_seq_len = max(len(w.ids) for w in prompts) + shape.answer_tokens
    new = shape.answer_tokens
    print(f"LLaMA shape {shape_name} ({shape.layers} layers, hidden {shape.hidden}), random "
          f"{str(dtype).removeprefix('torch.')} weights on {device}; windows of "
          f"{shape.visual_tokens} visual tokens + 41-57 text tokens, {tasks} task(s) each, "
          f"{new}-token answers, no early stop", flush=True)
    print(f"{'batch':>5} {'run':<16}{'windows/s':>10}{'tokens/s':>10}{'vs HF':>7}"
          f"{'peak GiB':>9}  agree")

    def engine_run(group: list[Window], *, share: bool, warm: bool):
        """Seconds and token ids of the engine on ``group`` (None, None: out of memory)."""
        reset_peak()
        engine = None
        try:
            engine = Engine(model, None, max_batch=len(group), max_seq_len=max_seq_len,
                            image_token_id=IMAGE_TOKEN_ID)
            if warm:            # warm-up: kernels, allocator
                engine.generate([GenerationRequest("warm", group[0].ids, visual=group[0].visual,
                                                   max_new_tokens=2, ignore_eos=True)])
            sync()
            start = time.perf_counter()
            results = engine.generate([
                GenerationRequest(f"w{i}", w.ids, visual=w.visual if share else w.visual.clone(),
                                  max_new_tokens=new, ignore_eos=True)
                for i, w in enumerate(group)])
            sync()
            return time.perf_counter() - start, [r.token_ids for r in results]
        except torch.OutOfMemoryError:
            return float("nan"), None
        finally:
            del engine

    rows = []
    for batch in batches:
        group = prompts[:batch * tasks]
        timed = {"engine": engine_run(group, share=True, warm=not rows)}
        peaks = {"engine": peak_gib()}
        if tasks > 1:
            timed["engine_unshared"] = engine_run(group, share=False, warm=False)
            peaks["engine_unshared"] = peak_gib()
        reset_peak()
        try:
            with torch.inference_mode():
                embeds, mask = hf_embeds(model, group)
                sync()
                start = time.perf_counter()
                out = model.generate(inputs_embeds=embeds, attention_mask=mask,
                                     do_sample=False, max_new_tokens=new, min_new_tokens=new)
            sync()
            timed["hf"] = (time.perf_counter() - start,
                           [tuple(row) for row in out[:, -new:].tolist()])
            del embeds, mask, out
        except torch.OutOfMemoryError:
            timed["hf"] = (float("nan"), None)
        peaks["hf"] = peak_gib()
        hf_s, hf_tokens = timed["hf"]
        for run, (seconds, tokens) in timed.items():
            agree = (None if tokens is None or hf_tokens is None
                     else sum(a == b for a, b in zip(tokens, hf_tokens)) / len(group))
            row = {"bench": "llm_shape", "shape": shape_name, "device": str(device),
                   "batch": batch, "tasks": tasks, "run": run, "seconds": round(seconds, 4),
                   "windows_per_s": round(batch / seconds, 3),
                   "tokens_per_s": round(len(group) * new / seconds, 2),
                   "ratio_vs_hf_same_batch": round(hf_s / seconds, 3),
                   "peak_gib": round(peaks[run], 2), "greedy_agree": agree}
            rows.append(row)
            print(f"{batch:>5} {run:<16}{row['windows_per_s']:>10.2f}"
                  f"{row['tokens_per_s']:>10.1f}{row['ratio_vs_hf_same_batch']:>7.2f}"
                  f"{row['peak_gib']:>9.1f}  {agree}", flush=True)
            emit(row)
    hf_one = next((r for r in rows if r["run"] == "hf" and r["batch"] == 1), None)
    if hf_one is not None and tasks == 1:
        for row in rows:
            if row["run"] == "engine":
                emit({"bench": "llm_shape", "shape": shape_name, "batch": row["batch"],
                      "engine_tokens_per_s_vs_hf_one_at_a_time":
                          round(row["tokens_per_s"] / hf_one["tokens_per_s"], 2)})
    return rows


# ---- the decode step alone -------------------------------------------------------------

class SwitchableEngine(Engine):
    """The engine with its decode path picked per step (``variant``): "static" (its own,
    eager), "graphs" (its own, CUDA graphs), "plain" (its own, eager, with the model's plain
    output head instead of the oneDNN-packed one: CPU fp32 only) or "rebuilt" (the path the
    static one replaced, kept here as the baseline)."""

    variant = "static"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._own_parts = self._parts
        self.plain_parts = (dataclasses.replace(self._parts, lm_head=self._parts.lm_head.linear)
                            if self._parts.packed else None)

    def _decode(self, active: list[int]):
        self._decoder._parts = (self.plain_parts if self.variant == "plain"
                                else self._own_parts)
        if self.variant != "rebuilt":
            self._decoder.cuda_graphs = self.variant == "graphs"
            return super()._decode(active)
        self._placed = [None] * self._max_batch      # the static path re-places every slot
        n = active[-1] + 1
        tokens, positions = [0] * n, [0] * n
        for b in active:
            running = self._slots[b]
            tokens[b], positions[b] = running.tokens[-1], running.length
        logits = decode_step(self._parts, self._cache,
                             torch.tensor(tokens, device=self.device),
                             torch.tensor(positions, device=self.device),
                             span=max(positions) + 1)                  # [n, V]
        for b in active:
            self._slots[b].length += 1
        if len(active) < n:
            logits = logits[torch.tensor(active, device=self.device)]
        return self._sample(active, logits)


def decode_step_bench(*, shape_name: str, device: torch.device, dtype: torch.dtype,
                      batches: tuple[int, ...], steps: int, rounds: int) -> list[dict]:
    """ms per decode step of each variant of :class:`SwitchableEngine`, interleaved; returns
    the rows it prints."""
    shape = SHAPES[shape_name]
    cuda = device.type == "cuda"
    variants = ("rebuilt", "static", "graphs") if cuda else ("rebuilt", "static")
    model = random_llama(shape, device=device, dtype=dtype)
    if not cuda and packing.usable(next(model.parameters())):
        variants += ("plain",)
    windows = make_windows(shape, max(batches), device=device, dtype=dtype)
    budget = steps * (rounds + 1) * len(variants) + 2          # tokens per request
    max_seq_len = max(len(w.ids) for w in windows) + budget
    print(f"decode step, LLaMA shape {shape_name} ({shape.layers} layers, hidden "
          f"{shape.hidden}), random {str(dtype).removeprefix('torch.')} weights on {device}; "
          f"contexts of {min(len(w.ids) for w in windows)}-{max_seq_len} tokens, {steps} "
          f"steps per run, {rounds} interleaved rounds; torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"{'batch':>5} {'variant':<9}{'ms/step':>9}{'spread':>16}{'rebuilt/this':>14}")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def run(engine: SwitchableEngine, variant: str) -> float:
        """ms per step over ``steps`` steps of ``variant``."""
        engine.variant = variant
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        sync()
        return (time.perf_counter() - start) * 1000 / steps

    rows = []
    for batch in batches:
        engine = SwitchableEngine(model, None, max_batch=batch, max_seq_len=max_seq_len,
                                  image_token_id=IMAGE_TOKEN_ID)
        for i, w in enumerate(windows[:batch]):
            engine.submit(GenerationRequest(f"d{i}", w.ids, visual=w.visual,
                                            max_new_tokens=budget, ignore_eos=True))
        engine.step()                                           # prefill all, one decode
        for variant in variants:                                # warm-up, graphs captured
            run(engine, variant)
        measured: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(rounds):
            for variant in variants:
                measured[variant].append(run(engine, variant))
        engine.close()
        del engine
        if cuda:
            torch.cuda.empty_cache()
        if "plain" in measured:
            per_round = [a / b for a, b in zip(measured["static"], measured["plain"])]
            print(f"{batch:>5} packed head: static / plain "
                  f"{statistics.median(measured['static']) / statistics.median(measured['plain']):.3f}"
                  f" ({min(per_round):.3f}-{max(per_round):.3f})", flush=True)
        base = statistics.median(measured["rebuilt"])
        for variant, values in measured.items():
            ms = statistics.median(values)
            row = {"bench": "llm_decode_step", "shape": shape_name, "device": str(device),
                   "batch": batch, "variant": variant, "ms_per_step": round(ms, 3),
                   "rounds": [round(v, 3) for v in values],
                   "ratio_rebuilt_vs_this": round(base / ms, 3),
                   "load_average": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(f"{batch:>5} {variant:<9}{ms:>9.2f}"
                  f"{f'{min(values):.2f}-{max(values):.2f}':>16}{base / ms:>14.2f}",
                  flush=True)
            emit(row)
    return rows


# ---- running answers while long prompts are admitted -----------------------------------

def stall_bench(*, shape_name: str, device: torch.device, dtype: torch.dtype,
                running: int = 16, admitted: int = 16, chunks: tuple[int, ...] = (0, 512),
                rounds: int = 2) -> list[dict]:
    """How long the running answers stall while long prompts are admitted, per
    ``prefill_chunk`` (0 = whole prompts, the baseline).  One engine of ``running +
    admitted`` slots per run: ``running`` windows are prefilled and decoding, then
    ``admitted`` more arrive at once.  Every step gives each running request one token, so
    a step's wall time is the gap between two of its tokens: the stall is the longest step
    from the arrival until every admitted prompt has its first token; the steady step is
    the median of the steps before the arrival.  Runs interleaved over ``rounds`` after a
    warm-up of each; medians reported."""
    shape = SHAPES[shape_name]
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    model = random_llama(shape, device=device, dtype=dtype)
    windows = make_windows(shape, running + admitted, device=device, dtype=dtype)
    prompt = max(len(w.ids) for w in windows)
    # the running answers outlast their own prefill and the admission at the smallest chunk
    smallest = min((c for c in chunks if c > 0), default=prompt)
    answer = (running + admitted) * (prompt // smallest + 1) + 16
    max_seq_len = prompt + answer

    def run(chunk: int) -> tuple[float, float, int]:
        """(longest step during admission, median steady step) in ms, admission steps."""
        engine = Engine(model, None, max_batch=running + admitted, max_seq_len=max_seq_len,
                        image_token_id=IMAGE_TOKEN_ID, prefill_chunk=chunk)
        first = [engine.submit(GenerationRequest(f"r{i}", w.ids, visual=w.visual,
                                                 max_new_tokens=answer, ignore_eos=True))
                 for i, w in enumerate(windows[:running])]
        prompts = sum(len(w.ids) for w in windows[:running])
        while engine.stats["prefill_tokens"] < prompts:       # every running prompt in
            engine.step()
        steady = []
        for _ in range(3):                                     # decode-only steps
            sync()
            start = time.perf_counter()
            engine.step()
            sync()
            steady.append(time.perf_counter() - start)
        later = [engine.submit(GenerationRequest(f"a{i}", w.ids, visual=w.visual,
                                                 max_new_tokens=1, ignore_eos=True))
                 for i, w in enumerate(windows[running:])]
        stalls = []
        while not all(f.done() for f in later):
            sync()
            start = time.perf_counter()
            engine.step()
            sync()
            stalls.append(time.perf_counter() - start)
        assert not any(f.done() for f in first), "a running answer ended during admission"
        engine.close()
        return max(stalls) * 1000, statistics.median(steady) * 1000, len(stalls)

    print(f"stall, LLaMA shape {shape_name} ({shape.layers} layers, hidden {shape.hidden}), "
          f"random {str(dtype).removeprefix('torch.')} weights on {device}: {running} "
          f"answers running, {admitted} prompts of ~{prompt} positions arrive at once",
          flush=True)
    for chunk in chunks:             # warm-up
        run(chunk)
    measured: dict[int, list[tuple[float, float, int]]] = {c: [] for c in chunks}
    for _ in range(rounds):
        for chunk in chunks:
            measured[chunk].append(run(chunk))
    print(f"{'prefill_chunk':>13} {'max stall ms':>13} {'steady step ms':>15} "
          f"{'admission steps':>16}")
    rows = []
    for chunk, values in measured.items():
        row = {"bench": "llm_stall", "shape": shape_name, "device": str(device),
               "prefill_chunk": chunk, "running": running, "admitted": admitted,
               "max_stall_ms": round(statistics.median(v[0] for v in values), 2),
               "steady_step_ms": round(statistics.median(v[1] for v in values), 2),
               "admission_steps": values[0][2],
               "rounds": [round(v[0], 2) for v in values],
               "load_average": round(os.getloadavg()[0], 2)}
        rows.append(row)
        print(f"{chunk or 'whole':>13} {row['max_stall_ms']:>13.1f} "
              f"{row['steady_step_ms']:>15.1f} {row['admission_steps']:>16}", flush=True)
        emit(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model-shape", default="smollm2", choices=("smollm2", *SHAPES))
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"),
                        help="random-weight shapes: default float16 on cuda, float32 on cpu")
    parser.add_argument("--quick", action="store_true",
                        help="fewer new tokens / batch sizes (CPU ~1 min; 7b GPU < 4 min)")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes (overrides the defaults)")
    parser.add_argument("--load", type=float, default=0.7,
                        help="Poisson arrival rate as a fraction of the batch-8 throughput")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="shaped models: tokens per answer (default: the shape's, 64 for 7b)")
    parser.add_argument("--long-prompts", action="store_true",
                        help="smollm2: the same ~200-token passage after every question")
    parser.add_argument("--tasks-per-window", type=int, default=1,
                        help="shaped models: questions asked of each window (the engine "
                             "shares a window's visual prefix across them)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="CPU: interleaved rounds of every run (medians reported)")
    parser.add_argument("--decode-step", action="store_true",
                        help="time the engine's decode step alone, static path vs the "
                             "rebuilt-per-step one (and CUDA graphs on cuda)")
    parser.add_argument("--stall", action="store_true",
                        help="the running answers' longest stall while long prompts are "
                             "admitted, per prefill_chunk (0 = whole prompts)")
    parser.add_argument("--stall-running", type=int, default=16,
                        help="--stall: answers running when the prompts arrive")
    parser.add_argument("--stall-admitted", type=int, default=16,
                        help="--stall: prompts arriving at once")
    parser.add_argument("--stall-chunks", default="0,512",
                        help="--stall: prefill_chunk values compared (0 = whole prompts)")
    parser.add_argument("--steps", type=int, default=20,
                        help="--decode-step: steps per timed run")
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); on a busy shared "
                             "machine 1 avoids OpenMP spin contention")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    if (args.stall or args.decode_step) and args.model_shape == "smollm2":
        parser.error("--stall and --decode-step run a random-weight shape: --model-shape "
                     "tiny or 135m on cpu, 7b on cuda")
    if args.stall:
        rows = stall_bench(shape_name=args.model_shape, device=device, dtype=dtype,
                           running=args.stall_running, admitted=args.stall_admitted,
                           chunks=tuple(int(c) for c in args.stall_chunks.split(",")),
                           rounds=max(1, args.rounds))
        print("RESULT " + json.dumps({"bench": "llm_stall", "shape": args.model_shape,
                                      "device": args.device, "rows": rows}), flush=True)
        return
    if args.decode_step:
        default = (1, 8, 64) if device.type == "cuda" else (1, 4, 8)
        batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else default
        rows = decode_step_bench(shape_name=args.model_shape, device=device, dtype=dtype,
                                 batches=batches, steps=max(1, args.steps // 2 if args.quick
                                                            else args.steps),
                                 rounds=max(1, args.rounds))
        print("RESULT " + json.dumps({"bench": "llm_decode_step", "shape": args.model_shape,
                                      "device": args.device, "rows": rows}), flush=True)
        return
    if args.model_shape == "smollm2":
        if args.device != "cpu":
            parser.error("--model-shape smollm2 is the CPU benchmark; use 7b on cuda")
        batches = tuple(int(b) for b in args.batches.split(",")) if args.batches \
            else (1, 4, 8, 16)
        smollm2_bench(model_dir=args.model_dir, new_tokens=16 if args.quick else 32,
                      batches=batches, load=args.load, arrivals=16 if args.quick else 32,
                      rounds=max(1, args.rounds), long_prompts=args.long_prompts)
        return
    default = (1, 4, 16, 64) if args.quick else (1, 2, 4, 8, 16, 32, 64)
    batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else default
    rows = shape_bench(shape_name=args.model_shape, device=device, dtype=dtype,
                       batches=batches, answer_tokens=args.answer_tokens,
                       tasks=max(1, args.tasks_per_window))
    answer_tokens = args.answer_tokens or SHAPES[args.model_shape].answer_tokens
    print("RESULT " + json.dumps({"bench": "llm_shape", "shape": args.model_shape,
                                  "device": str(device), "answer_tokens": answer_tokens,
                                  "tasks_per_window": max(1, args.tasks_per_window),
                                  "rows": rows}))


if __name__ == "__main__":
    main()
