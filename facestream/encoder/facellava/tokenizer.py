"""Face-LLaVA's tokenizer as the reference runs it: LLaMA's sentencepiece ``tokenizer.model``.

The reference loads the checkpoint's tokenizer with ``AutoTokenizer.from_pretrained(path,
use_fast=False)``: the *slow* LLaMA tokenizer of transformers 4.31, a thin layer over the
``sentencepiece`` library.  A released directory may therefore carry only ``tokenizer.model``
(plus ``tokenizer_config.json`` / ``special_tokens_map.json``).  Converting that file into a
fast tokenizer is not the same tokenizer: current transformers' conversion maps a piece that
starts with a space differently (``" "`` -> ``▁`` instead of ``▁▁``), and it needs a protobuf
runtime that facestream's pinned mediapipe rules out.  :class:`SentencePieceTokenizer` reads
the file with ``sentencepiece`` directly (no protobuf) and applies the slow tokenizer's rules:

* **encode**: the text is split at the special tokens' strings (``<s>``, ``</s>``, ``<unk>``,
  never split themselves); each other chunk is ``SentencePieceProcessor.encode``\\ d on its
  own, so every chunk gets sentencepiece's dummy prefix ``▁`` again, even one that already
  starts with a space (the "legacy" handling: ``" ASSISTANT:"`` -> ``▁▁ASSISTANT:`` pieces).
  ``add_special_tokens`` puts BOS first (``add_bos_token``, default on) and EOS last
  (``add_eos_token``, default off).
* **decode**: special ids are left out with ``skip_special_tokens``; otherwise each one is
  written as its string, with one space before it unless it follows another special token
  or starts the text.  The rest is ``SentencePieceProcessor.decode`` (the first piece's
  dummy-prefix space removed, byte-fallback pieces joined into UTF-8).  No clean-up of
  spaces (LLaMA's ``clean_up_tokenization_spaces`` is off).

The reference's ``tokenizer_image_token`` (split at ``<image>``, tokenize each piece, keep
only the first piece's BOS, put ``IMAGE_TOKEN_INDEX`` between pieces) is
``facestream.llm.prompts.tokenize_prompt`` over this tokenizer.

Known difference: ``tokenizer_config.json``'s ``legacy: false`` changes only how text written
right after a special token's string is tokenized; facestream's prompts contain no such
string, so the flag is read and kept (``legacy``) but both values encode them the same.
Added tokens (``added_tokens.json`` with entries) are refused: the released Vicuna-based
checkpoint has none.  Pure Python + sentencepiece; thread-safe for concurrent encode/decode.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from facestream.errors import AssetError

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ADDED_FILE = "added_tokens.json"
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# LLaMA's defaults, which the slow tokenizer uses when the config files do not say otherwise.
DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
            "add_bos_token": True, "add_eos_token": False, "legacy": True}


@dataclass(frozen=True)
class Encoding:
    """What a call returns: ``input_ids``, as a transformers ``BatchEncoding`` exposes them."""

    input_ids: list[int]


class SentencePieceTokenizer:
    """The slow LLaMA tokenizer's behaviour over a sentencepiece model (module docstring).

    ``__call__(text, add_special_tokens=True)`` and ``decode(ids, skip_special_tokens=False)``
    follow the transformers tokenizer interface facestream's engine and prompts use;
    ``bos_token_id`` / ``eos_token_id`` / ``unk_token_id`` / ``pad_token_id`` are ids or None;
    ``len()`` is the vocabulary size."""

    def __init__(self, model_file: str | Path, *, bos_token: str | None = "<s>",
                 eos_token: str | None = "</s>", unk_token: str | None = "<unk>",
                 pad_token: str | None = None, add_bos_token: bool = True,
                 add_eos_token: bool = False, legacy: bool = True) -> None:
        import sentencepiece

        self.model_file = Path(model_file)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as exc:
            raise AssetError(f"{self.model_file} is not a sentencepiece model "
                             f"({str(exc).splitlines()[0]}); download the checkpoint "
                             "again") from None
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.legacy = legacy
        self.bos_token_id = self._special_id("bos_token", bos_token)
        self.eos_token_id = self._special_id("eos_token", eos_token)
        self.unk_token_id = self._special_id("unk_token", unk_token)
        self.pad_token_id = self._special_id("pad_token", pad_token)
        self._specials = {token: self._sp.PieceToId(token)
                          for token in (bos_token, eos_token, unk_token, pad_token) if token}
        self._special_ids = {i: token for token, i in self._specials.items()}
        # Longest first, so a special string that contains another one wins.
        self._split = (re.compile("(" + "|".join(re.escape(t) for t in sorted(
            self._specials, key=len, reverse=True)) + ")") if self._specials else None)

    @classmethod
    def from_dir(cls, path: str | Path) -> SentencePieceTokenizer:
        """The tokenizer of a checkpoint directory: ``tokenizer.model`` with the special
        tokens and flags of ``tokenizer_config.json`` and ``special_tokens_map.json`` (either
        may be absent: LLaMA's defaults).  AssetError, one line, for an unreadable file or
        added tokens."""
        path = Path(path)
        options = dict(DEFAULTS)
        for name in (SPECIAL_MAP_FILE, CONFIG_FILE):     # the config file wins, as in transformers
            values = _read_json(path / name)
            for key in DEFAULTS:
                if key in values:
                    options[key] = (_token_text(values[key]) if key in SPECIAL_TOKENS
                                    else bool(values[key]))
        added = _read_json(path / ADDED_FILE)
        if added:
            raise AssetError(f"{path / ADDED_FILE} adds tokens ({', '.join(sorted(added))[:80]}) "
                             "that the sentencepiece tokenizer does not hold; facestream reads "
                             "only tokenizer.model: use the released checkpoint's tokenizer files")
        return cls(path / MODEL_FILE, **options)

    def _special_id(self, name: str, token: str | None) -> int | None:
        if token is None:
            return None
        piece = self._sp.PieceToId(token)
        if self._sp.IdToPiece(piece) != token:
            raise AssetError(f"{self.model_file}: {name} {token!r} is not a piece of the "
                             "sentencepiece model; the tokenizer files do not belong together")
        return piece

    def __len__(self) -> int:
        return self._sp.GetPieceSize()

    def __call__(self, text: str, *, add_special_tokens: bool = True) -> Encoding:
        return Encoding(self.encode(text, add_special_tokens=add_special_tokens))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (BOS / EOS per the config with ``add_special_tokens``)."""
        ids: list[int] = []
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            ids.append(self.bos_token_id)
        chunks = self._split.split(text) if self._split is not None else [text]
        for chunk in chunks:
            if chunk in self._specials:
                ids.append(self._specials[chunk])
            elif chunk:
                ids.extend(self._sp.EncodeAsIds(chunk))
        if add_special_tokens and self.add_eos_token and self.eos_token_id is not None:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (see the module docstring for the special-token rule)."""
        out: list[str] = []
        run: list[int] = []
        previous_special = False
        for position, token in enumerate(int(i) for i in ids):
            special = self._special_ids.get(token)
            if special is None:
                run.append(token)
                previous_special = False
                continue
            if skip_special_tokens:
                continue
            if not previous_special and position:
                out.append(" ")
            out.append(self._sp.DecodeIds(run) + special)
            run = []
            previous_special = True
        out.append(self._sp.DecodeIds(run))
        return "".join(out)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The pieces of ``ids`` (``▁`` marks a space)."""
        return [self._sp.IdToPiece(int(i)) for i in ids]


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"{file} is not readable JSON ({exc}); download the checkpoint "
                         "again") from None
    if not isinstance(value, dict):
        raise AssetError(f"{file} holds {type(value).__name__}, expected a JSON object; "
                         "download the checkpoint again")
    return value


def _token_text(value: Any) -> str | None:
    """A special token as the config files write it: a string, null, or an AddedToken
    object ``{"content": ...}``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise AssetError(f"special token {value!r}: expected a string or an object with "
                     "'content'; download the checkpoint again")
