"""Load the released Face-LLaVA checkpoint directory, every tensor accounted for.

The release (``chaubeyG/FaceLLaVA``, non-commercial licence: users download it themselves)
is a LLaVA-LLaMA directory: ``config.json`` (``model_type`` "llava", architectures
``LlavaLlamaForCausalLM``; Video-LLaVA-style forks also write "llava_llama"), weights as one
file or a sharded ``*.index.json`` set of ``.safetensors`` or ``.bin`` files, and tokenizer
files.  The two LanguageBind towers are separate directories, named in the config by hub id
(``mm_image_tower``, ``mm_video_tower``); facestream never downloads, so they must be local.

Every key of the weights is routed to exactly one place, or the load fails:

* ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*``, ``lm_head.*`` -> a
  transformers ``LlamaForCausalLM`` built from the config's LLaMA fields;
* ``model.mm_projector.*``, ``model.landmarks_projector.*``,
  ``model.global_landmarks_projector.*``, ``model.landmarks_cross_attn.*`` -> the fusion
  stage (``build_fusion``, strict, the unused ``ln`` included);
* explained and skipped: ``model.layers.N.self_attn.rotary_emb.inv_freq`` (a buffer older
  transformers saved; recomputed from the config) and ``model.image_tower.*`` /
  ``model.video_tower.*`` (frozen LanguageBind copies some LLaVA forks save inside the
  checkpoint; the towers load from their own directories instead);
* anything else -> ``AssetError`` listing the keys; so does any missing or mis-shaped one.

Loading is blocking and reads everything into memory once (``.bin`` through
``torch.load(weights_only=True, mmap=True)``).  No network access.  The tokenizer is the
reference's slow sentencepiece one, read from ``tokenizer.model`` with the ``sentencepiece``
library (``facestream.encoder.facellava.tokenizer``); a directory with only a fast
``tokenizer.json`` is read by transformers with ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from facestream.encoder.facellava.fusion import (
    GRIDS,
    PREFIX,
    Fusion,
    build_fusion,
    key_listing,
    key_mismatch,
)
from facestream.encoder.facellava.tokenizer import MODEL_FILE, SentencePieceTokenizer
from facestream.encoder.facellava.vision import VisionPath
from facestream.errors import AssetError, ConfigError

MODEL_TYPES = ("llava", "llava_llama")
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors",
                "pytorch_model.bin.index.json", "pytorch_model.bin")
FUSION_MODULES = ("mm_projector", "landmarks_projector", "global_landmarks_projector",
                  "landmarks_cross_attn")
FUSION_PREFIXES = tuple(f"{PREFIX}{m}." for m in FUSION_MODULES)
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")
TOWER_PREFIXES = ("model.image_tower.", "model.video_tower.")
TOWER_SETTINGS = {"image": "facellava_image_tower", "video": "facellava_video_tower"}
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# What the towers use when config.json lacks mm_vision_select_layer / _feature: the released
# training script's values (the reference itself requires the first and defaults the second).
SELECT_LAYER = -2
SELECT_FEATURE = "patch"
_INV_FREQ = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
_HINT = ("expected the released Face-LLaVA checkpoint directory (config.json, weights, "
         "tokenizer), e.g. a local download of chaubeyG/FaceLLaVA")


@dataclass(frozen=True, eq=False)
class FaceLLaVA:
    """A loaded checkpoint.  Modules are in eval mode with gradients off; ``llm`` is None
    when loaded with ``load_llm=False`` (the tokenizer is always loaded), a tower is None when the
    config names none.  The modules are shared, not copied, by ``vision_path``."""

    path: Path
    config: Mapping[str, Any]          # config.json, read-only
    fusion: Fusion
    image_tower: nn.Module | None
    video_tower: nn.Module | None
    llm: nn.Module | None              # transformers LlamaForCausalLM
    tokenizer: Any | None              # SentencePieceTokenizer or a transformers tokenizer

    def vision_path(self, kind: str) -> VisionPath:
        """The ``VisionPath`` for "image" or "video" over this checkpoint's modules."""
        if kind not in TOWER_SETTINGS:
            raise ConfigError(f"vision path kind={kind!r}: expected image or video")
        tower = self.image_tower if kind == "image" else self.video_tower
        if tower is None:
            raise AssetError(f"{self.path}: no {kind} tower loaded (config.json names none); "
                             f"pass {kind}_tower= (setting {TOWER_SETTINGS[kind]})")
        return VisionPath(tower, self.fusion, kind=kind)


