"""``--annotate``: the analysed frames with each face's box and label (its track id, then the
latest expression, gender and age) drawn.  A video is written as H.264 with each frame at its
media time (only the frames that were actually analysed); a photo is written as a JPEG."""

from __future__ import annotations

import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

_COLOURS = [(255, 99, 71), (60, 179, 113), (65, 105, 225), (255, 215, 0), (238, 130, 238),
            (0, 206, 209), (255, 140, 0), (154, 205, 50)]
_FONT, _SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.5

# (track id, box [x1, y1, x2, y2] in pixels, label) per visible face
Faces = list[tuple[str, np.ndarray, str]]


def label_text(track_id: str, expression: str | None, gender: str | None,
               age_years: float | None) -> str:
    """What a face's label says, e.g. ``t3 happy F31``: the track id, the expression, the
    gender's initial and the age in years; only what is known (a track whose first window
    is not analysed yet is its id alone)."""
    parts = [track_id]
    if expression:
        parts.append(expression)
    trait = (gender[0].upper() if gender else "") + (f"{age_years:.0f}" if age_years is not None
                                                     else "")
    if trait:
        parts.append(trait)
    return " ".join(parts)


def draw(image: np.ndarray, faces: Faces) -> np.ndarray:
    """A copy of the RGB ``image`` with each face's box and a filled label above it, in a
    colour that stays the same for a track from frame to frame."""
    canvas = np.ascontiguousarray(image).copy()
    for track_id, box, label in faces:
        colour = _COLOURS[zlib.crc32(track_id.encode()) % len(_COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        (tw, th), _ = cv2.getTextSize(label, _FONT, _SCALE, 1)
        top = max(0, y1 - th - 6)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 6, top + th + 6), colour, -1)
        cv2.putText(canvas, label, (x1 + 3, top + th + 2), _FONT, _SCALE, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def write_image(path: Path, image: np.ndarray, faces: Faces) -> Path:
    """The annotated photo: ``image`` (RGB) with ``faces`` drawn, as a JPEG at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(draw(image, faces), cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {path}")
    return path


class Annotator:
    """Draws and encodes the frames of a video; blocking; not thread-safe."""

    def __init__(self, path: Path, *, width: int, height: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=30)
        self._stream.width, self._stream.height = width - width % 2, height - height % 2
        self._stream.pix_fmt = "yuv420p"
        # Frames carry their media time in milliseconds: the encoder must count in the same
        # unit (its default, 1/rate, would play them 33x too slowly).
        self._stream.time_base = Fraction(1, 1000)
        self._stream.codec_context.time_base = Fraction(1, 1000)
        self._stream.options = {"preset": "veryfast", "crf": "23"}
        self._last_ms = -1

    def write(self, image: np.ndarray, time_s: float, faces: Faces) -> None:
        """Frame ``image`` (RGB) at media time ``time_s``, with ``faces`` drawn."""
        canvas = draw(image[: self._stream.height, : self._stream.width], faces)
        ms = max(int(round(time_s * 1000)), self._last_ms + 1)
        self._last_ms = ms
        frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
        frame.pts = ms
        frame.time_base = Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
