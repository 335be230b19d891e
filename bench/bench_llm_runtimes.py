"""CPU runtimes for the compact profile's describer: llama.cpp and ONNX Runtime GenAI vs torch.

facestream's compact profile writes one sentence per face window with SmolLM2-135M-Instruct
(:class:`facestream.llm.smollm.SmolDescriber`, the torch continuous-batching engine on fp32
weights converted from the shipped Q4_1 GGUF).  This script measures two candidate CPU runtimes
made for small quantized LLMs against it, on the same prompts, before one is chosen.  **The
candidates are not project dependencies**: each runs in its own scratch virtualenv, in a child
process started with that venv's interpreter, so nothing here is imported by facestream.

Sides (each a child process pinned to one core, ``--cpu``, with one runtime thread):

``torch``   facestream's ``SmolDescriber`` (threads=1, max_batch 8): the baseline and the
            reference text (it is greedy and matches HF ``generate``).  Interpreter:
            ``--torch-python`` (default: the repository's ``.venv``).
``llama``   llama.cpp through llama-cpp-python's C API (``llama_batch`` / ``llama_decode``),
            reading the GGUF itself (``--gguf``), so it computes with the same Q4_1 weights
            (its matmuls quantize activations to 8 bits).  The system prompt is decoded once
            into sequence 0 and copied (``llama_memory_seq_cp``) into each request's sequence;
            8 concurrent requests are one multi-sequence ``llama_decode`` per step.  Each
            sequence has its own KV stream (``kv_unified`` off, ``--llama-kv-unified`` to turn
            on): with one shared buffer a text depends on what else is in the batch.
``genai``   ONNX Runtime GenAI on a model its builder made from the fp32 safetensors directory
            (``--genai-model``; int4 MatMulNBits, re-quantized from the dequantized Q4_1 weights).
            One request at a time reuses the system prompt through ``Generator.rewind_to``; 8
            concurrent requests are one ``Generator`` with ``batch_size`` 8 (static batch,
            right-padded prompts, no shared prefix: every row runs until the last one stops).
``genai-int8`` (optional, ``--genai-model-int8``): the builder's ``-p int8`` model, timed too.
``genai-fp32`` (optional, ``--genai-model-fp32``): the builder's fp32 model, for the quality
            check only (agreement pass, not timed in the rounds).

The held set is 56 facts lines made by ``facestream.llm.smollm.facts`` (7 expressions x 2
genders x 4 ages, a few action units set), fixed below.  Prompts are SmolDescriber's chat prompt;
their token ids come from the HF tokenizer (in the torch child) and are fed as ids to every
runtime; each candidate's own tokenization of the prompt text is checked against them.  Greedy,
at most 40 new tokens, stopping at the first of ".", "!", "?", "\\n" (kept) or end of sequence;
texts are compared as SmolDescriber reports them (first sentence, whitespace collapsed).

Protocol: every side is started and warmed up (an untimed pass over all 56 prompts, one request
at a time and in groups of 8: this pass gives the agreement numbers), then ``--rounds`` rounds
run every side in turn (order rotated each round) on ``--timed`` prompts: one request at a time
(time to first token; generation tokens/s = tokens after the first / time after the first) and
in groups of 8 submitted at once (wall time per 8 descriptions).  Medians over rounds, with the
min-max, and ratios against torch; the load average is printed, as other jobs share the machine.
Import time (the runtime's modules), load time (model + tokenizer) and peak RSS over the run are
each child's own; "torch" says whether torch or transformers ended up in the child's
``sys.modules``.  Agreement: identical first sentences, mean character similarity (difflib),
and the share of generations that ended by themselves before 40 tokens.  Last line:
``RESULT {json}``.

Installing the candidates (scratch venvs; Python 3.11)::

    # llama.cpp: compiles llama.cpp at install (cmake + a C++ compiler; ~10+ min on 2 cores)
    python3.11 -m venv /tmp/lcpp && /tmp/lcpp/bin/pip install llama-cpp-python==0.3.36 numpy
    # ONNX Runtime GenAI: a wheel, plus onnxruntime>=1.31 (pulled in)
    python3.11 -m venv /tmp/ogenai && /tmp/ogenai/bin/pip install onnxruntime-genai==0.18.0 onnx_ir
    # ... and its model builder, which imports torch at module top (and transformers for -i);
    # here borrowed from facestream's venv, appended after the scratch venv's own packages:
    /tmp/ogenai/bin/python -c "import sys, runpy; \\
        sys.path.append('.venv/lib/python3.11/site-packages'); \\
        sys.argv = ['builder'] + sys.argv[1:]; \\
        runpy.run_module('onnxruntime_genai.models.builder', run_name='__main__')" \\
        -i ~/.cache/facestream/models/smollm2-135m-instruct -o /tmp/og-models/smollm2-int4 \\
        -p int4 -e cpu -c /tmp/og-models/cache     # likewise -p int8 -> smollm2-i8, -p fp32

Running (~10 min on a busy 2-core machine with the defaults)::

    .venv/bin/python bench/bench_llm_runtimes.py [--rounds 3] [--timed 16] \\
        [--llama-python /tmp/lcpp/bin/python] [--genai-python /tmp/ogenai/bin/python] \\
        [--genai-model /tmp/og-models/smollm2-int4] \\
        [--genai-model-int8 /tmp/og-models/smollm2-i8] \\
        [--genai-model-fp32 /tmp/og-models/smollm2-fp32]

A side whose interpreter or model is missing is skipped with the reason.  Paths can also be set
with FACESTREAM_BENCH_{TORCH,LLAMA,GENAI}_PYTHON and FACESTREAM_BENCH_GENAI_MODEL[_FP32].
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_NEW_TOKENS = 40
STOPS = (".", "!", "?", "\n")
BATCH = 8

# The held set: contract expression labels (facestream.encoder.expression.CONTRACT_LABELS),
# genders, ages, and per expression the action units (0-5 intensities) a face showing it
# would have; facts() lists those >= 2.0.  Ages 25 and 70 get the AUs, 8 and 47 do not.
EXPRESSIONS = ("neutral", "happy", "sad", "surprise", "anger", "fear", "disgust")
GENDERS = ("female", "male")
AGES = (8, 25, 47, 70)
DOMINANT = (0.52, 0.64, 0.77, 0.91)          # the top label's probability, by age index
ACTION_UNITS = {
    "neutral": {},
    "happy": {"AU12": 3.4, "AU25": 2.1},
    "sad": {"AU1": 2.4, "AU15": 2.8},
    "surprise": {"AU1": 3.0, "AU2": 2.9, "AU5": 2.6, "AU26": 3.3},
    "anger": {"AU4": 3.1, "AU5": 2.2},
    "fear": {"AU1": 2.2, "AU5": 2.5, "AU20": 2.7},
    "disgust": {"AU4": 2.0, "AU15": 2.3},
}
ALL_AUS = ("AU1", "AU2", "AU4", "AU5", "AU12", "AU15", "AU20", "AU25", "AU26", "AU43")


def held_facts() -> list[str]:
    """The 56 facts lines, made by facestream's own ``facts`` (run in the torch child, with
    facestream importable)."""
    from facestream.llm.smollm import facts
    from facestream.types import EncoderOutput

    lines = []
    for label in EXPRESSIONS:
        for gender in GENDERS:
            for k, age in enumerate(AGES):
                rest = (1.0 - DOMINANT[k]) / (len(EXPRESSIONS) - 1)
                expression = {e: (DOMINANT[k] if e == label else rest) for e in EXPRESSIONS}
                aus = {au: 0.4 for au in ALL_AUS}
                if k % 2:
                    aus.update(ACTION_UNITS[label])
                out = EncoderOutput(expression=expression, age_years=float(age),
                                    age_low=age - 3.0, age_high=age + 3.0, gender=gender,
                                    gender_score=0.9, action_units=aus)
                lines.append(facts(out))
    return lines


def first_sentence(text: str) -> str:
    """What SmolDescriber reports (``facestream.llm.smollm._trim``): the first sentence,
    whitespace collapsed."""
    text = " ".join(text.split())
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    return text[: ends[0] + 1] if ends else text


def cut_at_stop(text: str) -> tuple[str, bool]:
    """``text`` up to and including its first stop string; whether it had one."""
    hits = [i for i in (text.find(s) for s in STOPS) if i >= 0]
    return (text[: min(hits) + 1], True) if hits else (text, False)


# ---- child processes ---------------------------------------------------------------------

def child_setup(cpu: int, threads: int) -> None:
    os.sched_setaffinity(0, {cpu})
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def heavy_modules() -> dict[str, bool]:
    return {"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}


class TorchSide:
    """facestream's current engine: SmolDescriber, in process, threads=1, max_batch 8."""

    def __init__(self, args) -> None:
        start = time.perf_counter()
        import torch
        import transformers
        sys.path.insert(0, str(args.torch_src))
        from facestream.llm.smollm import SmolDescriber
        self.import_s = time.perf_counter() - start
        start = time.perf_counter()
        # A SmolDescriber that offers several runtimes is asked for the torch one.
        runtime = ({"runtime": "torch"} if "torch" in getattr(SmolDescriber, "RUNTIMES", ())
                   else {})
        d = SmolDescriber(Path(args.model_dir), threads=args.threads, max_batch=BATCH,
                          **runtime)
        self.describer = d
        self.encode = getattr(d, "_encode", None) or (
            lambda text: d._tokenizer(text, add_special_tokens=False).input_ids)
        self.load_s = time.perf_counter() - start
        self.version = (f"facestream SmolDescriber from {args.torch_src}; torch "
                        f"{torch.__version__}, transformers {transformers.__version__}")

    def prompts(self) -> dict:
        lines = held_facts()
        texts = [self.describer.prompt(line) for line in lines]
        return {"facts": lines, "texts": texts, "ids": [list(self.encode(t)) for t in texts],
                "prefix": list(self.describer._prefix_ids())}

    def generate(self, items: list[dict]) -> list[dict]:
        start = time.perf_counter()
        results = self.describer._generate([item["facts"] for item in items])
        wall = time.perf_counter() - start
        return [{"text": r.text, "tokens": len(r.token_ids), "ttft_s": r.ttft_s,
                 "total_s": r.latency_s, "wall_s": wall, "finish": r.finish_reason}
                for r in results]


