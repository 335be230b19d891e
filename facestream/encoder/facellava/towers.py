"""The LanguageBind vision towers Face-LLaVA runs: CLIP ViT-L/14 at 224 px, image and video.

Face-LLaVA (a Video-LLaVA fork) loads ``LanguageBind/LanguageBind_Image`` and
``LanguageBind/LanguageBind_Video_merge`` with LanguageBind's own model classes and keeps only
their ``vision_model``.  This module is facestream's implementation of that vision transformer;
its parameter names are the released checkpoints' ``vision_model.*`` keys, so a tower directory
loads with every vision tensor accounted for.

The transformer, as the reference builds it (pre-LN CLIP encoder):

* embeddings: ``patch_embedding`` (Conv2d, no bias, stride = patch) + ``class_embedding``
  prepended + ``position_embedding`` (one row per token), then ``pre_layrnorm`` (CLIP's
  spelling); no patch dropout at inference;
* each ``encoder.layers.N``: ``x += self_attn(layer_norm1(x))``; ``x += mlp(layer_norm2(x))``
  with ``mlp = fc2(act(fc1(.)))``, ``act`` from ``hidden_act`` (``quick_gelu`` in LanguageBind);
* video only (``add_time_attn``), at the *start* of every layer, before the spatial attention:
  1. unless T == 1, ``x += temporal_embedding[:, :T]`` -- one vector per frame, added to every
     token of that frame (the CLS token included);
  2. ``x += temporal_attn(temporal_layer_norm1(x))`` where the attention runs across the T frames
     separately for each token position: ``(b t) n c -> (b n) t c`` and back.
  There is no temporal MLP in the video tower (LanguageBind left ``temporal_mlp`` /
  ``temporal_layer_norm2`` commented out there) and no attention mask anywhere.

Features are the hidden state after ``num_hidden_layers + 1 + select_layer`` layers
(``select_layer`` = -2: the penultimate layer, 23 of 24).  Only those layers run; the last layer
and ``post_layernorm`` are held so the checkpoint loads strictly, never computed.

* image: pixels ``[B, 3, 224, 224]`` -> ``[B, 256, C]`` (CLS dropped: ``mm_vision_select_feature``
  "patch", the released value) or ``[B, 257, C]`` ("cls_patch": CLS kept);
* video: pixels ``[B, 3, T, 224, 224]`` (the reference's ``b c t h w`` layout, frames folded as
  ``(b t)`` with b outer) -> ``[B, T, 257, C]`` (CLS kept, as Video-LLaVA's video tower returns it
  whatever ``mm_vision_select_feature`` says).
  The reference only ever runs T == ``num_frames`` (8); this module accepts 1 <= T <= num_frames
  and uses the first T temporal embeddings, following the reference's slicing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facestream.errors import AssetError, ConfigError, InputError

TOWER_KINDS = ("image", "video")
SELECT_FEATURES = ("patch", "cls_patch")      # mm_vision_select_feature values
VISION_PREFIX = "vision_model."
# What else a LanguageBind tower directory holds; never loaded (Face-LLaVA keeps only the
# vision model).  Any other non-``vision_model.`` key is ignored as well.
IGNORED_PREFIXES = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
# LanguageBind registers position_ids as a persistent buffer, so checkpoints may carry it.  It is
# derived from the config (0..num_positions-1); it is checked, not loaded.
POSITION_IDS_KEY = "vision_model.embeddings.position_ids"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
_REQUIRED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "image_size", "patch_size")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


_ACTIVATIONS = {"quick_gelu": _quick_gelu, "gelu": _gelu}


@dataclass(frozen=True)
class TowerConfig:
    """One tower's architecture, as its ``config.json`` states it; validated on construction.

    ``num_frames`` is the number of frames the temporal layers were built for (video); an image
    tower has none and keeps 1.  ``select_layer`` indexes the reference's hidden-state list
    (embeddings output first, then one entry per layer), so -2 is the penultimate layer.
    ``select_feature`` ("patch" or "cls_patch") decides whether an image tower keeps the CLS
    token; a video tower always keeps it.
    """

    kind: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    num_frames: int = 1
    select_layer: int = -2
    select_feature: str = "patch"

    def __post_init__(self) -> None:
        if self.kind not in TOWER_KINDS:
            raise ConfigError(f"tower kind must be one of {TOWER_KINDS}, got {self.kind!r}")
        for name in (*_REQUIRED_FIELDS, "num_channels", "num_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"tower {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"tower hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"tower image_size {self.image_size} is not a multiple of "
                              f"patch_size {self.patch_size}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"tower hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                              f"got {self.hidden_act!r}")
        if not self.layer_norm_eps > 0:
            raise ConfigError(f"tower layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if self.kind == "image" and self.num_frames != 1:
            raise ConfigError(f"an image tower has no frames; num_frames must be 1, "
                              f"got {self.num_frames}")
        if self.select_feature not in SELECT_FEATURES:
            raise ConfigError(f"mm_vision_select_feature {self.select_feature!r}: expected one "
                              f"of {', '.join(SELECT_FEATURES)}")
        top = self.num_hidden_layers
        if not -(top + 1) <= self.select_layer <= top:
            raise ConfigError(f"select_layer must lie in [{-(top + 1)}, {top}] for "
                              f"{top} layers, got {self.select_layer}")

    @property
    def grid(self) -> int:
        """Patches per side (16 for ViT-L/14 at 224 px)."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per frame the transformer sees: patches + CLS (257)."""
        return self.grid * self.grid + 1

    @property
    def num_tokens(self) -> int:
        """Tokens per frame in the output: 256 (image, "patch": CLS dropped) or 257 (video,
        or an image with "cls_patch": CLS kept)."""
        return self.num_positions - (self.kind == "image" and self.select_feature == "patch")

    @property
    def layers_run(self) -> int:
        """How many encoder layers :class:`VisionTower` computes (23 of 24 for -2)."""
        return self.select_layer % (self.num_hidden_layers + 1)

    @classmethod
    def from_dict(cls, config: Mapping, *, kind: str, select_layer: int = -2,
                  select_feature: str = "patch", source: str = "config.json") -> TowerConfig:
        """Read a LanguageBind ``config.json`` (its ``vision_config`` object).

        A ``vision_config_dict`` entry, which older LanguageBind configs carry, overrides
        ``vision_config`` key by key, as LanguageBind's config class does.  The six size fields
        are required (ConfigError naming the first one missing); ``num_channels``,
        ``hidden_act``, ``layer_norm_eps``, ``add_time_attn`` and ``num_frames`` take
        LanguageBind's defaults (3, quick_gelu, 1e-5, false, 1).  ``add_time_attn`` must be true
        for ``kind="video"`` and false for ``kind="image"``.
        """
        vision = dict(config.get("vision_config") or {})
        vision.update(config.get("vision_config_dict") or {})
        if not vision:
            raise ConfigError(f"{source} has no 'vision_config' object; expected a LanguageBind "
                              "tower config (LanguageBind_Image or LanguageBind_Video_merge)")
        for name in _REQUIRED_FIELDS:
            if name not in vision:
                raise ConfigError(f"{source} vision_config lacks '{name}'; expected a complete "
                                  "LanguageBind tower config")
        temporal = bool(vision.get("add_time_attn", False))
        if temporal != (kind == "video"):
            raise ConfigError(f"{source} has add_time_attn={temporal}, which does not fit a "
                              f"{kind!r} tower; point the {kind} tower at the other directory")
        return cls(kind=kind,
                   hidden_size=vision["hidden_size"],
                   intermediate_size=vision["intermediate_size"],
                   num_hidden_layers=vision["num_hidden_layers"],
                   num_attention_heads=vision["num_attention_heads"],
                   image_size=vision["image_size"],
                   patch_size=vision["patch_size"],
                   num_channels=vision.get("num_channels", 3),
                   hidden_act=vision.get("hidden_act", "quick_gelu"),
                   layer_norm_eps=vision.get("layer_norm_eps", 1e-5),
                   num_frames=vision.get("num_frames", 1) if temporal else 1,
                   select_layer=select_layer, select_feature=select_feature)


