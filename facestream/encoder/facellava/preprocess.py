"""Pixels and frame sampling as Face-LLaVA feeds its LanguageBind towers.

Both of LanguageBind's processors (``languagebind/image/processing_image.py`` and
``languagebind/video/processing_video.py`` in the Face-LLaVA tree) scale to [0, 1], resize the
short side to 224, centre-crop 224 and normalise with the OpenAI CLIP mean/std.  They differ in
the resize:

* image: torchvision ``Resize(224, BICUBIC)`` applied to a float tensor (after ``ToTensor``),
  so ``interpolate(mode="bicubic", align_corners=False)``, unclamped, with torchvision's
  default ``antialias``.  That default changed in torchvision 0.17 from off to on for tensors.
  The reference installs torch 2.5.1, whose torchvision is 0.20.1: antialiased (PyTorch's
  antialiased bicubic is Pillow's filter, a = -0.5, widened by the downscale factor).  Off
  (``antialias=False``: the plain a = -0.75 cubic) is what torchvision < 0.17 gives, as under
  Video-LLaVA's 0.15.2 pin.  On facestream's real 256² face crops the two differ by up to
  0.31 (mean 0.0045) in normalised units, about 20 (mean 0.3) 8-bit levels
  (docs/FACE_LLAVA.md);
* video: pytorchvideo ``ShortSideScale(224)``: ``interpolate(mode="bilinear",
  align_corners=False)``, never antialiased, whatever torchvision's version; the video
  processor normalises before resizing, which is the same result (both interpolations are
  affine with weights summing to 1, so they commute with the per-channel normalisation up to
  float rounding).

Both crop at ``round((side - 224) / 2)`` (Python's round, as torchvision's ``center_crop`` and
``CenterCropVideo`` compute it).  torch's interpolation is used here because the reference
resizes float tensors with it; OpenCV, or Pillow on uint8 (torchvision's path for a PIL image,
rounded and clamped), would give other pixels.  For facestream's 256x256 face crops the resize
is 256 -> 224 and the crop is empty.

Video windows are sampled as the decord/opencv video backends do:
``np.linspace(0, n - 1, 8, dtype=int)`` over the window's frames.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from facestream.errors import InputError

CLIP_SIZE = 224
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESIZE_MODE = {"image": "bicubic", "video": "bilinear"}


def _resized_shape(height: int, width: int) -> tuple[int, int]:
    """Short side to CLIP_SIZE, long side scaled and truncated (torchvision's rule)."""
    if height <= width:
        return CLIP_SIZE, CLIP_SIZE * width // height
    return CLIP_SIZE * height // width, CLIP_SIZE


def clip_pixels(crops: np.ndarray, *, kind: str = "image",
                antialias: bool = True) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 RGB crops -> ``[N, 3, 224, 224]`` float32 tower input.

    ``kind`` picks the reference resize: "image" (bicubic, for the image tower) or "video"
    (bilinear, for the frames of the video tower).  ``antialias`` applies to "image" only
    (torchvision >= 0.17 when True, the reference's pinned version; < 0.17 when False); video
    frames are never antialiased.  Pure, thread-safe; an empty batch gives an empty result.
    InputError on anything but a 4-D uint8 RGB array.
    """
    if kind not in _RESIZE_MODE:
        raise InputError(f"clip_pixels kind must be 'image' or 'video', got {kind!r}")
    if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
        raise InputError(f"clip_pixels expects [N, H, W, 3] uint8 RGB crops, got "
                         f"{list(crops.shape)} {crops.dtype}; convert the frames to RGB uint8")
    n, height, width, _ = crops.shape
    if n == 0:
        return np.zeros((0, 3, CLIP_SIZE, CLIP_SIZE), np.float32)
    if min(height, width) < 1:
        raise InputError(f"clip_pixels got empty crops of {height}x{width} pixels")
    writable = np.require(crops, requirements=("C", "W"))       # torch wants writable memory
    x = torch.from_numpy(writable).permute(0, 3, 1, 2).float() / 255.0
    new_h, new_w = _resized_shape(height, width)
    if (new_h, new_w) != (height, width):
        x = F.interpolate(x, size=(new_h, new_w), mode=_RESIZE_MODE[kind], align_corners=False,
                          antialias=antialias and kind == "image")           # [N, 3, h, w]
    top = int(round((new_h - CLIP_SIZE) / 2.0))
    left = int(round((new_w - CLIP_SIZE) / 2.0))
    x = x[:, :, top:top + CLIP_SIZE, left:left + CLIP_SIZE]                  # [N, 3, 224, 224]
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy().astype(np.float32, copy=False)


def uniform_indices(n: int, k: int = 8) -> list[int]:
    """``k`` frame indices spread over ``n`` frames, first and last included, as the reference
    samples a clip (``np.linspace(0, n - 1, k)`` truncated).  Repeats indices when n < k."""
    if n < 1 or k < 1:
        raise InputError(f"uniform_indices needs n >= 1 frames and k >= 1 samples, got n={n}, "
                         f"k={k}")
    return [int(i) for i in np.linspace(0, n - 1, k, dtype=int)]