class LlamaSide:
    """llama.cpp over the GGUF, through llama-cpp-python's low-level C API: the shared system
    prompt in sequence 0, requests in sequences 1..8 (each starting from a copy of it), one
    ``llama_decode`` per step for all running sequences, greedy argmax on their logits."""

    def __init__(self, args) -> None:
        start = time.perf_counter()
        import ctypes

        import llama_cpp as L
        import numpy as np
        self.import_s = time.perf_counter() - start
        self.L, self.np = L, np
        start = time.perf_counter()
        self._log_cb = L.llama_log_callback(lambda *a: None)       # quiet; kept alive
        L.llama_log_set(self._log_cb, None)
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = L.llama_model_load_from_file(str(args.gguf).encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {args.gguf}")
        cparams = L.llama_context_default_params()
        self.n_ctx = 2048
        cparams.n_ctx = cparams.n_batch = self.n_ctx
        cparams.n_ubatch = 512
        cparams.n_seq_max = BATCH + 1
        cparams.n_threads = cparams.n_threads_batch = args.threads
        cparams.kv_unified = getattr(args, "llama_kv_unified", True)
        if getattr(args, "llama_kv_f32", False):
            cparams.type_k = cparams.type_v = 0             # GGML_TYPE_F32 (default F16)
        flash = getattr(args, "llama_flash", "auto")
        cparams.flash_attn_type = {"auto": -1, "off": 0, "on": 1}[flash]
        cparams.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cparams)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = L.llama_batch_init(self.n_ctx, 0, BATCH + 1)
        self.load_s = time.perf_counter() - start
        self.version = f"llama-cpp-python {L.__version__}"
        self.prefix: list[int] = []
        self._piece = (ctypes.c_char * 256)()

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (self.L.llama_token * (len(raw) + 16))()
        n = self.L.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        return list(buf[:n])

    def set_prefix(self, prefix: list[int]) -> None:
        self.L.llama_memory_clear(self.mem, True)
        self.prefix = list(prefix)
        if prefix:
            self._decode([(t, i, 0, False) for i, t in enumerate(prefix)])

    def _decode(self, entries) -> None:
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def _argmax(self, index: int) -> int:
        logits = self.L.llama_get_logits_ith(self.ctx, index)
        return int(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def _piece_of(self, token: int) -> bytes:
        n = self.L.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0,
                                        False)
        return bytes(self._piece[:n])

    def generate(self, items: list[dict]) -> list[dict]:
        L, p = self.L, len(self.prefix)
        start = time.perf_counter()
        entries, rows = [], []
        for j, item in enumerate(items):
            ids, seq = item["ids"], j + 1
            if ids[:p] != self.prefix or len(ids) <= p:
                raise ValueError("prompt does not start with the shared prefix")
            L.llama_memory_seq_rm(self.mem, seq, -1, -1)
            if p:
                L.llama_memory_seq_cp(self.mem, 0, seq, -1, -1)   # seq 0 holds the prefix only
            suffix = ids[p:]
            entries += [(t, p + k, seq, k == len(suffix) - 1) for k, t in enumerate(suffix)]
            rows.append({"seq": seq, "pos": len(ids), "out": [], "bytes": b"", "text": "",
                         "done": False, "finish": "length", "ttft_s": 0.0, "total_s": 0.0})
        self._decode(entries)
        logit_index = [i for i, e in enumerate(entries) if e[3]]
        while True:
            now_rows = [r for r in rows if not r["done"]]
            if not now_rows:
                break
            step = []
            for r, index in zip(now_rows, logit_index):
                token = self._argmax(index)
                r["out"].append(token)
                if len(r["out"]) == 1:
                    r["ttft_s"] = time.perf_counter() - start
                if L.llama_vocab_is_eog(self.vocab, token):
                    r["done"], r["finish"] = True, "eos"
                else:
                    r["bytes"] += self._piece_of(token)
                    r["text"], stopped = cut_at_stop(r["bytes"].decode("utf-8", "replace"))
                    if stopped:
                        r["done"], r["finish"] = True, "stop"
                    elif len(r["out"]) >= MAX_NEW_TOKENS:
                        r["done"] = True
                if r["done"]:
                    r["total_s"] = time.perf_counter() - start
                else:
                    step.append((token, r["pos"], r["seq"], True))
                    r["pos"] += 1
            if not step:
                break
            self._decode(step)
            logit_index = list(range(len(step)))
        wall = time.perf_counter() - start
        for r in rows:
            L.llama_memory_seq_rm(self.mem, r["seq"], -1, -1)
        return [{"text": r["text"], "tokens": len(r["out"]), "ttft_s": r["ttft_s"],
                 "total_s": r["total_s"], "wall_s": wall, "finish": r["finish"]} for r in rows]