class _Attention(nn.Module):
    """CLIP multi-head self-attention (biased q/k/v/out projections, scale head_dim**-0.5)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, S, C] -> [N, S, C]
        n, s, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:     # [N, S, C] -> [N, H, S, C/H]
            return t.reshape(n, s, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)),
                                             split(self.v_proj(x)))
        return self.out_proj(out.transpose(1, 2).reshape(n, s, c))


class _Mlp(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.act = _ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _EncoderLayer(nn.Module):
    """One pre-LN layer; with ``temporal`` the LanguageBind frame attention runs first."""

    def __init__(self, config: TowerConfig, *, temporal: bool) -> None:
        super().__init__()
        width, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = _Attention(config)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _Mlp(config)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)
        self.temporal = temporal
        if temporal:
            self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_frames, width))
            self.temporal_attn = _Attention(config)
            self.temporal_layer_norm1 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        # x: [(B T), N, C], frames = T (1 for the image tower)
        if self.temporal:
            bt, n, c = x.shape
            x = x.reshape(bt // frames, frames, n, c)                     # [B, T, N, C]
            if frames != 1:
                x = x + self.temporal_embedding[:, :frames, None, :]      # [1, T, 1, C]
            across = x.transpose(1, 2).reshape(-1, frames, c)             # [(B N), T, C]
            across = self.temporal_attn(self.temporal_layer_norm1(across))
            x = x + across.reshape(-1, n, frames, c).transpose(1, 2)      # [B, T, N, C]
            x = x.reshape(bt, n, c)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(config.num_channels, width, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_positions, width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [M, 3, H, W] -> [M, 1 + (H/p)(W/p), C]
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [M, P, C]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)       # [M, 1, C]
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class _Encoder(nn.Module):
    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        temporal = config.kind == "video"
        self.layers = nn.ModuleList(_EncoderLayer(config, temporal=temporal)
                                    for _ in range(config.num_hidden_layers))


class _VisionTransformer(nn.Module):
    """Named as LanguageBind's ``CLIPVisionTransformer`` so the state dict keys match."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = _Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class VisionTower(nn.Module):
    """A LanguageBind vision tower returning Face-LLaVA's selected-layer features.

    ``forward`` is pure and thread-safe for concurrent inference (no state is written); it
    computes in the tower's dtype (pixels are cast to it) and returns that dtype.  Shapes are
    checked once at entry (InputError); the layout contract is in the module docstring.
    """

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = _VisionTransformer(config)
        self.num_tokens = config.num_tokens
        self.hidden_size = config.hidden_size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        side, channels = cfg.image_size, cfg.num_channels
        if cfg.kind == "image":
            # pixels: [B, 3, H, W]
            if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (channels, side, side):
                raise InputError(f"image tower expects pixels [B, {channels}, {side}, {side}], "
                                 f"got {list(pixels.shape)}; preprocess with clip_pixels")
            frames = 1
            flat = pixels
        else:
            # pixels: [B, 3, T, H, W]
            if (pixels.dim() != 5 or pixels.shape[1] != channels
                    or tuple(pixels.shape[3:]) != (side, side)):
                raise InputError(f"video tower expects pixels [B, {channels}, T, {side}, {side}], "
                                 f"got {list(pixels.shape)}; stack clip_pixels frames on dim 2")
            frames = pixels.shape[2]
            if not 1 <= frames <= cfg.num_frames:
                raise InputError(f"video tower takes 1..{cfg.num_frames} frames, got {frames}; "
                                 "sample the window with uniform_indices")
            flat = pixels.transpose(1, 2).flatten(0, 1)                  # [(B T), 3, H, W]
        vm = self.vision_model
        weight = vm.embeddings.patch_embedding.weight
        x = vm.pre_layrnorm(vm.embeddings(flat.to(weight.dtype)))       # [(B T), 257, C]
        for layer in vm.encoder.layers[:cfg.layers_run]:
            x = layer(x, frames)
        if cfg.kind == "image":
            return x[:, 1:] if cfg.select_feature == "patch" else x     # [B, 256 | 257, C]
        return x.reshape(-1, frames, x.shape[1], x.shape[2])             # [B, T, 257, C]