def load_facellava(checkpoint_dir: str | Path, *, image_tower: str | Path | None = None,
                   video_tower: str | Path | None = None,
                   dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu",
                   quantization: str | None = None, load_llm: bool = True,
                   grid: str = "reference") -> FaceLLaVA:
    """Load a released Face-LLaVA checkpoint and its towers from local paths.

    ``image_tower`` / ``video_tower`` (None or "": not given, as the settings
    ``facellava_image_tower`` / ``facellava_video_tower`` default) fall back to the config's
    ``mm_image_tower`` / ``mm_video_tower``; a name there that is not a local directory (the
    release has hub ids) raises ``AssetError`` asking for the local path.  ``dtype`` is
    float16, bfloat16 or float32 (tests).  ``quantization="nf4"`` loads the LLM's linear
    layers in 4-bit NF4 through bitsandbytes (towers and fusion stay in ``dtype``).
    ``load_llm=False`` loads only the vision side (the LLM keys are still checked by name).
    ``grid`` is the "masked" cross-attention's patch grid (``fusion.region_bias``).
    Blocking; raises ``AssetError`` for anything wrong with the files and ``ConfigError``
    for bad arguments."""
    path = Path(checkpoint_dir).expanduser()
    if dtype not in DTYPES:
        raise ConfigError(f"Face-LLaVA dtype={dtype}: expected float16, bfloat16 or float32")
    if grid not in GRIDS:
        raise ConfigError(f"Face-LLaVA grid={grid!r}: expected one of {', '.join(GRIDS)}")
    if quantization not in (None, "nf4"):
        raise ConfigError(f"Face-LLaVA quantization={quantization!r}: expected None or 'nf4'")
    if quantization == "nf4" and load_llm and importlib.util.find_spec("bitsandbytes") is None:
        raise AssetError("bitsandbytes not installed; install it or use dtype fp16")
    config = _read_config(path)
    tower_dirs = {kind: _tower_dir(path, config, kind, explicit)
                  for kind, explicit in (("image", image_tower), ("video", video_tower))}
    files = weight_files(path)

    def wanted(key: str) -> bool:
        return key.startswith(FUSION_PREFIXES) or (load_llm and key.startswith(LLM_PREFIXES))

    tensors, all_keys = read_tensors(files, wanted)
    llm_keys, fusion_keys = _route(path, all_keys)
    try:
        fusion = build_fusion({k: tensors[k] for k in fusion_keys}, config, dtype=dtype,
                              device=device, grid=grid)
    except ConfigError as exc:
        raise AssetError(f"{path / 'config.json'}: {exc}") from None
    except AssetError as exc:
        raise AssetError(f"{path}: {exc}") from None
    llm = None
    if load_llm:
        llm = _load_llm(path, config, {k: tensors[k] for k in llm_keys}, dtype=dtype,
                        device=device, quantization=quantization)
    tokenizer = _load_tokenizer(path)
    towers = {kind: _load_tower(config, kind, tower_dir, dtype=dtype, device=device)
              for kind, tower_dir in tower_dirs.items()}
    return FaceLLaVA(path=path, config=MappingProxyType(config), fusion=fusion,
                     image_tower=towers["image"], video_tower=towers["video"], llm=llm,
                     tokenizer=tokenizer)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise AssetError(f"Face-LLaVA checkpoint {path} is not a directory; {_HINT}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AssetError(f"Face-LLaVA checkpoint {path} has no config.json; {_HINT}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"{config_file} is not readable JSON ({exc}); {_HINT}") from None
    if not isinstance(config, dict) or config.get("model_type") not in MODEL_TYPES:
        found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise AssetError(f"{config_file}: model_type {found!r} is not a LLaVA-LLaMA model "
                         f"({' or '.join(MODEL_TYPES)}); {_HINT}")
    return config