class GenaiSide:
    """ONNX Runtime GenAI: one request at a time on a persistent generator that keeps the
    system prompt (``rewind_to``); concurrent requests as one static batch."""

    def __init__(self, args) -> None:
        start = time.perf_counter()
        import numpy as np
        import onnxruntime_genai as og
        self.import_s = time.perf_counter() - start
        self.og, self.np = og, np
        start = time.perf_counter()
        config = og.Config(str(args.genai_model))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": args.threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.load_s = time.perf_counter() - start
        import onnxruntime
        self.version = f"onnxruntime-genai {og.__version__}, onnxruntime {onnxruntime.__version__}"
        self.eos = set(int(t) for t in self.tokenizer.eos_token_ids)
        self.pad = int(self.tokenizer.pad_token_id)
        self.prefix: list[int] = []
        self.single = None

    def tokenize(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def set_prefix(self, prefix: list[int]) -> None:
        self.prefix = list(prefix)
        self._fresh_single()

    def _fresh_single(self) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=512, do_sample=False)
        self.single = self.og.Generator(self.model, params)
        if self.prefix:
            self.single.append_tokens(self.np.array(self.prefix, dtype=self.np.int32))

    def _text(self, out: list[int]) -> str:
        return self.tokenizer.decode(self.np.array([t for t in out if t not in self.eos],
                                                   dtype=self.np.int32))

    def _run(self, gen, rows: list[dict], start: float) -> None:
        """Step ``gen`` until every row has stopped; rows are filled in place."""
        while not all(r["done"] for r in rows) and not gen.is_done():
            gen.generate_next_token()
            tokens = gen.get_next_tokens()
            now = time.perf_counter() - start
            for r, token in zip(rows, tokens):
                if r["done"]:
                    continue
                r["out"].append(int(token))
                if len(r["out"]) == 1:
                    r["ttft_s"] = now
                if int(token) in self.eos:
                    r["done"], r["finish"] = True, "eos"
                else:
                    r["text"], stopped = cut_at_stop(self._text(r["out"]))
                    if stopped:
                        r["done"], r["finish"] = True, "stop"
                    elif len(r["out"]) >= MAX_NEW_TOKENS:
                        r["done"] = True
                if r["done"]:
                    r["total_s"] = time.perf_counter() - start
        for r in rows:
            if not r["done"]:
                r["done"], r["total_s"] = True, time.perf_counter() - start

    def generate(self, items: list[dict]) -> list[dict]:
        np, og = self.np, self.og
        rows = [{"out": [], "text": "", "done": False, "finish": "length", "ttft_s": 0.0,
                 "total_s": 0.0} for _ in items]
        if len(items) == 1:
            p = len(self.prefix)
            ids = items[0]["ids"]
            if ids[:p] != self.prefix:
                raise ValueError("prompt does not start with the shared prefix")
            start = time.perf_counter()
            self.single.append_tokens(np.array(ids[p:], dtype=np.int32))
            self._run(self.single, rows, start)
            wall = time.perf_counter() - start
            self.single.rewind_to(p)
            if self.single.is_done():         # not seen, but keep the next request sound
                self._fresh_single()
        else:
            width = max(len(item["ids"]) for item in items)
            batch = np.full((len(items), width), self.pad, dtype=np.int32)   # right-padded
            for i, item in enumerate(items):
                batch[i, : len(item["ids"])] = item["ids"]
            start = time.perf_counter()
            params = og.GeneratorParams(self.model)
            params.set_search_options(max_length=width + MAX_NEW_TOKENS, do_sample=False,
                                      batch_size=len(items))
            gen = og.Generator(self.model, params)
            gen.append_tokens(batch)
            self._run(gen, rows, start)
            wall = time.perf_counter() - start
        return [{"text": r["text"], "tokens": len(r["out"]), "ttft_s": r["ttft_s"],
                 "total_s": r["total_s"], "wall_s": wall, "finish": r["finish"]} for r in rows]


