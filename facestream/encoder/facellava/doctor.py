"""``facestream facellava check``: inspect a downloaded Face-LLaVA checkpoint without loading it.

:func:`check_checkpoint` looks at everything :func:`~facestream.encoder.facellava.load_facellava`
needs and reports every problem it finds, each as one line that says what is wrong and how to
fix it, instead of stopping at the first:

* ``config.json``: readable, a LLaVA-LLaMA ``model_type``, the LLaMA and fusion fields;
* weights: the index and every shard it names; safetensors headers read directly (an 8-byte
  little-endian length, then a JSON table of ``dtype`` / ``shape`` / ``data_offsets``), so no
  tensor is read; a file shorter than its header says is a truncated download; ``.bin`` files
  are opened with ``torch.load(mmap=True)``, which maps rather than reads them;
* key layout: every tensor against the modules the config describes (built on the meta
  device); a missing key and an unexpected key of the same shape are reported together as one
  renamed key; shapes; dtypes (floating point, and one dtype throughout);
* tokenizer: ``tokenizer.model`` read with sentencepiece (its size against ``vocab_size``), or a
  ``tokenizer.json``;
* the image and video towers: a local directory, its config, its ``vision_model.*`` keys and
  shapes, and its width against ``mm_hidden_size``.

Blocking; reads only headers and small JSON files (a 7B checkpoint checks in about a second).
"""

from __future__ import annotations

import difflib
import json
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from facestream.encoder.facellava.checkpoint import (
    _INV_FREQ,
    FUSION_PREFIXES,
    LLM_PREFIXES,
    MODEL_TYPES,
    TOWER_PREFIXES,
    TOWER_SETTINGS,
    WEIGHT_FILES,
    llama_config,
)
from facestream.errors import AssetError, ConfigError

FLOAT_DTYPES = ("F16", "BF16", "F32")
_TORCH_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64",
                 "int8": "I8", "uint8": "U8", "int32": "I32", "int64": "I64", "bool": "BOOL"}
_TOWER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json",
                  "pytorch_model.bin", "pytorch_model.bin.index.json")
_REDOWNLOAD = "download the checkpoint again"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a file header describes it (safetensors dtype names: F16, BF16, F32...)."""

    dtype: str
    shape: tuple[int, ...]
    file: str

    @property
    def nbytes(self) -> int:
        size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2}.get(self.dtype, 1)
        count = 1
        for dim in self.shape:
            count *= dim
        return count * size


@dataclass
class Report:
    """What a check found: ``problems`` (one line each, with the fix) and ``notes`` (what was
    found healthy, for the summary).  ``ok`` when there are no problems."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_checkpoint(path: str | Path, *, image_tower: str | Path | None = None,
                     video_tower: str | Path | None = None) -> Report:
    """Inspect a Face-LLaVA checkpoint directory and its towers (None or "": the towers the
    config names).  Never raises for a bad checkpoint: everything goes into the report."""
    path = Path(path).expanduser()
    report = Report()
    config = _check_config(path, report)
    if config is None:
        return report
    tensors, lost = _check_weights(path, report)
    if tensors:
        _check_layout(config, tensors, lost, report)
    _check_tokenizer(path, config, report)
    for kind, explicit in (("image", image_tower), ("video", video_tower)):
        _check_tower(path, config, kind, explicit, report)
    return report


# ---- config ----------------------------------------------------------------------------