def weight_files(path: Path) -> list[Path]:
    """The weight files to read, shards in index order; AssetError if none or one is absent."""
    first = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
    if first is None:
        raise AssetError(f"Face-LLaVA checkpoint {path} has no weights (expected one of "
                         f"{', '.join(WEIGHT_FILES)}); {_HINT}")
    if not first.name.endswith(".index.json"):
        return [first]
    try:
        weight_map = json.loads(first.read_text())["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AssetError(f"{first} is not a weight index ({exc}); expected JSON with a "
                         "'weight_map'; download the checkpoint again") from None
    absent = [s for s in shards if not (path / s).is_file()]
    if absent:
        raise AssetError(f"{first} lists shards that are missing: {', '.join(absent)}; "
                         "download the checkpoint again")
    return [path / s for s in shards]


def read_tensors(files: list[Path], wanted: Callable[[str], bool]
                 ) -> tuple[dict[str, Tensor], list[str]]:
    """(the wanted tensors, every key in the files).  Safetensors are read key by key, so
    unwanted tensors (the LLM, with ``load_llm=False``) are never materialised."""
    tensors: dict[str, Tensor] = {}
    keys: list[str] = []
    for file in files:
        try:
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as f:
                    names = list(f.keys())
                    tensors.update({k: f.get_tensor(k) for k in names if wanted(k)})
            else:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                names = list(state)
                tensors.update({k: v for k, v in state.items() if wanted(k)})
        except Exception as exc:  # noqa: BLE001 -- safetensors and torch.load raise untyped errors
            raise AssetError(f"Face-LLaVA weights {file} are unreadable "
                             f"({str(exc).splitlines()[0]}); download the checkpoint "
                             "again") from None
        keys += names
    return tensors, keys


def _route(path: Path, keys: list[str]) -> tuple[list[str], list[str]]:
    """Split the checkpoint's keys into (LLM, fusion); AssetError for any other key that is
    not one of the explained, skipped kinds."""
    llm, fusion, unknown = [], [], []
    for key in keys:
        if key.startswith(FUSION_PREFIXES):
            fusion.append(key)
        elif _INV_FREQ.match(key) or key.startswith(TOWER_PREFIXES):
            continue
        elif key.startswith(LLM_PREFIXES):
            llm.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise AssetError(f"Face-LLaVA checkpoint {path} has unexpected tensors: "
                         f"{key_listing(sorted(unknown))}; expected only LLaMA, projector and "
                         "landmark keys")
    return llm, fusion


def _tower_dir(path: Path, config: Mapping[str, Any], kind: str,
               explicit: str | Path | None) -> Path | None:
    """The local tower directory to load (None: the config names no such tower)."""
    field = f"mm_{kind}_tower"
    named = explicit if explicit not in (None, "") else config.get(field)
    if named is None:
        return None
    tower_dir = Path(named).expanduser()
    if not tower_dir.is_dir():
        source = "given" if explicit else f"{field} in {path / 'config.json'}"
        raise AssetError(f"{kind} tower {str(named)!r} ({source}) is not a local directory; "
                         f"download it and pass its local path ({kind}_tower=, setting "
                         f"{TOWER_SETTINGS[kind]})")
    return tower_dir