SIDES = {"torch": TorchSide, "llama": LlamaSide, "genai": GenaiSide, "genai-int8": GenaiSide,
         "genai-fp32": GenaiSide}


def child_main(args) -> None:
    """A side's process: JSON commands on stdin, one ``@@ {json}`` reply line each."""
    child_setup(args.cpu, args.threads)
    out = sys.stdout
    sys.stdout = sys.stderr           # stray prints must not corrupt the protocol

    def reply(obj) -> None:
        out.write("@@ " + json.dumps(obj) + "\n")
        out.flush()

    side = None
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        try:
            if cmd == "start":
                side = SIDES[args.child](args)
                reply({"import_s": side.import_s, "load_s": side.load_s,
                       "version": side.version})
            elif cmd == "prompts":
                reply(side.prompts())
            elif cmd == "tokenize":
                reply({"ids": [side.tokenize(t) for t in msg["texts"]]})
            elif cmd == "prefix":
                side.set_prefix(msg["prefix"])
                reply({})
            elif cmd == "generate":         # one call per group; group size 1 = one request
                reply({"groups": [side.generate(group) for group in msg["groups"]]})
            elif cmd == "stats":
                reply({"peak_rss_mb": peak_rss_mb(), **heavy_modules()})
            elif cmd == "quit":
                reply({})
                return
        except Exception as exc:           # report, keep serving
            import traceback
            traceback.print_exc()
            reply({"error": f"{type(exc).__name__}: {exc}"})


