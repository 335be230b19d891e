"""Synthetic scenes: clips made with PyAV from real face photos moving along known paths.

The paths are the ground truth: where each face is at every frame, when it enters, leaves or
crosses another.  The tests check tracking against them, and ``bench/bench_scheduling.py``
measures the change-triggered scheduler on them.  Nothing in the pipeline imports this.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import av
import cv2
import numpy as np


def load_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_clip(path: Path, frames: Iterable[np.ndarray], *, fps: int = 25,
               times: Iterable[float] | None = None, codec: str = "libx264",
               container_format: str | None = None) -> Path:
    """Encode RGB frames; ``times`` (seconds) gives a variable frame rate."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if times is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        stamps = list(times) if times is not None else None
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if stamps is not None:
                frame.pts = int(round(stamps[i] * 1000))
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def face_patch(photo: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A square crop of ``photo`` around ``box`` (x1, y1, x2, y2), scaled to ``size``."""
    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.5
    h, w = photo.shape[:2]
    a, b = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    c, d = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
    return cv2.resize(photo[b:d, a:c], (size, size), interpolation=cv2.INTER_AREA)


def moving_faces(patches: list[np.ndarray], paths: list[Callable[[float], tuple[float, float]]],
                 *, width: int, height: int, seconds: float, fps: int,
                 background: int = 90) -> tuple[list[np.ndarray], list[list[tuple[float, float]]]]:
    """Frames with each patch centred on its path(t); returns the frames and the centres.

    Later patches are drawn over earlier ones (so patch 1 passes in front of patch 0).
    """
    frames, centres = [], []
    for i in range(int(seconds * fps)):
        t = i / fps
        canvas = np.full((height, width, 3), background, np.uint8)
        canvas[:, :, 1] = background + 20
        at = []
        for patch, path in zip(patches, paths):
            cx, cy = path(t)
            s = patch.shape[0]
            x, y = int(round(cx - s / 2)), int(round(cy - s / 2))
            xa, ya = max(0, x), max(0, y)
            xb, yb = min(width, x + s), min(height, y + s)
            if xb > xa and yb > ya:
                canvas[ya:yb, xa:xb] = patch[ya - y:yb - y, xa - x:xb - x]
            at.append((cx, cy))
        frames.append(canvas)
        centres.append(at)
    return frames, centres
