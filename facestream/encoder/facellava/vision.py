"""The whole Face-LLaVA vision path as one module: tower -> projector -> cross-attention.

``VisionPath(tower, fusion, *, kind)`` is what facestream exports (ONNX, TensorRT) and runs
per window: pixels and landmarks in, the visual tokens the LLM sees out, already flattened
in the LLM's order.

* video: pixels ``[B, 3, T, 224, 224]`` (``clip_pixels`` frames stacked on dim 2),
  landmarks ``[B, T, 136]`` -> ``[B, T * P, hidden]``;
* image: pixels ``[B, 3, 224, 224]``, landmarks ``[B, 1, 136]`` or ``[B, 136]`` ->
  ``[B, P, hidden]``;

with P = ``tokens_per_frame`` (257 for video frames, CLS first; 256 for images; one more
when the checkpoint's ``use_landmark_tokens`` is on).  Frame t's tokens are rows
``[t * P, (t + 1) * P)``: the reference prompt has one image placeholder per frame
(``<image> <image> ...``), and frame t's rows replace placeholder t, with the prompt's text
between placeholders left where it is.

``landmarks=None`` runs the projector alone, as the public inference script does.
``forward`` is pure (no state written), so one instance can serve concurrent inference
threads; it traces to ONNX opset 17 with a dynamic batch dimension.
"""

from __future__ import annotations

from torch import Tensor, nn

from facestream.encoder.facellava.fusion import LANDMARK_DIM, Fusion
from facestream.errors import ConfigError, InputError

KINDS = ("image", "video")


class VisionPath(nn.Module):
    """A vision tower and the fusion stage that share one forward.

    ``tower`` is a ``facestream.encoder.facellava.towers.VisionTower`` (or any module with
    the same contract: image ``[B, 3, H, W] -> [B, N, C]``, video
    ``[B, 3, T, H, W] -> [B, T, N, C]``, attributes ``num_tokens`` and ``hidden_size``)."""

    def __init__(self, tower: nn.Module, fusion: Fusion, *, kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"vision path kind={kind!r}: expected one of {', '.join(KINDS)}")
        if tower.hidden_size != fusion.config.mm_hidden_size:
            raise ConfigError(f"{kind} tower width {tower.hidden_size} != the checkpoint's "
                              f"mm_hidden_size {fusion.config.mm_hidden_size}; pass the tower "
                              "the checkpoint was trained with")
        self.kind = kind
        self.tower = tower
        self.fusion = fusion

    @property
    def tokens_per_frame(self) -> int:
        """Visual tokens per frame (or per image) when landmarks are given."""
        return self.fusion.tokens_per_frame(self.tower.num_tokens)

    @property
    def hidden_size(self) -> int:
        return self.fusion.config.hidden_size

    def forward(self, pixels: Tensor, landmarks: Tensor | None = None) -> Tensor:
        if self.kind == "image":
            features = self.tower(pixels).unsqueeze(1)      # [B, N, C] -> [B, 1, N, C]
            if landmarks is not None and landmarks.dim() == 2:
                landmarks = landmarks.unsqueeze(1)          # [B, 136] -> [B, 1, 136]
        else:
            features = self.tower(pixels)                   # [B, T, N, C]
        if landmarks is not None and (landmarks.dim() != 3 or landmarks.shape[-1] != LANDMARK_DIM
                                      or landmarks.shape[:2] != features.shape[:2]):
            raise InputError(f"{self.kind} vision path: landmarks {list(landmarks.shape)}, "
                             f"expected [{features.shape[0]}, {features.shape[1]}, "
                             f"{LANDMARK_DIM}] (one row of 68 x, y points per frame)")
        tokens = self.fusion(features, landmarks)           # [B, T, P, D]
        return tokens.flatten(1, 2)                         # [B, T * P, D]