def _load_tower(config: Mapping[str, Any], kind: str, tower_dir: Path | None, *,
                dtype: torch.dtype, device: str | torch.device) -> nn.Module | None:
    from facestream.encoder.facellava.towers import load_tower

    if tower_dir is None:
        return None
    try:
        select_layer = int(config.get("mm_vision_select_layer", SELECT_LAYER))
    except (TypeError, ValueError):
        raise AssetError(f"config.json mm_vision_select_layer "
                         f"{config.get('mm_vision_select_layer')!r}: expected an integer such "
                         "as -2") from None
    select_feature = config.get("mm_vision_select_feature", SELECT_FEATURE)
    try:
        tower = load_tower(tower_dir, kind=kind, dtype=dtype, device=device,
                           select_layer=select_layer, select_feature=select_feature)
    except ConfigError as exc:
        raise AssetError(f"{kind} tower {tower_dir} with the checkpoint's config: {exc}") from None
    if tower.hidden_size != config["mm_hidden_size"]:
        raise AssetError(f"{kind} tower {tower_dir} has width {tower.hidden_size}, the "
                         f"checkpoint's mm_hidden_size is {config['mm_hidden_size']}; pass the "
                         "tower the checkpoint was trained with")
    return tower


def llama_config(config: Mapping[str, Any]):
    """A transformers ``LlamaConfig`` from a LLaVA-LLaMA config.json's LLaMA fields.

    Legacy rope fields are mapped: ``rope_theta`` (default 10000, LLaMA-2's) and
    ``rope_scaling`` ({"type"|"rope_type": ..., "factor": ...}) become ``rope_parameters``."""
    from transformers import LlamaConfig

    required = ("hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "vocab_size")
    missing = [k for k in required if config.get(k) is None]
    if missing:
        raise ConfigError(f"config lacks {', '.join(missing)}")
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        rope = {"rope_type": "default", "rope_theta": float(config.get("rope_theta", 10000.0))}
        scaling = config.get("rope_scaling")
        if scaling:
            rope.update({k: v for k, v in scaling.items() if k != "type"})
            rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    heads = config["num_attention_heads"]
    return LlamaConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim"), hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6), rope_parameters=rope,
        attention_bias=config.get("attention_bias", False),
        mlp_bias=config.get("mlp_bias", False),
        tie_word_embeddings=config.get("tie_word_embeddings", False),
        bos_token_id=config.get("bos_token_id", 1), eos_token_id=config.get("eos_token_id", 2),
        pad_token_id=config.get("pad_token_id"), architectures=["LlamaForCausalLM"])


def _load_llm(path: Path, config: Mapping[str, Any], state_dict: dict[str, Tensor], *,
              dtype: torch.dtype, device: str | torch.device, quantization: str | None):
    from transformers import BitsAndBytesConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        llama = llama_config(config)
    except ConfigError as exc:
        raise AssetError(f"{path / 'config.json'}: {exc}; {_HINT}") from None
    with torch.device("meta"):
        expected = LlamaForCausalLM(llama).state_dict()
    if llama.tie_word_embeddings and "lm_head.weight" not in state_dict:
        expected.pop("lm_head.weight", None)       # tied: the embedding matrix serves
    problems = key_mismatch({k: v.shape for k, v in expected.items()}, state_dict)
    if problems:
        raise AssetError(f"Face-LLaVA checkpoint {path}: LLaMA weights do not match "
                         f"config.json ({problems}); {_HINT}")
    options: dict[str, Any] = {"dtype": dtype, "device_map": {"": str(device)}}
    if quantization == "nf4":
        options["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    model = LlamaForCausalLM.from_pretrained(None, config=llama, state_dict=state_dict,
                                             **options)
    return model.eval().requires_grad_(False)


def _load_tokenizer(path: Path):
    """The reference's tokenizer: the slow sentencepiece one when ``tokenizer.model`` is there
    (``use_fast=False`` reads only that file, so it wins over a ``tokenizer.json`` beside
    it); otherwise the fast ``tokenizer.json`` through transformers."""
    if (path / MODEL_FILE).is_file():
        return SentencePieceTokenizer.from_dir(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise AssetError(f"Face-LLaVA checkpoint {path}: tokenizer cannot be loaded "
                         f"({str(exc).splitlines()[0]}); expected the released "
                         f"{MODEL_FILE} (or a tokenizer.json)") from None
