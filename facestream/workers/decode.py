"""Decode a source with PyAV and pick frames at the analysis rate by timestamp.

The decoder never counts frames to know time: each frame's time is its presentation
timestamp in the stream's time base, relative to the stream's first frame.  Only picked
frames are converted to RGB, which is where most of decode time would otherwise go.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from dataclasses import dataclass, field
from typing import Callable, Iterator

import av
import numpy as np

from facestream.errors import InputError, SourceDropped
from facestream.ingest.sources import SourceSpec
from facestream.retry import Backoff

@dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One picked frame.  ``image`` is [H, W, 3] uint8 RGB in source pixels."""

    stream_id: str
    index: int           # position among picked frames of this stream, from 0
    pts: int | None      # presentation timestamp in the stream's time base
    time_s: float        # media seconds since the stream's first frame
    image: np.ndarray
    arrival: float       # time.time() when the frame came out of the decoder

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"frame image must be [H, W, 3] uint8, got "
                             f"{self.image.shape} {self.image.dtype}")

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    codec: str
    time_base: float
    duration_s: float | None   # None for live streams and some containers
    average_fps: float | None

@dataclass
class DecodeReport:
    """What happened while decoding, for warnings and the summary.  Filled as frames flow."""

    decoded: int = 0            # every frame out of the decoder
    picked: int = 0             # frames handed on at the analysis rate
    last_time_s: float = 0.0
    stopped_early: str | None = None      # damaged tail: where and why decoding stopped
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)