# ---- parent ----------------------------------------------------------------------------------

def side_specs(args) -> dict[str, tuple[str, str, bool]]:
    """name -> (interpreter, model path, timed in the rounds) for every side asked for."""
    specs = {"torch": (args.torch_python, str(args.model_dir), True),
             "llama": (args.llama_python, str(args.gguf), True),
             "genai": (args.genai_python, str(args.genai_model), True)}
    if args.genai_model_int8:
        specs["genai-int8"] = (args.genai_python, args.genai_model_int8, True)
    if args.genai_model_fp32:
        specs["genai-fp32"] = (args.genai_python, args.genai_model_fp32, False)
    return specs


BATCHING = {"torch": "engine, max_batch 8 (continuous)",
            "llama": "one llama_decode per step, 8 seq_ids (continuous-capable)",
            "genai": "Generator batch_size 8 (static, padded)",
            "genai-int8": "Generator batch_size 8 (static, padded)"}


class Child:
    def __init__(self, name: str, python: str, model: str, args, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        cmd = [python, str(Path(__file__).resolve()), "--child", name, "--cpu", str(args.cpu),
               "--threads", str(args.threads), "--model-dir", str(args.model_dir),
               "--gguf", str(args.gguf), "--torch-src", str(args.torch_src),
               "--genai-model", model, "--llama-flash", args.llama_flash]
        cmd += ["--llama-kv-f32"] * args.llama_kv_f32 + ["--llama-kv-unified"] * \
            args.llama_kv_unified
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log, "w"), text=True, env=env)

    def ask(self, cmd: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                answer = json.loads(line[3:])
                if "error" in answer:
                    raise RuntimeError(f"{self.name}: {answer['error']} (log: {self.log})")
                return answer
        tail = self.log.read_text()[-2000:]
        raise RuntimeError(f"{self.name} child exited (rc={self.proc.wait()}); log tail:\n{tail}")

    def generate(self, groups: list[list[dict]]) -> list[list[dict]]:
        return self.ask("generate", groups=groups)["groups"]

    def close(self) -> None:
        try:
            self.ask("quit")
        except (RuntimeError, OSError):
            pass
        self.proc.wait(timeout=30)


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-" \
           f"{fmt.format(max(values))})"