def _check_config(path: Path, report: Report) -> dict[str, Any] | None:
    if not path.is_dir():
        report.problems.append(f"{path} is not a directory: download chaubeyG/FaceLLaVA and "
                               "pass its local directory")
        return None
    file = path / "config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError:
        report.problems.append(f"{file} is missing: {_REDOWNLOAD} (config.json is part of it)")
        return None
    except (OSError, ValueError) as exc:
        report.problems.append(f"{file} is not readable JSON ({exc}): {_REDOWNLOAD}")
        return None
    if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        report.problems.append(f"{file}: model_type {found!r} is not a LLaVA-LLaMA model "
                               f"({' or '.join(MODEL_TYPES)}): point at the Face-LLaVA checkpoint")
        return None
    from facestream.encoder.facellava.fusion import FusionConfig

    for what, check in (("LLaMA", lambda: llama_config(config)),
                        ("fusion", lambda: FusionConfig.from_dict(config))):
        try:
            check()
        except ConfigError as exc:
            report.problems.append(f"{file}: {what} fields: {exc}: {_REDOWNLOAD}")
            return None
    report.notes.append(f"config: {config.get('cross_attn_type')} cross-attention, hidden "
                        f"{config['hidden_size']}, {config['num_hidden_layers']} layers")
    return config


# ---- weight files ----------------------------------------------------------------------

def _check_weights(path: Path, report: Report) -> tuple[dict[str, TensorInfo], set[str]]:
    """(the tensors found, the keys of shards already reported missing or broken)."""
    first = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if first is None:
        report.problems.append(f"{path} has no weights (none of {', '.join(WEIGHT_FILES)}): "
                               f"{_REDOWNLOAD}")
        return {}, set()
    files, index = [first], {}
    if first.name.endswith(".index.json"):
        try:
            index = json.loads(first.read_text())["weight_map"]
            files = [path / s for s in dict.fromkeys(index.values())]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.problems.append(f"{first} is not a weight index ({exc}): {_REDOWNLOAD}")
            return {}, set()
    tensors: dict[str, TensorInfo] = {}
    lost: set[str] = set()
    for file in files:
        if not file.is_file():
            report.problems.append(f"shard {file.name} (listed in {first.name}) is missing: "
                                   f"download {file.name} again")
            lost.update(k for k, f in index.items() if f == file.name)
            continue
        try:
            found = read_header(file)
        except AssetError as exc:
            report.problems.append(f"{exc}: download {file.name} again")
            lost.update(k for k, f in index.items() if f == file.name)
            continue
        for key, info in found.items():
            tensors[key] = info
            if index and index.get(key) not in (None, file.name):
                report.problems.append(f"{key} is in {file.name} but {first.name} says "
                                       f"{index[key]}: {_REDOWNLOAD}")
    absent = [k for k in index if k not in tensors and k not in lost]
    if absent:
        report.problems.append(f"{first.name} lists {len(absent)} tensors its shards do not "
                               f"hold ({', '.join(sorted(absent)[:3])}): {_REDOWNLOAD}")
    if tensors:
        total = sum(t.nbytes for t in tensors.values())
        report.notes.append(f"weights: {len(files)} file(s), {len(tensors)} tensors, "
                            f"{total / 1e9:.2f} GB")
    return tensors, lost


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Every tensor's dtype and shape in a weights file, without reading the tensors.
    Safetensors: the header alone (AssetError when it is malformed or the file is shorter
    than the header says); ``.bin``: ``torch.load`` memory-mapped."""
    if file.suffix != ".safetensors":
        return _bin_header(file)
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= min(size - 8, 100 * 2 ** 20):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise AssetError(f"{file.name} is not a safetensors file ({exc})") from None
    header.pop("__metadata__", None)
    out, end = {}, 0
    for key, entry in header.items():
        try:
            out[key] = TensorInfo(str(entry["dtype"]), tuple(int(d) for d in entry["shape"]),
                                  file.name)
            end = max(end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise AssetError(f"{file.name}: header entry {key!r} is malformed") from None
    if size < 8 + length + end:
        raise AssetError(f"{file.name} is truncated ({size} bytes, its header needs "
                         f"{8 + length + end})")
    return out


def _bin_header(file: Path) -> dict[str, TensorInfo]:
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 -- torch.load raises untyped errors on bad files
        raise AssetError(f"{file.name} is unreadable ({str(exc).splitlines()[0]})") from None
    return {k: TensorInfo(_TORCH_DTYPES.get(str(v.dtype).removeprefix("torch."), str(v.dtype)),
                          tuple(v.shape), file.name) for k, v in state.items()}


# ---- key layout, shapes, dtypes ----------------------------------------------------------

def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every key the loader wants, with its shape: the LLaMA from the config and the fusion
    stage (both built on the meta device, so nothing is allocated)."""
    import torch
    from transformers import LlamaForCausalLM

    from facestream.encoder.facellava.fusion import PREFIX, Fusion, FusionConfig

    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config(config)).state_dict()
        fusion = Fusion(FusionConfig.from_dict(config)).state_dict()
    shapes = {k: tuple(v.shape) for k, v in llm.items()}
    shapes.update({PREFIX + k: tuple(v.shape) for k, v in fusion.items()})
    if config.get("tie_word_embeddings"):
        shapes.pop("lm_head.weight", None)
    return shapes


