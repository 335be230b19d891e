"""``--annotate``: the analysed frames with boxes, track ids and the latest results drawn,
written as H.264 at the analysis rate (the frames that were actually analysed)."""

from __future__ import annotations

import zlib
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

_COLOURS = [(255, 99, 71), (60, 179, 113), (65, 105, 225), (255, 215, 0), (238, 130, 238),
            (0, 206, 209), (255, 140, 0), (154, 205, 50)]


class Annotator:
    """Draws and encodes frames; blocking; not thread-safe."""

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

    def write(self, image: np.ndarray, time_s: float,
              faces: list[tuple[str, np.ndarray, str]]) -> None:
        """``faces``: (track id, box [4] pixels, label text) per visible track."""
        canvas = np.ascontiguousarray(image[: self._stream.height, : self._stream.width])
        for track_id, box, text in faces:
            colour = _COLOURS[zlib.crc32(track_id.encode()) % len(_COLOURS)]
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
            label = f"{track_id} {text}".strip()
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
            top = max(0, y1 - th - 6)
            cv2.rectangle(canvas, (x1, top), (x1 + tw + 6, top + th + 6), colour, -1)
            cv2.putText(canvas, label, (x1 + 3, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
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