def single_stats(results: list[dict]) -> dict:
    """One pass of one-at-a-time requests: median TTFT, generation tok/s (tokens after the
    first over the time after the first, summed over the pass), mean wall s/description."""
    gen_tokens = sum(max(r["tokens"] - 1, 0) for r in results)
    gen_time = sum(r["total_s"] - r["ttft_s"] for r in results)
    return {"ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in results),
            "gen_tok_s": gen_tokens / gen_time if gen_time > 0 else float("nan"),
            "s_per_description": statistics.mean(r["wall_s"] for r in results)}


def quality(texts: list[str], results: list[dict], reference: list[str]) -> dict:
    """Agreement with the reference: identical first sentences, mean character similarity
    (difflib ratio), and how many generations ended by themselves (not at 40 tokens)."""
    from difflib import SequenceMatcher

    n = len(reference)
    return {"identical": sum(a == b for a, b in zip(texts, reference)) / n,
            "similarity": sum(SequenceMatcher(None, a, b).ratio()
                              for a, b in zip(texts, reference)) / n,
            "ended": sum(r["finish"] != "length" for r in results) / n,
            "mean_tokens": statistics.mean(r["tokens"] for r in results)}


def parent_main(args) -> None:
    log_dir = Path(tempfile.mkdtemp(prefix="bench_llm_runtimes."))
    print(f"bench_llm_runtimes: every side pinned to cpu {args.cpu}, {args.threads} runtime "
          f"thread; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; child logs "
          f"in {log_dir}", flush=True)
    children: dict[str, Child] = {}
    info: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    specs = side_specs(args)
    for name, (python, model, _) in specs.items():
        if not python or not Path(python).exists():
            skipped[name] = f"no interpreter {python}"
        elif not model or not Path(model).exists():
            skipped[name] = f"no model {model}"
        else:
            child = Child(name, python, model, args, log_dir)
            try:
                info[name] = child.ask("start")
                children[name] = child
            except RuntimeError as exc:
                skipped[name] = str(exc).splitlines()[0]
                child.proc.kill()
        if name == "torch" and name not in children:
            sys.exit(f"the torch side is the reference and could not start: {skipped[name]}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    for name in children:
        print(f"  {name}: {info[name]['version']}")

    held = children["torch"].ask("prompts")
    n = len(held["facts"])
    items = [{"facts": f, "ids": ids} for f, ids in zip(held["facts"], held["ids"])]
    lengths = [len(ids) for ids in held["ids"]]
    print(f"held set: {n} facts lines; prompts {min(lengths)}-{max(lengths)} tokens, of which "
          f"the shared prefix (system prompt) is {len(held['prefix'])}", flush=True)

    # Each candidate's own tokenizer on the exact prompt text vs the HF ids every side is fed.
    tokenization = {}
    for name, child in children.items():
        if name == "torch":
            continue
        ids = child.ask("tokenize", texts=held["texts"])["ids"]
        bad = [i for i in range(n) if ids[i] != held["ids"][i]]
        tokenization[name] = {"identical": n - len(bad), "of": n, "first_mismatches": bad[:3]}
        print(f"  {name} tokenizer vs HF ids on the prompt text: {n - len(bad)}/{n} identical",
              flush=True)
        child.ask("prefix", prefix=held["prefix"])

    # Warm-up and agreement pass: every prompt one at a time, then in groups of 8.
    groups_all = [items[i:i + BATCH] for i in range(0, n, BATCH)]
    texts: dict[str, dict[str, list[str]]] = {}
    finished: dict[str, dict[str, list[dict]]] = {}
    for name, child in children.items():
        start = time.perf_counter()
        one = [g[0] for g in child.generate([[it] for it in items])]
        eight = [r for g in child.generate(groups_all) for r in g]
        finished[name] = {"single": one, "batch": eight}
        texts[name] = {k: [first_sentence(r["text"]) for r in v]
                       for k, v in finished[name].items()}
        info[name].update(child.ask("stats"), agreement_pass=single_stats(one))
        print(f"  warm-up/agreement pass {name}: {time.perf_counter() - start:.1f} s "
              f"(load {os.getloadavg()[0]:.2f})", flush=True)
    reference = texts["torch"]["single"]
    agreement = {}
    for name in children:
        t, f = texts[name], finished[name]
        agreement[name] = {
            "single": quality(t["single"], f["single"], reference),
            "batch": quality(t["batch"], f["batch"], reference),
            "batch_vs_own_single": sum(a == b for a, b in zip(t["batch"], t["single"])) / n,
            "differ": [i for i in range(n) if t["single"][i] != reference[i]]}

    # Timed rounds: every timed side in turn, the order rotated each round.
    step = max(1, n // args.timed)
    timed = items[::step][: args.timed]
    timed_groups = [timed[i:i + BATCH] for i in range(0, len(timed) - BATCH + 1, BATCH)]
    sides = [name for name in children if specs[name][2]]
    measured = {name: {"ttft_ms": [], "gen_tok_s": [], "s_per_description": [],
                       "batch8_s": []} for name in sides}
    loads = []
    print(f"{args.rounds} rounds, each side: {len(timed)} prompts one at a time, then "
          f"{len(timed_groups)} groups of {BATCH} at once", flush=True)
    for r in range(args.rounds):
        for name in sides[r % len(sides):] + sides[: r % len(sides)]:
            child = children[name]
            one = single_stats([g[0] for g in child.generate([[it] for it in timed])])
            for key, value in one.items():
                measured[name][key].append(value)
            groups = child.generate(timed_groups)
            measured[name]["batch8_s"].append(statistics.mean(g[0]["wall_s"] for g in groups))
        loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}: load {loads[-1]:.2f}", flush=True)
    for name, child in children.items():
        info[name].update(child.ask("stats"))
        child.close()

    # Report.
    print(f"\nmedian (min-max) over {args.rounds} rounds; one core; load average after each "
          "round: " + ", ".join(f"{x:.2f}" for x in loads))
    print(f"{'side':<11}{'TTFT ms':>16}{'gen tok/s':>18}{'s/descr, 1 at a time':>22}"
          f"{'s per 8 at once':>19}{'RSS MB':>8}{'import s':>9}{'load s':>7}{'torch':>6}")
    rows = {}
    base = {k: statistics.median(v) for k, v in measured["torch"].items()}
    for name in sides:
        m, i = measured[name], info[name]
        med = {k: statistics.median(v) for k, v in m.items()}
        print(f"{name:<11}{spread(m['ttft_ms']):>16}{spread(m['gen_tok_s'], '{:.1f}'):>18}"
              f"{spread(m['s_per_description'], '{:.2f}'):>22}"
              f"{spread(m['batch8_s'], '{:.2f}'):>19}{i['peak_rss_mb']:>8.0f}"
              f"{i['import_s']:>9.2f}{i['load_s']:>7.2f}"
              f"{('yes' if i['torch'] or i['transformers'] else 'no'):>6}")
        rows[name] = {"version": i["version"], "batching": BATCHING[name],
                      **{k: round(v, 3) for k, v in med.items()},
                      "rounds": {k: [round(x, 3) for x in v] for k, v in m.items()},
                      "speedup_vs_torch": {
                          "ttft": round(base["ttft_ms"] / med["ttft_ms"], 2),
                          "gen_tok_s": round(med["gen_tok_s"] / base["gen_tok_s"], 2),
                          "one_at_a_time": round(base["s_per_description"]
                                                 / med["s_per_description"], 2),
                          "batch8": round(base["batch8_s"] / med["batch8_s"], 2)},
                      "peak_rss_mb": round(i["peak_rss_mb"]), "import_s": round(i["import_s"], 2),
                      "load_s": round(i["load_s"], 2), "torch_imported": i["torch"],
                      "transformers_imported": i["transformers"]}
    print("\nspeed-up vs torch (x, >1 = faster):   TTFT  gen tok/s  1 at a time  8 at once")
    for name in sides:
        s = rows[name]["speedup_vs_torch"]
        print(f"  {name:<34}{s['ttft']:>6.2f}{s['gen_tok_s']:>11.2f}{s['one_at_a_time']:>13.2f}"
              f"{s['batch8']:>11.2f}   {BATCHING[name]}")

    print(f"\nagreement with torch's first sentences over the {n} held prompts (target: >= 80% "
          "identical)\n"
          f"{'side':<11}{'identical':>10}{'@8':>6}{'similarity':>11}{'ended':>7}{'tokens':>7}"
          f"{'8 vs own 1':>11}")
    for name in children:
        a = agreement[name]
        print(f"{name:<11}{a['single']['identical']:>10.0%}{a['batch']['identical']:>6.0%}"
              f"{a['single']['similarity']:>11.2f}{a['single']['ended']:>7.0%}"
              f"{a['single']['mean_tokens']:>7.1f}{a['batch_vs_own_single']:>11.0%}")
    print("(@8: the same prompts in groups of 8; ended: stopped by itself before 40 tokens; "
          "8 vs own 1: the side's batched texts equal its own one-at-a-time texts)")
    if "genai-fp32" in children:
        w = info["genai-fp32"]["agreement_pass"]
        print(f"genai-fp32 (not timed; agreement pass one at a time): TTFT {w['ttft_ms']:.0f} "
              f"ms, {w['gen_tok_s']:.1f} tok/s, RSS {info['genai-fp32']['peak_rss_mb']:.0f} MB")
    for name in children:
        differ = agreement[name]["differ"]          # examples spread over the held set
        for k in differ[:: max(1, len(differ) // max(1, args.examples))][: args.examples]:
            print(f"  [{k}] {held['facts'][k]}\n      torch: {reference[k]}\n"
                  f"      {name}: {texts[name]['single'][k]}")
    for name in children:
        agreement[name].pop("differ")
    result = {"bench": "llm_runtimes", "cpu": args.cpu, "threads": args.threads,
              "rounds": args.rounds, "timed_prompts": len(timed), "held_prompts": n,
              "load_average": [round(x, 2) for x in loads], "sides": rows,
              "agreement": agreement, "tokenization": tokenization, "skipped": skipped,
              "llama_options": {"kv_unified": args.llama_kv_unified,
                                "kv_f32": args.llama_kv_f32, "flash": args.llama_flash}}
    if args.dump:
        Path(args.dump).write_text(json.dumps({"facts": held["facts"], "ids": held["ids"],
                                               "texts": texts, "result": result}, indent=1))
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    cache = Path(os.environ.get("FACESTREAM_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "facestream") / "models"
    venv_python = ROOT / ".venv" / "bin" / "python"
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timed", type=int, default=16,
                        help="prompts per timed round (the groups of 8 are made from them)")
    parser.add_argument("--examples", type=int, default=4,
                        help="differing pairs to print per side")
    parser.add_argument("--cpu", type=int, default=0, help="the core every side is pinned to")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--torch-python", default=env("FACESTREAM_BENCH_TORCH_PYTHON") or str(
        venv_python if venv_python.exists() else sys.executable))
    parser.add_argument("--torch-src", type=Path, default=ROOT,
                        help="the facestream source tree the torch side imports (default: "
                             "this checkout; e.g. a `git archive` of another commit)")
    parser.add_argument("--model-dir", type=Path, default=cache / "smollm2-135m-instruct")
    parser.add_argument("--llama-python",
                        default=env("FACESTREAM_BENCH_LLAMA_PYTHON", "/tmp/lcpp/bin/python"))
    parser.add_argument("--gguf", type=Path, default=cache / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--llama-kv-unified", action="store_true",
                        help="one KV buffer for all sequences (default: one stream per "
                             "sequence, which keeps batched texts equal to one-at-a-time ones)")
    parser.add_argument("--llama-kv-f32", action="store_true",
                        help="F32 KV cache (default: llama.cpp's F16)")
    parser.add_argument("--llama-flash", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--genai-python",
                        default=env("FACESTREAM_BENCH_GENAI_PYTHON", "/tmp/ogenai/bin/python"))
    parser.add_argument("--genai-model", default=env(
        "FACESTREAM_BENCH_GENAI_MODEL", "/tmp/og-models/smollm2-int4"),
        help="the builder's int4 CPU model")
    parser.add_argument("--genai-model-int8", default=env(
        "FACESTREAM_BENCH_GENAI_MODEL_INT8", ""), help="optional: an int8 build, also timed")
    parser.add_argument("--genai-model-fp32", default=env(
        "FACESTREAM_BENCH_GENAI_MODEL_FP32", ""), help="optional: fp32 build, agreement only")
    parser.add_argument("--dump", default="", help="write every side's texts (JSON) here")
    parser.add_argument("--child", choices=tuple(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    missing = [f"{flag} {path}" for flag, path in (("--llama-python", args.llama_python),
                                                   ("--genai-python", args.genai_python))
               if not Path(path).is_file()]
    if missing:
        # The candidates live in scratch virtualenvs (not project dependencies): without
        # them there is nothing to compare; `./dev bench` goes on with the other scripts.
        print(f"bench_llm_runtimes: skipped, no candidate interpreter at {'; '.join(missing)} "
              "(how to make them: the docstring of this script)")
        return
    parent_main(args)


if __name__ == "__main__":
    main()