def _check_layout(config: Mapping[str, Any], tensors: Mapping[str, TensorInfo],
                  lost: set[str], report: Report) -> None:
    """Keys, shapes and dtypes; keys in ``lost`` (their file was reported) are not missing."""
    expected = expected_shapes(config)
    skipped = {k for k in tensors if _INV_FREQ.match(k) or k.startswith(TOWER_PREFIXES)}
    present = {k: t for k, t in tensors.items() if k not in skipped}
    missing = sorted(set(expected) - set(present) - lost)
    unexpected = sorted(set(present) - set(expected))
    for key in list(unexpected):          # a missing and an unexpected key of one shape: renamed
        same_shape = [m for m in missing if expected[m] == present[key].shape]
        match = difflib.get_close_matches(key, same_shape, n=1, cutoff=0.6)
        if match:
            report.problems.append(f"tensor {key} ({present[key].file}) should be named "
                                   f"{match[0]}: rename it, or {_REDOWNLOAD}")
            missing.remove(match[0])
            unexpected.remove(key)
    if missing:
        report.problems.append(f"{len(missing)} tensors are missing ({', '.join(missing[:4])}"
                               f"{' ...' if len(missing) > 4 else ''}): {_REDOWNLOAD}")
    for key in unexpected:
        known = key.startswith(LLM_PREFIXES + FUSION_PREFIXES)
        report.problems.append(f"tensor {key} ({present[key].file}) is not part of "
                               f"{'this config' if known else 'Face-LLaVA'}: "
                               + ("config.json and the weights disagree; " if known else "")
                               + _REDOWNLOAD)
    shaped = [f"{k} {list(present[k].shape)} (config: {list(expected[k])})"
              for k in sorted(set(expected) & set(present)) if present[k].shape != expected[k]]
    if shaped:
        more = " ..." if len(shaped) > 2 else ""
        report.problems.append(f"{len(shaped)} tensor(s) have shapes config.json does not "
                               f"describe: {', '.join(shaped[:2])}{more}: config.json and "
                               f"the weights disagree; {_REDOWNLOAD}")
    _check_dtypes(present, report)


def _check_dtypes(tensors: Mapping[str, TensorInfo], report: Report) -> None:
    counts = Counter(t.dtype for t in tensors.values())
    main, _ = counts.most_common(1)[0]
    if main not in FLOAT_DTYPES:
        report.problems.append(f"the weights are {main}, not one of {', '.join(FLOAT_DTYPES)}: "
                               "use the released fp16 checkpoint, not a quantized export")
        return
    for key, info in sorted(tensors.items()):
        if info.dtype != main:
            report.problems.append(f"tensor {key} ({info.file}) is {info.dtype} while the "
                                   f"others are {main}: {_REDOWNLOAD}")
    report.notes.append(f"dtype: {main}")


# ---- tokenizer and towers ---------------------------------------------------------------

