"""Face-LLaVA's fusion stage: projector, face-region landmark projector, cross-attention.

This is the part of the vision path between the frozen LanguageBind towers and the LLM.  It
reproduces the public Face-LLaVA code (``ihp-lab/Face-LLaVA``,
``facellava/model/multimodal_projector/builder.py`` and ``facellava/model/llava_arch.py``)
with facestream's own modules whose parameter names match the released checkpoint, so the
released ``model.mm_projector.*``, ``model.landmarks_projector.*``,
``model.global_landmarks_projector.*`` and ``model.landmarks_cross_attn.*`` tensors load
strictly.

Python API
----------
``FusionConfig.from_dict(config, *, grid="reference")``
    Reads the released ``config.json`` field names (``mm_hidden_size``, ``hidden_size``,
    ``mm_projector_type``, ``landmarks_projector_type``, ``global_landmarks_projector_type``,
    ``cross_attn_type``, ``use_landmark_tokens``).  Raises ``ConfigError`` for a missing or
    unsupported value.
``Fusion(config)``
    ``forward(features, landmarks=None)``:

    * ``features``: ``[B, T, N, mm_hidden_size]`` tower features, N = 257 (video frames,
      CLS first) or 256 (images, CLS dropped);
    * ``landmarks``: ``[B, T, 136]``, 68 iBUG points per frame as x0, y0, x1, y1, ... in the
      pixel frame of the 256x256 face crop divided by 256 (so 0..1);
    * returns ``[B, T, N, hidden_size]``, or ``[B, T, N + 1, hidden_size]`` when
      ``use_landmark_tokens`` is on (each frame's global landmark token appended after its N
      visual tokens).  With ``landmarks=None`` it is the projector alone, as in the public
      inference script, which never passes landmarks.
``build_fusion(state_dict, config, *, dtype=None, device="cpu", grid="reference")``
    A ``Fusion`` in eval mode with the released tensors loaded strictly: missing,
    unexpected or mis-shaped keys raise ``AssetError`` naming them.
``region_bias(landmarks, *, num_tokens, grid="reference")``
    The "masked" variant's additive attention bias ``[B, T, N, 9]``, exposed for tests and
    inspection.

Modules are stateless between calls and safe to share between threads for inference (no
buffers are rebound in ``forward``).  Everything traces to ONNX opset 17 with a dynamic batch
dimension: no branch depends on tensor values, only on static shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from facestream.errors import AssetError, ConfigError, InputError

NUM_POINTS = 68
LANDMARK_DIM = 2 * NUM_POINTS          # x, y per point
BRANCH_SCALE = 0.1                     # the reference's fixed weight on the attention branch
DEFAULT_HEADS = 8                      # hard-coded in the reference, not in config.json
GRIDS = ("reference", "xy")
CROSS_ATTN_TYPES = ("simple", "masked")
REGION_PROJECTOR = "landmarks_region_projector"
PREFIX = "model."                      # the released keys are model.<module>.<param>

# The nine face regions of the 68 iBUG points, in the reference's order and with its names
# (they are the parameter names under landmarks_projector.region_layers).
REGIONS: tuple[tuple[str, int, int], ...] = (
    ("face", 0, 17), ("eyebrow1", 17, 22), ("eyebrow2", 22, 27), ("nose", 27, 31),
    ("nostril", 31, 36), ("eye1", 36, 42), ("eye2", 42, 48), ("lips", 48, 60),
    ("teeth", 60, 68),
)

_MLP = re.compile(r"^mlp(\d+)x_gelu$")


# What the reference builds when config.json lacks a type field (its getattr defaults).
REFERENCE_DEFAULTS = {"mm_projector_type": "linear", "landmarks_projector_type": "linear",
                      "global_landmarks_projector_type": "linear", "cross_attn_type": "simple"}


@dataclass(frozen=True)
class FusionConfig:
    """The fusion stage's shape and variant; validated on construction."""

    mm_hidden_size: int                  # tower width (1024 for LanguageBind ViT-L)
    hidden_size: int                     # LLM width (4096 for Vicuna-7B)
    mm_projector_type: str = "mlp2x_gelu"
    landmarks_projector_type: str = REGION_PROJECTOR
    global_landmarks_projector_type: str = "linear"
    cross_attn_type: str = "simple"
    use_landmark_tokens: bool = False    # append each frame's global landmark token
    num_heads: int = DEFAULT_HEADS
    grid: str = "reference"              # "masked" only: patch grid axis order, see region_bias

    def __post_init__(self) -> None:
        for name in ("mm_hidden_size", "hidden_size", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"fusion {name}={value!r}: expected a positive integer")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"fusion hidden_size={self.hidden_size} is not divisible by "
                              f"num_heads={self.num_heads}; use a multiple of it")
        _mlp_depth("mm_projector_type", self.mm_projector_type)
        if self.landmarks_projector_type != REGION_PROJECTOR:
            _mlp_depth("landmarks_projector_type", self.landmarks_projector_type,
                       also=(REGION_PROJECTOR,))
        _mlp_depth("global_landmarks_projector_type", self.global_landmarks_projector_type)
        if self.cross_attn_type not in CROSS_ATTN_TYPES:
            raise ConfigError(f"cross_attn_type={self.cross_attn_type!r}: expected one of "
                              f"{', '.join(CROSS_ATTN_TYPES)}")
        if self.cross_attn_type == "masked" and self.landmarks_projector_type != REGION_PROJECTOR:
            raise ConfigError(f"cross_attn_type='masked' needs landmarks_projector_type="
                              f"{REGION_PROJECTOR!r} (its mask has one column per region), "
                              f"got {self.landmarks_projector_type!r}")
        if self.grid not in GRIDS:
            raise ConfigError(f"fusion grid={self.grid!r}: expected one of {', '.join(GRIDS)}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], *, grid: str = "reference") -> FusionConfig:
        """From a released ``config.json`` mapping.  The four type fields and both sizes are
        required (the released training code writes all of them); ``use_landmark_tokens``
        defaults to off.  ``landmarks_hidden_size``, when present, must be 136.

        Where a type field is missing the reference silently builds its default
        (:data:`REFERENCE_DEFAULTS`: linear projectors, "simple" cross-attention), which cannot
        hold the released mlp2x_gelu / region-projector weights; facestream refuses instead and
        names the default the reference would have assumed."""
        required = ("mm_hidden_size", "hidden_size", "mm_projector_type",
                    "landmarks_projector_type", "global_landmarks_projector_type",
                    "cross_attn_type")
        missing = [k for k in required if config.get(k) is None]
        if missing:
            assumed = [f"{k}={REFERENCE_DEFAULTS[k]!r}" for k in missing if k in REFERENCE_DEFAULTS]
            note = (f" (the reference would assume {', '.join(assumed)})" if assumed else "")
            raise ConfigError(f"Face-LLaVA config lacks {', '.join(missing)}{note}; expected "
                              "the released checkpoint's config.json")
        if config.get("landmarks_hidden_size", LANDMARK_DIM) != LANDMARK_DIM:
            raise ConfigError(f"landmarks_hidden_size={config['landmarks_hidden_size']!r}: "
                              f"expected {LANDMARK_DIM} (68 points, x and y)")
        use_tokens = config.get("use_landmark_tokens") or False
        if not isinstance(use_tokens, bool):
            raise ConfigError(f"use_landmark_tokens={use_tokens!r}: expected true or false")
        return cls(mm_hidden_size=config["mm_hidden_size"], hidden_size=config["hidden_size"],
                   mm_projector_type=config["mm_projector_type"],
                   landmarks_projector_type=config["landmarks_projector_type"],
                   global_landmarks_projector_type=config["global_landmarks_projector_type"],
                   cross_attn_type=config["cross_attn_type"], use_landmark_tokens=use_tokens,
                   grid=grid)


def _mlp_depth(field: str, kind: str, *, also: tuple[str, ...] = ()) -> int:
    """1 for "linear", N for "mlpNx_gelu"; ConfigError for anything else."""
    if kind == "linear":
        return 1
    match = _MLP.match(kind) if isinstance(kind, str) else None
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise ConfigError(f"{field}={kind!r}: expected one of "
                      f"{', '.join(('linear', 'mlp<N>x_gelu', *also))}")


def _mlp(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """The reference's projector shapes: a Linear, or Linear (GELU Linear) * (N - 1) as an
    ``nn.Sequential`` (so its keys are ``0.*``, ``2.*``, ...)."""
    depth = _mlp_depth("projector type", kind)
    if depth == 1:
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class RegionLandmarkProjector(nn.Module):
    """One Linear per face region: ``[B, T, 136] -> [B, T, 9, hidden]``.

    Region r takes its points' coordinates in the input's interleaved order (x_s, y_s, ...,
    x_e-1, y_e-1), which is the flat slice ``[2s:2e]`` of the 136 values."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.region_layers = nn.ModuleDict(
            {name: nn.Linear(2 * (stop - start), hidden_size) for name, start, stop in REGIONS})

    def forward(self, landmarks: Tensor) -> Tensor:
        # landmarks: [B, T, 136] -> 9 x [B, T, hidden] -> [B, T, 9, hidden]
        return torch.stack([self.region_layers[name](landmarks[..., 2 * start:2 * stop])
                            for name, start, stop in REGIONS], dim=2)


def _attend(query: Tensor, key: Tensor, value: Tensor, *, heads: int,
            bias: Tensor | None = None) -> Tensor:
    """Multi-head scaled dot-product attention over the last two axes, no dropout.

    query: [B, T, N, D]; key, value: [B, T, L, D]; bias: [B, T, N, L] added to every head's
    logits before the softmax.  Returns [B, T, N, D]."""
    d_head = query.shape[-1] // heads
    # [B, T, S, D] -> [B, T, H, S, d]
    q, k, v = (x.unflatten(-1, (heads, d_head)).transpose(-2, -3) for x in (query, key, value))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d_head)          # [B, T, H, N, L]
    if bias is not None:
        # The reference adds its float32 mask in place into the (possibly half) logits:
        # the sum is taken in float32 and stored in the logits' dtype.
        scores = (scores.float() + bias.float().unsqueeze(2)).to(scores.dtype)
    out = scores.softmax(dim=-1) @ v                               # [B, T, H, N, d]
    return out.transpose(-2, -3).flatten(-2)                       # [B, T, N, D]


class _PackedAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (packed q/k/v input projection, ``out_proj``)
    and semantics with batch-first inputs, written out so it traces to plain ONNX ops."""

    def __init__(self, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden_size))
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        # query: [B, T, N, D], tokens: [B, T, L, D] -> [B, T, N, D]
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        out = _attend(nn.functional.linear(query, w_q, b_q), nn.functional.linear(tokens, w_k, b_k),
                      nn.functional.linear(tokens, w_v, b_v), heads=self.heads)
        return self.out_proj(out)


class _SimpleCore(nn.Module):
    """"simple": ``LayerNorm(visual + MHA(visual, tokens, tokens))``."""

    def __init__(self, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.attn = _PackedAttention(hidden_size, heads)
        self.ln = nn.LayerNorm(hidden_size)

    def forward(self, visual: Tensor, tokens: Tensor, bias: Tensor | None) -> Tensor:
        return self.ln(visual + self.attn(visual, tokens))


class _MaskedCore(nn.Module):
    """"masked": separate q/k/v projections, the region bias on the logits, no output
    projection, then ``LayerNorm(visual + attention)``."""

    def __init__(self, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.ln = nn.LayerNorm(hidden_size)

    def forward(self, visual: Tensor, tokens: Tensor, bias: Tensor | None) -> Tensor:
        out = _attend(self.q_proj(visual), self.k_proj(tokens), self.v_proj(tokens),
                      heads=self.heads, bias=bias)
        return self.ln(visual + out)


class FaceRegionCrossAttention(nn.Module):
    """Face-Region Guided Cross-Attention, per frame, at the LLM width.

    ``out = visual + 0.1 * linear_proj(core(visual, tokens))`` where ``core`` is the
    "simple" or "masked" attention above.  ``ln`` is the reference's second LayerNorm: its
    use is commented out there, but it is in the released state dict, so it is kept (and
    loaded) and never applied."""

    def __init__(self, hidden_size: int, *, heads: int, masked: bool, grid: str) -> None:
        super().__init__()
        self.masked = masked
        self.grid = grid
        self.cross_attn = (_MaskedCore if masked else _SimpleCore)(hidden_size, heads)
        self.linear_proj = nn.Linear(hidden_size, hidden_size)
        self.ln = nn.LayerNorm(hidden_size)

    def forward(self, visual: Tensor, tokens: Tensor, landmarks: Tensor) -> Tensor:
        # visual: [B, T, N, D], tokens: [B, T, L, D], landmarks: [B, T, 136] -> [B, T, N, D]
        bias = (region_bias(landmarks, num_tokens=visual.shape[2], grid=self.grid)
                if self.masked else None)
        return visual + BRANCH_SCALE * self.linear_proj(self.cross_attn(visual, tokens, bias))


def region_bias(landmarks: Tensor, *, num_tokens: int, grid: str = "reference") -> Tensor:
    """The "masked" variant's attention bias: ``[B, T, 136] -> [B, T, num_tokens, 9]`` float32.

    For each region the centroid of its points; for each patch its centre on a G x G grid
    over the unit square (G = 16 for 256/257 tokens; centres at (k + 0.5) / G); the bias is
    ``softmax(-euclidean distance)`` over the nine regions.  With ``num_tokens = G*G + 1`` the
    first row is the CLS token, whose distances the reference sets to 0 (bias 1/9 each);
    with ``G*G`` tokens (images, CLS dropped) there is no such row.

    ``grid="reference"`` reproduces the public code: it builds patch k = i*G + j (row i,
    column j, the ViT's row-major order) at the point (centre_i, centre_j), i.e. (row, col),
    and compares it with landmarks given as (x, y); the released weights were trained with
    that transposed grid.  ``grid="xy"`` uses the axis-consistent (centre_j, centre_i)."""
    side = math.isqrt(num_tokens)
    has_cls = side * side != num_tokens
    if has_cls:
        side = math.isqrt(num_tokens - 1)
        if side * side != num_tokens - 1:
            raise InputError(f"region_bias: {num_tokens} tokens per frame, expected G*G or "
                             "G*G + 1 (256 or 257 for the LanguageBind towers)")
    if grid not in GRIDS:
        raise ConfigError(f"region_bias: grid={grid!r}, expected one of {', '.join(GRIDS)}")
    # Centroids are averaged in the landmarks' dtype and then kept in float32, as the
    # reference stores them into a float32 buffer.
    points = landmarks.unflatten(-1, (NUM_POINTS, 2))                         # [B, T, 68, 2]
    centroids = torch.stack([points[..., start:stop, :].mean(dim=-2)
                             for _, start, stop in REGIONS], dim=-2).float()  # [B, T, 9, 2]
    centres = (torch.arange(side, dtype=torch.float32, device=landmarks.device) + 0.5) / side
    rows = centres.repeat_interleave(side)                                    # [G*G]: i
    cols = centres.repeat(side)                                               # [G*G]: j
    # Which patch coordinate is compared with x and which with y: see the docstring.
    first, second = (rows, cols) if grid == "reference" else (cols, rows)
    patches = torch.stack([first, second], dim=-1)                            # [G*G, 2]
    delta = patches[:, None, :] - centroids[..., None, :, :]                  # [B, T, G*G, 9, 2]
    distance = delta.square().sum(dim=-1).sqrt()                              # [B, T, G*G, 9]
    if has_cls:
        distance = nn.functional.pad(distance, (0, 0, 1, 0))   # CLS row of zeros first
    return (-distance).softmax(dim=-1)


class Fusion(nn.Module):
    """Projector + landmark projectors + cross-attention; see the module docstring for the
    ``forward`` contract.  Attribute names are the released ``model.*`` module names."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.mm_projector = _mlp(config.mm_projector_type, config.mm_hidden_size, hidden)
        self.landmarks_projector = (
            RegionLandmarkProjector(hidden) if config.landmarks_projector_type == REGION_PROJECTOR
            else _mlp(config.landmarks_projector_type, LANDMARK_DIM, hidden))
        self.global_landmarks_projector = _mlp(config.global_landmarks_projector_type,
                                               LANDMARK_DIM, hidden)
        self.landmarks_cross_attn = FaceRegionCrossAttention(
            hidden, heads=config.num_heads, masked=config.cross_attn_type == "masked",
            grid=config.grid)

    def tokens_per_frame(self, num_tokens: int, *, with_landmarks: bool = True) -> int:
        """Output tokens per frame for ``num_tokens`` tower tokens per frame."""
        return num_tokens + int(with_landmarks and self.config.use_landmark_tokens)

    def forward(self, features: Tensor, landmarks: Tensor | None = None) -> Tensor:
        # features: [B, T, N, C]
        if features.dim() != 4 or features.shape[-1] != self.config.mm_hidden_size:
            raise InputError(f"Fusion: features {tuple(features.shape)}, expected "
                             f"[B, T, N, {self.config.mm_hidden_size}]")
        visual = self.mm_projector(features)                                 # [B, T, N, D]
        if landmarks is None:
            return visual
        if landmarks.shape[-1] != LANDMARK_DIM or landmarks.shape[:2] != features.shape[:2]:
            raise InputError(f"Fusion: landmarks {tuple(landmarks.shape)}, expected "
                             f"[{features.shape[0]}, {features.shape[1]}, {LANDMARK_DIM}]")
        landmarks = landmarks.to(visual.dtype)
        regions = self.landmarks_projector(landmarks)        # [B, T, 9, D] or [B, T, D]
        if regions.dim() == 3:
            regions = regions.unsqueeze(2)                   # linear/MLP kind: one token
        global_token = self.global_landmarks_projector(landmarks).unsqueeze(2)   # [B, T, 1, D]
        out = self.landmarks_cross_attn(visual, regions + global_token, landmarks)
        if self.config.use_landmark_tokens:
            out = torch.cat([out, global_token], dim=2)                          # [B, T, N+1, D]
        return out


def build_fusion(state_dict: Mapping[str, Tensor], config: Mapping[str, Any], *,
                 dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                 grid: str = "reference") -> Fusion:
    """A ``Fusion`` in eval mode, no gradients, from the released keys.

    ``state_dict`` must hold exactly the fusion's tensors under their released names
    (``model.mm_projector.*``, ``model.landmarks_projector.*``,
    ``model.global_landmarks_projector.*``, ``model.landmarks_cross_attn.*``, the unused
    ``ln`` included); anything missing, extra or of the wrong shape raises ``AssetError``
    listing the keys.  ``dtype=None`` keeps the tensors' own dtype.  The tensors are moved
    (and cast), not copied when already right; the caller should not modify them after."""
    fusion_config = FusionConfig.from_dict(config, grid=grid)
    with torch.device("meta"):
        fusion = Fusion(fusion_config)
    problems = key_mismatch({PREFIX + name: p.shape for name, p in fusion.state_dict().items()},
                            state_dict)
    if problems:
        raise AssetError(f"Face-LLaVA fusion weights do not match config "
                         f"({fusion_config.cross_attn_type} cross-attention): {problems}; "
                         "expected the released checkpoint's keys")
    fusion.load_state_dict({k[len(PREFIX):]: v for k, v in state_dict.items()},
                           strict=True, assign=True)
    return fusion.to(device=device, dtype=dtype).eval().requires_grad_(False)


def key_mismatch(expected: Mapping[str, torch.Size], tensors: Mapping[str, Tensor]) -> str:
    """"" when ``tensors`` has exactly the ``expected`` keys and shapes, else one line naming
    the missing, unexpected and mis-shaped keys (the first few of each)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mis_shaped = sorted(f"{k} {tuple(tensors[k].shape)} (expected {tuple(expected[k])})"
                        for k in set(expected) & set(tensors)
                        if tuple(tensors[k].shape) != tuple(expected[k]))
    return "; ".join(f"{label}: {key_listing(keys)}" for label, keys in
                     (("missing", missing), ("unexpected", unexpected),
                      ("wrong shape", mis_shaped)) if keys)


def key_listing(keys: list[str], limit: int = 8) -> str:
    """The first ``limit`` keys, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