def _read_vision_tensors(path: Path, weights: Path) -> dict[str, torch.Tensor]:
    """The ``vision_model.*`` tensors of one weights file or sharded index, nothing else."""
    if weights.name.endswith(".index.json"):
        try:
            weight_map = json.loads(weights.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AssetError(f"vision tower index {weights} is unreadable ({exc}); expected a "
                             "JSON object with a 'weight_map'; fetch the tower again") from None
        shards = sorted({f for k, f in weight_map.items() if k.startswith(VISION_PREFIX)})
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_vision_tensors(path, path / shard))
        return tensors
    if not weights.is_file():
        raise AssetError(f"vision tower shard {weights} is missing; fetch the tower again")
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(VISION_PREFIX)}
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:    # safetensors and torch.load raise untyped errors on bad files
        raise AssetError(f"vision tower weights {weights} are unreadable "
                         f"({str(exc).splitlines()[0]}); fetch the tower again") from None
    return {k: v for k, v in state.items() if k.startswith(VISION_PREFIX)}


def _listing(keys: set[str]) -> str:
    shown = sorted(keys)[:8]
    more = f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return ", ".join(shown) + more


def load_tower(path: Path, *, kind: str, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", select_layer: int = -2,
               select_feature: str = "patch") -> VisionTower:
    """Load a LanguageBind tower directory (local only: no network) as an eval-mode tower.

    ``path`` holds ``config.json`` and one of ``model.safetensors``, ``pytorch_model.bin`` or a
    sharded ``*.index.json`` with its shards (``.bin`` is read with ``weights_only=True``).
    Every ``vision_model.*`` tensor must match the module: missing, unexpected or mis-shaped
    vision keys raise AssetError listing them.  Keys outside ``vision_model.`` (the text tower
    ``text_model.*``, ``text_projection``, ``visual_projection``, ``logit_scale``) are ignored;
    ``vision_model.embeddings.position_ids`` is checked against the config and dropped.
    ``select_layer`` / ``select_feature`` are the checkpoint's ``mm_vision_select_layer`` /
    ``mm_vision_select_feature`` (see :class:`TowerConfig`).
    Blocking (reads the files); the returned module has ``requires_grad`` off.
    """
    path = Path(path)
    what = f"LanguageBind/LanguageBind_{'Image' if kind == 'image' else 'Video_merge'}"
    if not path.is_dir():
        raise AssetError(f"vision tower directory {path} does not exist; expected a local copy "
                         f"of {what} (config.json + weights)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise AssetError(f"vision tower directory {path} has no config.json; expected a local "
                         f"copy of {what}")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AssetError(f"{config_file} is not readable JSON ({exc}); fetch {what} "
                         "again") from None
    config = TowerConfig.from_dict(raw, kind=kind, select_layer=select_layer,
                                   select_feature=select_feature, source=str(config_file))
    weights = next((path / n for n in _WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise AssetError(f"vision tower directory {path} has no weights; expected one of "
                         f"{', '.join(_WEIGHT_FILES)}")
    tensors = _read_vision_tensors(path, weights)
    position_ids = tensors.pop(POSITION_IDS_KEY, None)
    if position_ids is not None and not torch.equal(
            position_ids.flatten().long(), torch.arange(config.num_positions)):
        raise AssetError(f"{path}: {POSITION_IDS_KEY} is not 0..{config.num_positions - 1}; "
                         "config.json and the weights disagree on image_size/patch_size")
    with torch.device("meta"):
        tower = VisionTower(config)
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    missing = expected.keys() - tensors.keys()
    unexpected = tensors.keys() - expected.keys()
    if missing or unexpected:
        parts = [f"missing {_listing(missing)}" if missing else "",
                 f"unexpected {_listing(unexpected)}" if unexpected else ""]
        raise AssetError(f"{kind} tower {path} does not match LanguageBind's vision model: "
                         f"{'; '.join(p for p in parts if p)}; fetch {what} again")
    wrong = {f"{k} {list(v.shape)} (expected {list(expected[k])})"
             for k, v in tensors.items() if tuple(v.shape) != expected[k]}
    if wrong:
        raise AssetError(f"{kind} tower {path} has mis-shaped tensors: {_listing(wrong)}; "
                         "config.json does not describe these weights")
    tower.load_state_dict(tensors, strict=True, assign=True)
    return tower.to(device=device, dtype=dtype).eval().requires_grad_(False)