def _check_tokenizer(path: Path, config: Mapping[str, Any], report: Report) -> None:
    from facestream.encoder.facellava.tokenizer import MODEL_FILE, SentencePieceTokenizer

    if (path / MODEL_FILE).is_file():
        try:
            size = len(SentencePieceTokenizer.from_dir(path))
        except AssetError as exc:
            report.problems.append(f"tokenizer: {exc}")
            return
        if size > config["vocab_size"]:
            report.problems.append(f"{MODEL_FILE} holds {size} tokens but vocab_size is "
                                   f"{config['vocab_size']}: the tokenizer belongs to another "
                                   f"model; {_REDOWNLOAD}")
            return
        report.notes.append(f"tokenizer: {MODEL_FILE} ({size} tokens, sentencepiece)")
    elif (path / "tokenizer.json").is_file():
        report.notes.append("tokenizer: tokenizer.json (fast)")
    else:
        report.problems.append(f"{path} has no tokenizer ({MODEL_FILE} or tokenizer.json): "
                               f"download {MODEL_FILE} from the checkpoint")


def _check_tower(path: Path, config: Mapping[str, Any], kind: str,
                 explicit: str | Path | None, report: Report) -> None:
    option = f"--{kind}-tower"
    name = explicit if explicit not in (None, "") else config.get(f"mm_{kind}_tower")
    if name is None:
        return
    tower = Path(name).expanduser()
    what = "LanguageBind/LanguageBind_" + ("Image" if kind == "image" else "Video_merge")
    if not tower.is_dir():
        report.problems.append(f"{kind} tower {str(name)!r} is not a local directory: download "
                               f"{what} and pass {option} DIR (setting {TOWER_SETTINGS[kind]})")
        return
    import torch

    from facestream.encoder.facellava.towers import VISION_PREFIX, TowerConfig, VisionTower

    try:
        tower_config = TowerConfig.from_dict(json.loads((tower / "config.json").read_text()),
                                             kind=kind, source=str(tower / "config.json"))
    except (OSError, ValueError, ConfigError) as exc:
        report.problems.append(f"{kind} tower {tower}: config.json unusable ({exc}): "
                               f"download {what} again")
        return
    weights = next((tower / n for n in _TOWER_WEIGHTS if (tower / n).is_file()), None)
    if weights is None:
        report.problems.append(f"{kind} tower {tower} has no weights: download {what} again")
        return
    files = [weights]
    if weights.name.endswith(".index.json"):
        try:
            files = [tower / s for s in dict.fromkeys(
                json.loads(weights.read_text())["weight_map"].values())]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.problems.append(f"{kind} tower index {weights} unreadable ({exc}): "
                                   f"download {what} again")
            return
    found: dict[str, TensorInfo] = {}
    for file in files:
        try:
            found.update(read_header(file) if file.is_file() else {})
        except AssetError as exc:
            report.problems.append(f"{kind} tower: {exc}: download {what} again")
            return
        if not file.is_file():
            report.problems.append(f"{kind} tower shard {file} is missing: download {what} again")
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in VisionTower(tower_config).state_dict().items()}
    vision = {k: v for k, v in found.items()
              if k.startswith(VISION_PREFIX) and not k.endswith("position_ids")}
    wrong = sorted(set(wanted) ^ set(vision)) + sorted(
        k for k in set(wanted) & set(vision) if vision[k].shape != wanted[k])
    if wrong:
        report.problems.append(f"{kind} tower {tower}: {len(wrong)} vision tensors missing, "
                               f"extra or mis-shaped ({', '.join(wrong[:3])}): download "
                               f"{what} again")
    elif tower_config.hidden_size != config["mm_hidden_size"]:
        report.problems.append(f"{kind} tower {tower} is {tower_config.hidden_size} wide, the "
                               f"checkpoint's mm_hidden_size is {config['mm_hidden_size']}: "
                               f"pass {what}")
    else:
        report.notes.append(f"{kind} tower: {tower} ({tower_config.num_hidden_layers} layers, "
                            f"width {tower_config.hidden_size})")