class FrameSampler:
    """Picks the first frame in each 1/fps slot of media time (timestamps, not counts)."""

    def __init__(self, fps: float) -> None:
        self._fps = fps
        self._last_slot = -1

    def take(self, time_s: float) -> bool:
        slot = math.floor(time_s * self._fps + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False

def open_container(spec: SourceSpec, *, timeout_s: float) -> av.container.InputContainer:
    """Open a source for demuxing; InputError with the reason when it cannot be used."""
    options = {}
    if spec.kind == "url":
        if spec.target.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
    try:
        container = av.open(spec.target, mode="r", format=spec.format, options=options,
                            timeout=timeout_s if spec.live else None)
    except FileNotFoundError:
        raise InputError(f"source {spec.text}: no such file or device") from None
    except av.error.FFmpegError as exc:
        raise InputError(f"source {spec.text}: cannot open ({_reason(exc)})") from None
    except OSError as exc:
        raise InputError(f"source {spec.text}: cannot open ({exc.strerror or exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"source {spec.text}: no video stream (is it a video or image file?)")
    return container

def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(";")[0].strip().rstrip(".") or type(exc).__name__

class Decoder:
    """Iterates the picked frames of one source.

    Files end at their last readable frame: a damaged tail stops decoding there with a
    warning in :attr:`report`.  Live sources that drop are reopened with ``backoff``; every
    drop is reported through ``on_error`` (a message), and when the retries run out
    :class:`SourceDropped` is raised.  Not thread-safe; one decoder per stream.
    """

    def __init__(self, spec: SourceSpec, *, stream_id: str, fps: float, backoff: Backoff,
                 timeout_s: float = 10.0, threads: int = 0,
                 on_error: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec = spec
        self.stream_id = stream_id
        self.report = DecodeReport()
        self._fps = fps
        self._backoff = backoff
        self._timeout_s = timeout_s
        self._threads = threads
        self._on_error = on_error or (lambda message: None)
        self._sleep = sleep
        self._container = open_container(spec, timeout_s=timeout_s)
        self._origin: tuple[int, Fraction] | None = None   # first pts and time base
        self.info = self._stream_info(self._container)
        # A URL with a known duration is a remote file: it ends, it does not drop.
        self.live = spec.kind == "webcam" or (spec.kind == "url" and self.info.duration_s is None)

    def _stream_info(self, container: av.container.InputContainer) -> StreamInfo:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name or ctx.name == "none" or ctx.codec is None:
            raise InputError(f"source {self.spec.text}: unsupported video codec "
                             f"({stream.codec_context.name if ctx else 'unknown'}); "
                             "transcode it to H.264 or HEVC")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        rate = stream.average_rate
        return StreamInfo(width=ctx.width, height=ctx.height, codec=ctx.name,
                          time_base=float(stream.time_base or 0),
                          duration_s=duration if duration and duration > 0 else None,
                          average_fps=float(rate) if rate else None)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> "Decoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self) -> Iterator[DecodedFrame]:
        """Picked frames in presentation order.  Blocking: reads the source as it goes."""
        sampler = FrameSampler(self._fps)
        offset_s = 0.0          # live sources: media time carried across reconnects
        wall_start = time.monotonic()
        delays = self._backoff.delays()
        while True:
            container = self._container
            try:
                for frame, pts, t in self._decode(container, offset_s):
                    self.report.decoded += 1
                    self.report.last_time_s = t
                    if not sampler.take(t):
                        continue
                    image = frame.to_ndarray(format="rgb24")
                    yield DecodedFrame(self.stream_id, self.report.picked, pts, t, image,
                                       time.time())
                    self.report.picked += 1
                    delays = self._backoff.delays()     # a good frame resets the backoff
                if not self.live:
                    self._check_complete()
                    return
                problem = "stream ended"
            except av.error.FFmpegError as exc:
                problem = _reason(exc)
                if not self.live:
                    self._stopped(problem)
                    return
            self.close()
            message = f"source {self.spec.text}: {problem} at {self.report.last_time_s:.2f}s"
            self.report.errors.append(message)
            self._on_error(message)
            self._reopen(delays, message)
            # Media time goes on from where it stopped, at least as far as the wall clock
            # went during the outage (a source read faster than real time is ahead of it).
            offset_s = max(time.monotonic() - wall_start, self.report.last_time_s + 1.0 / self._fps)

    def _decode(self, container: av.container.InputContainer, offset_s: float):
        """(frame, pts, media seconds) for every decoded frame.

        On the first connection ``pts`` is the stream's own; after a reconnect the new
        connection's timestamps restart, so its frames get pts continued from the first
        connection's origin and time base (ids built from pts must not repeat).
        """
        stream = container.streams.video[0]
        if self._threads != 1:        # frame threads only pay off with cores to run them
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self._threads
        base = stream.start_time
        time_base = stream.time_base
        for frame in container.decode(stream):
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None or time_base is None:
                continue       # no timestamp: cannot be placed in media time
            if base is None:
                base = pts
            if self._origin is None:
                self._origin = (base, time_base)
            t = float((pts - base) * time_base) + offset_s
            if offset_s:
                origin, origin_tb = self._origin
                pts = origin + round(t / origin_tb)
            yield frame, pts, t

    def _reopen(self, delays: Iterator[float], message: str) -> None:
        for delay in delays:
            self._sleep(delay)
            self.report.reconnects += 1
            try:
                self._container = open_container(self.spec, timeout_s=self._timeout_s)
                return
            except InputError as exc:
                self._on_error(str(exc))
        raise SourceDropped(f"{message}; gave up after {self._backoff.attempts} reconnects")

    def _stopped(self, reason: str) -> None:
        if self.report.picked == 0:
            raise InputError(f"source {self.spec.text}: cannot decode ({reason})")
        self.report.stopped_early = (f"decoding stopped at {self.report.last_time_s:.2f}s: "
                                     f"{reason}; the rest of the file was not analysed")

    def _check_complete(self) -> None:
        if self.report.decoded == 0:
            raise InputError(f"source {self.spec.text}: no decodable video frames")
        duration = self.info.duration_s
        frame_s = 1.0 / (self.info.average_fps or 25.0)
        if duration and self.report.last_time_s + 3 * frame_s < duration * 0.98:
            self.report.stopped_early = (
                f"decoding stopped at {self.report.last_time_s:.2f}s of "
                f"{duration:.2f}s: the file looks truncated or damaged after that point")


class ChunkDecoder:
    """Decodes one stream's chunks (see :mod:`facestream.ingest.chunks`) and picks frames at
    the analysis rate, exactly as :class:`Decoder` does for a file: same decoder, same
    packets, so the same frames at the same media times.

    Each chunk is decoded on its own and drained to the end (chunks start at keyframes), so
    a chunk's frames are all out when :meth:`decode` returns and nothing is carried from one
    chunk to the next but the sampler's position.  That is what lets a worker checkpoint a
    stream between chunks and another worker resume it exactly.  Not thread-safe.
    """

    def __init__(self, stream_id: str, *, fps: float) -> None:
        self.stream_id = stream_id
        self.report = DecodeReport()
        self.sampler = FrameSampler(fps)

    def decode(self, chunk) -> list[DecodedFrame]:
        """Picked frames of ``chunk``, in presentation order (may be empty).  Raises
        av.error.FFmpegError on undecodable data, InputError for an unknown codec."""
        try:
            ctx = av.CodecContext.create(chunk.codec, "r")
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"stream {self.stream_id}: unsupported codec {chunk.codec!r} "
                             f"({_reason(exc)})") from None
        if chunk.extradata:
            ctx.extradata = chunk.extradata
        out: list[DecodedFrame] = []
        for p in chunk.packets():
            packet = av.Packet(p.data)
            packet.pts, packet.dts, packet.duration = p.pts, p.dts, p.duration
            packet.time_base = chunk.time_base
            for frame in ctx.decode(packet):
                out += self._pick(frame, chunk)
        for frame in ctx.decode(None):
            out += self._pick(frame, chunk)
        return out

    def _pick(self, frame, chunk) -> list[DecodedFrame]:
        pts = frame.pts
        if pts is None:
            return []
        t = float((pts - chunk.origin_pts) * chunk.time_base)
        self.report.decoded += 1
        self.report.last_time_s = t
        if not self.sampler.take(t):
            return []
        image = frame.to_ndarray(format="rgb24")
        self.report.picked += 1
        return [DecodedFrame(self.stream_id, self.report.picked - 1, pts, t, image, time.time())]
