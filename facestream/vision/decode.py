"""Decode a source with PyAV and pick frames at the analysis rate by timestamp.

The decoder never counts frames to know time: each frame's time is its presentation
timestamp in the stream's time base, relative to the stream's first frame.  Only picked
frames are converted to RGB, which is where most of decode time would otherwise go.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterator

import av

from facestream.errors import InputError
from facestream.ingest.chunks import ChunkError
from facestream.ingest.sources import Reconnector, SourceSpec, error_reason
from facestream.retry import Backoff
from facestream.types import DecodedFrame


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    codec: str
    time_base: float
    duration_s: float | None   # None for live streams and some containers
    average_fps: float | None


@dataclass(frozen=True)
class SourcePause:
    """A live source dropped and is about to wait ``delay_s`` before trying to reconnect
    (:meth:`Decoder.frames` with ``pauses=True``): no frame it gives from now on lies before
    ``resume_s`` of media time, so windows that end by then can close now."""

    stream_id: str
    resume_s: float
    delay_s: float


# Below the resume time a pause announces, for float rounding between the two places that
# compute it (the pause before the wait, the reconnect after it).
_PAUSE_MARGIN_S = 0.001


@dataclass
class DecodeReport:
    """What happened while decoding, for warnings and the summary.  Filled as frames flow."""

    decoded: int = 0            # every frame out of the decoder
    picked: int = 0             # frames handed on at the analysis rate
    last_time_s: float = 0.0
    stopped_early: str | None = None      # damaged tail: where and why decoding stopped
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    # Damage skipped in the middle of a file (decoding went on after it):
    damaged_packets: int = 0    # packets the demuxer or the decoder rejected
    resync_packets: int = 0     # packets dropped after damage, up to the next keyframe
    corrupt_frames: int = 0     # frames the decoder flagged corrupt after damage, dropped
    unreadable_gaps: int = 0    # stretches the container could not read, jumped over
    damage_spans: list[tuple[float, float]] = field(default_factory=list)   # media seconds

    @property
    def skipped_packets(self) -> int:
        return self.damaged_packets + self.resync_packets

    def damage_text(self) -> str | None:
        """One bounded clause naming the damage that was skipped, or None when there was
        none: "skipped 3 damaged packets between 5.30s and 5.47s"."""
        parts = [_plural(n, noun) for n, noun in (
            (self.damaged_packets, "damaged packet"),
            (self.resync_packets, "packet up to the next keyframe"),
            (self.corrupt_frames, "corrupt frame"),
            (self.unreadable_gaps, "unreadable stretch")) if n]
        if not parts:
            return None
        text = "skipped " + (parts[0] if len(parts) == 1
                             else ", ".join(parts[:-1]) + " and " + parts[-1])
        spans = self.damage_spans
        if len(spans) == 1:
            a, b = spans[0]
            text += f" at {a:.2f}s" if b - a < 0.005 else f" between {a:.2f}s and {b:.2f}s"
        elif spans:
            shown = ", ".join(f"{a:.2f}s" if b - a < 0.005 else f"{a:.2f}-{b:.2f}s"
                              for a, b in spans[:_SHOWN_SPANS])
            more = (f" and {len(spans) - _SHOWN_SPANS} more"
                    if len(spans) > _SHOWN_SPANS else "")
            text += (f" in {len(spans)} places between {spans[0][0]:.2f}s and "
                     f"{max(b for _, b in spans):.2f}s ({shown}{more})")
        return text

    def warning(self) -> str | None:
        """The one warning line for the summary (without the source), or None."""
        damage = self.damage_text()
        if damage and self.stopped_early:
            return f"{damage}, then {self.stopped_early}"
        if damage:
            return f"{damage}; the rest was analysed"
        return self.stopped_early


_SHOWN_SPANS = 3        # damage spans named in a warning; the rest are counted
_MAX_SPANS = 100        # spans kept in a report; later damage extends the last one
_SPAN_GAP_S = 1.0       # damage closer than this to the previous span extends it
_MAX_FAILURES = 100     # consecutive unreadable packets before a file is given up


def _plural(n: int, noun: str) -> str:
    """"1 packet up to ...", "2 packets up to ...", "2 unreadable stretches"."""
    head, _, tail = noun.partition(" up to ")
    if n != 1:
        head += "es" if head.endswith("ch") else "s"
    return f"{n} {head}" + (f" up to {tail}" if tail else "")


class _Damage:
    """Damage met since the last good frame.  It is committed to the report when a good
    frame follows (it was skipped); damage that nothing good follows is the tail that
    stopped decoding, reported as such instead."""

    def __init__(self) -> None:
        self.seen = False
        self.damaged = self.resync = self.corrupt = self.gaps = 0
        self.span: tuple[float, float] | None = None

    def add(self, time_s: float, *, damaged: int = 0, resync: int = 0, gaps: int = 0) -> None:
        self.seen = True
        self.damaged += damaged
        self.resync += resync
        self.gaps += gaps
        a, b = self.span or (time_s, time_s)
        self.span = (min(a, time_s), max(b, time_s))

    def commit(self, report: DecodeReport) -> None:
        if self.span is None and not self.corrupt:
            return
        report.damaged_packets += self.damaged
        report.resync_packets += self.resync
        report.corrupt_frames += self.corrupt
        report.unreadable_gaps += self.gaps
        if self.span is not None:
            a, b = self.span
            spans = report.damage_spans
            if spans and (a - spans[-1][1] <= _SPAN_GAP_S or len(spans) >= _MAX_SPANS):
                spans[-1] = (min(spans[-1][0], a), max(spans[-1][1], b))
            else:
                spans.append((a, b))
        self.damaged = self.resync = self.corrupt = self.gaps = 0
        self.span = None

class FrameSampler:
    """Picks the first frame in each 1/fps slot of media time (timestamps, not counts)."""

    def __init__(self, fps: float) -> None:
        self._fps = fps
        self._last_slot = -1

    @property
    def fps(self) -> float:
        return self._fps

    def take(self, time_s: float) -> bool:
        slot = math.floor(time_s * self._fps + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False

def _timing_problem(stream, info: StreamInfo) -> str | None:
    """Why a file's video timestamps cannot place its frames in media time, or None.

    Only contradictions the container states about itself count, so that a file with
    unusual but real timing (a 1 fps time-lapse, an edit list that trims) still opens.  An
    ``mdhd`` timescale of 0 is one: FFmpeg defaults it to 1, a one-second tick, while the
    file holds ~24 frames a second."""
    time_base = stream.time_base
    if not time_base or time_base <= 0:
        return "the video stream has no time base"
    frames, duration = stream.frames or 0, info.duration_s
    if frames >= 2 and duration and duration / frames < time_base:
        return (f"the video time base is {float(time_base):g}s, too coarse for "
                f"{frames} frames in {duration:.2f}s")
    if frames >= 2 and duration and info.average_fps and 1 / info.average_fps > duration:
        return (f"a frame rate of {info.average_fps:.3g} fps cannot fit {frames} frames "
                f"in {duration:.2f}s")
    return None


def _unusable_timestamps(spec: SourceSpec, problem: str) -> InputError:
    return InputError(f"source {spec.text}: unusable timestamps ({problem}); "
                      "remux it, e.g. ffmpeg -i in.mp4 -c copy out.mp4")


class Decoder:
    """Iterates the picked frames of one source.

    Damage in the middle of a file is skipped (decoding resumes at the next decodable packet
    or keyframe) and counted in :attr:`report`; a damaged tail stops decoding at the last
    readable frame with a warning there.  A file whose timestamps cannot place its frames
    in media time is an :class:`InputError`.  Live sources that drop are reopened with
    ``backoff``; every drop is reported through ``on_error`` (a message), and when the
    retries run out :class:`SourceDropped` is raised; with ``stop`` (a threading.Event)
    set, a wait to reconnect ends at once with :class:`~facestream.ingest.sources.Stopped`.
    Not thread-safe; one decoder per stream.
    """

    def __init__(self, spec: SourceSpec, *, stream_id: str, fps: float, backoff: Backoff,
                 timeout_s: float = 10.0, threads: int = 0,
                 on_error: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, stop=None) -> None:
        self.spec = spec
        self.stream_id = stream_id
        self.report = DecodeReport()
        self._fps = fps
        self._threads = threads
        self._on_error = on_error or (lambda message: None)
        self._link = Reconnector(spec, timeout_s=timeout_s, backoff=backoff,
                                 on_error=self._on_error, sleep=sleep, stop=stop)
        self._container = self._link.open()
        self._origin: tuple[int, Fraction] | None = None   # first pts and time base
        self._damage = _Damage()        # files: damage met since the last good frame
        self._untimed = 0               # frames without a timestamp, not handed on
        self.info = self._stream_info(self._container)
        # A URL with a known duration is a remote file: it ends, it does not drop.
        self.live = spec.kind == "webcam" or (spec.kind == "url" and self.info.duration_s is None)
        if not self.live and spec.kind != "image":
            problem = _timing_problem(self._container.streams.video[0], self.info)
            if problem:
                self.close()
                raise _unusable_timestamps(spec, problem)

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

    def frames(self, *, pauses: bool = False) -> Iterator[DecodedFrame | SourcePause]:
        """Picked frames in presentation order.  Blocking: reads the source as it goes.
        With ``pauses``, a live source that dropped also gives a :class:`SourcePause`
        before each wait to reconnect."""
        sampler = FrameSampler(self._fps)
        offset_s = 0.0          # live sources: media time carried across reconnects
        self._link.restart_clock()
        while True:
            container = self._container
            gop_start = True    # a keyframe since the last picked frame (a reconnect: yes)
            try:
                for frame, pts, t in self._decode(container, offset_s):
                    self.report.decoded += 1
                    self.report.last_time_s = t
                    gop_start = gop_start or frame.key_frame
                    if not sampler.take(t):
                        continue
                    image = frame.to_ndarray(format="rgb24")
                    yield DecodedFrame(self.stream_id, self.report.picked, pts, t, image,
                                       time.time(), gop_start=gop_start)
                    gop_start = False
                    self.report.picked += 1
                    self._link.recovered()     # a good frame resets the backoff
                if not self.live:
                    self._check_complete()
                    return
                problem = "stream ended"
            except av.error.FFmpegError as exc:
                problem = error_reason(exc)
                if not self.live:
                    self._stopped(problem)
                    return
            self.close()
            message = f"source {self.spec.text}: {problem} at {self.report.last_time_s:.2f}s"
            self.report.errors.append(message)
            self._on_error(message)
            reached_s = self.report.last_time_s + 1.0 / self._fps
            steps = self._link.reopening(message)
            try:
                while True:
                    try:
                        delay = next(steps)
                    except StopIteration as done:
                        self._container = done.value
                        break
                    if pauses:
                        resume_s = self._link.resume_s(reached_s, after_s=delay)
                        yield SourcePause(self.stream_id, resume_s - _PAUSE_MARGIN_S, delay)
            finally:
                self.report.reconnects = self._link.reconnects
            offset_s = self._link.resume_s(reached_s)

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
        frames = container.decode(stream) if self.live else self._file_frames(container, stream)
        for frame in frames:
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts is None or time_base is None:
                self._untimed += 1
                if not self.live and not self.report.decoded and self._untimed >= _MAX_FAILURES:
                    raise self._no_timestamps()
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

    def _file_frames(self, container: av.container.InputContainer, stream) -> Iterator:
        """The decoded frames of a file, skipping damage in the middle of it.

        Packets are demuxed and decoded one by one so that one the decoder rejects is
        counted and skipped rather than ending the file.  After a first rejected packet the
        decoder usually recovers by itself (a damaged frame that others do not refer to); a
        second one before the next keyframe means it does not, so the frames it holds are
        drained, its references forgotten and packets dropped up to the next keyframe.
        Frames the decoder flags corrupt after damage are dropped.

        An unreadable packet (an error from the demuxer) is skipped by reading on.  A
        container that ends well before its stated duration (a damaged index sends the
        demuxer past the end of the file) is read on from the first keyframe after the last
        packet read, for as long as that brings packets.  ``_MAX_FAILURES`` unreadable (or
        rejected) packets in a row raise the last error: a hopeless tail.
        """
        ctx = stream.codec_context
        damage = self._damage
        packets = container.demux(stream)
        unreadable = rejected = 0   # demuxer and decoder errors in a row
        rejected_in_gop = 0     # rejected packets since the last keyframe
        resync = False          # dropping packets up to the next keyframe
        last_dts = None         # the furthest decode timestamp read, in the stream's time base
        reached_s = 0.0         # media seconds of the last packet read
        gap_from = None         # media seconds where the container stopped, before a seek
        seek_dts = None         # last_dts when it stopped: packets up to it were read already

        def good(frames) -> Iterator:
            for frame in frames:
                if damage.seen and frame.is_corrupt:
                    damage.corrupt += 1
                    continue
                damage.commit(self.report)
                yield frame

        while True:
            try:
                packet = next(packets)
            except StopIteration:
                # Ended early, and the last seek (if any) brought packets: read on after it.
                if last_dts is None or gap_from is not None or not self._ends_short(reached_s):
                    break
                yield from good(self._drain(ctx))
                ctx.flush_buffers()
                try:
                    container.seek(last_dts + 1, stream=stream, backward=False)
                except (av.error.FFmpegError, OSError):
                    break
                gap_from, seek_dts, resync, rejected_in_gop = reached_s, last_dts, False, 0
                packets = container.demux(stream)
                continue
            except av.error.FFmpegError:
                unreadable += 1
                damage.add(reached_s, damaged=1)
                if unreadable >= _MAX_FAILURES:
                    raise
                packets = container.demux(stream)     # read on from where the demuxer is
                continue
            unreadable = 0
            if packet.size == 0:
                continue        # the end-of-stream marker: the decoder is drained below
            if gap_from is not None and (not packet.is_keyframe or packet.dts is None
                                         or packet.dts <= seek_dts):
                continue        # read already (the seek went back), or no place to start
            if packet.dts is not None:
                last_dts = packet.dts if last_dts is None else max(last_dts, packet.dts)
            reached_s = self._packet_time(packet, stream, reached_s)
            if gap_from is not None:
                damage.add(gap_from, gaps=1)
                damage.add(reached_s)
                gap_from = None
            if packet.is_keyframe:
                rejected_in_gop = 0
                resync = False
            elif resync:
                damage.add(reached_s, resync=1)
                continue
            try:
                frames = ctx.decode(packet)
            except av.error.FFmpegError:
                rejected += 1
                rejected_in_gop += 1
                damage.add(reached_s, damaged=1)
                if rejected >= _MAX_FAILURES:
                    raise
                if rejected_in_gop >= 2:
                    yield from good(self._drain(ctx))
                    ctx.flush_buffers()
                    resync = True
                continue
            rejected = 0
            yield from good(frames)
        yield from good(self._drain(ctx))
        if not self._ends_short(self.report.last_time_s):
            damage.commit(self.report)      # skipped near the end; else the tail reports it

    @staticmethod
    def _drain(ctx) -> list:
        """The frames a decoder still holds.  An error while draining belongs to a packet
        already counted; the frames it cost are lost either way."""
        try:
            return ctx.decode(None)
        except av.error.FFmpegError:
            return []

    def _ends_short(self, time_s: float) -> bool:
        """Whether media time ``time_s`` falls well short of the file's stated duration."""
        duration = self.info.duration_s
        frame_s = 1.0 / (self.info.average_fps or 25.0)
        return bool(duration) and time_s + 3 * frame_s < duration * 0.98

    def _packet_time(self, packet, stream, default: float) -> float:
        """Media seconds of ``packet`` (its pts, else dts), else ``default``."""
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None or not stream.time_base:
            return default
        if self._origin is not None:
            base = self._origin[0]
        else:
            base = stream.start_time if stream.start_time is not None else 0
        return max(0.0, float((stamp - base) * stream.time_base))

    def _stopped(self, reason: str) -> None:
        if self.report.picked == 0:
            raise InputError(f"source {self.spec.text}: cannot decode ({reason})")
        self.report.stopped_early = (f"decoding stopped at {self.report.last_time_s:.2f}s: "
                                     f"{reason}; the rest of the file was not analysed")

    def _no_timestamps(self) -> InputError:
        return _unusable_timestamps(self.spec, f"none of its first {self._untimed} decoded "
                                               "frames has a timestamp")

    def _check_complete(self) -> None:
        if self.report.decoded == 0 and self._untimed:
            raise self._no_timestamps()
        if self.report.decoded == 0:
            raise InputError(f"source {self.spec.text}: no decodable video frames")
        duration = self.info.duration_s
        if self._ends_short(self.report.last_time_s):
            self.report.stopped_early = (
                f"decoding stopped at {self.report.last_time_s:.2f}s of "
                f"{duration:.2f}s: the file looks truncated or damaged after that point")


class ChunkDecoder:
    """Decodes one stream's chunks (see :mod:`facestream.ingest.chunks`) and picks frames at
    the analysis rate, exactly as :class:`Decoder` does for a file: same decoder, same
    packets, so the same frames at the same media times.

    A chunk that starts a GOP gets a fresh decoder.  When it is complete, it is drained to
    the end, so its frames are all out when :meth:`decode` returns and nothing is carried to
    the next chunk but the sampler's position: that is what lets a worker checkpoint a
    stream between chunks and another worker resume it exactly.  When it is ``unfinished``
    (a live source sending its GOP as it comes), the decoder stays open (:attr:`mid_gop`)
    and the ``continued`` chunks that follow feed it; the open decoder is never pickled, so
    a stream is checkpointed only between GOPs.  Not thread-safe.

    :attr:`clock_s` is the stream's media clock: the end of the last frame decoded (picked
    or not), its time plus its duration (the packet's, from the container), so that every
    frame decoded after it lies at or after the clock.  Where that cannot be relied on, the
    clock is the frame's time alone, which every later frame lies after by presentation
    order: a frame whose duration is unknown (0), and every frame of a stream once one of
    its frames came before the previous one ended (durations that overrun the next frame:
    variable frame rate stamped with a nominal rate).
    """

    def __init__(self, stream_id: str, *, fps: float) -> None:
        self.stream_id = stream_id
        self.report = DecodeReport()
        self.sampler = FrameSampler(fps)
        self.clock_s = 0.0
        self.durations_hold = True       # no frame yet came before the previous one ended
        self._open: tuple[Any, Any] | None = None     # (codec context, its GOP's first chunk)
        self._durations: dict[int, int] = {}          # the open GOP's packets: pts -> duration
        self._gop_start = True          # a keyframe or new GOP since the last picked frame

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": None, "_durations": {}}

    def __setstate__(self, state: dict) -> None:
        # A checkpoint from before the clock was a frame's end: its clock is the last time.
        self.__dict__.update({"clock_s": state["report"].last_time_s, "durations_hold": True,
                              "_durations": {}, "_gop_start": True, **state})

    @property
    def mid_gop(self) -> bool:
        """True while a GOP is open: the next chunk of the stream should continue it."""
        return self._open is not None

    def abandon(self) -> None:
        """Drop the open GOP (a chunk of it was lost): its frames still inside the decoder
        are not picked, and continued chunks are refused until the next GOP starts."""
        self._open = None

    def decode(self, chunk) -> list[DecodedFrame]:
        """Picked frames of ``chunk``, in presentation order (may be empty).  Raises
        av.error.FFmpegError on undecodable data, InputError for an unknown codec,
        ChunkError for a continued chunk with no GOP open."""
        out: list[DecodedFrame] = []
        if chunk.continued:
            if self._open is None:
                raise ChunkError(f"chunk {chunk.seq} continues a GOP this decoder never "
                                 "started (its first chunk was lost or dropped)")
            ctx, first = self._open
        else:
            out += self._drain()      # a GOP left open: its source restarted mid-GOP
            ctx, first = self._context(chunk), chunk
            self._durations = {}
            self._gop_start = True
        self._open = None
        for p in chunk.packets():
            packet = av.Packet(p.data)
            packet.pts, packet.dts, packet.duration = p.pts, p.dts, p.duration
            packet.time_base = first.time_base
            if p.pts is not None:
                self._durations[p.pts] = p.duration
            for frame in ctx.decode(packet):
                out += self._pick(frame, first, chunk)
        if chunk.unfinished:
            self._open = (ctx, first)
        else:
            out += self._flush(ctx, first, chunk)
        return out

    def _context(self, chunk):
        try:
            ctx = av.CodecContext.create(chunk.codec, "r")
        except (av.error.FFmpegError, ValueError) as exc:
            raise InputError(f"stream {self.stream_id}: unsupported codec {chunk.codec!r} "
                             f"({error_reason(exc)})") from None
        if chunk.extradata:
            ctx.extradata = chunk.extradata
        return ctx

    def _drain(self) -> list[DecodedFrame]:
        if self._open is None:
            return []
        ctx, first = self._open
        self._open = None
        return self._flush(ctx, first)

    def _flush(self, ctx, first, current=None) -> list[DecodedFrame]:
        out: list[DecodedFrame] = []
        for frame in ctx.decode(None):
            out += self._pick(frame, first, current or first)
        return out

    def _pick(self, frame, chunk, current) -> list[DecodedFrame]:
        """The frame if the sampler takes it.  ``chunk`` is its GOP's first chunk (the time
        base and bounds), ``current`` the chunk being decoded (its capture time)."""
        if frame.width > chunk.width or frame.height > chunk.height:
            # A chunk's header bounds what its frames may cost: a small message must not
            # decode to a frame of hundreds of megabytes.
            raise ChunkError(f"chunk {chunk.seq} decodes to {frame.width}x{frame.height} "
                             f"frames, larger than its fs-size {chunk.width}x{chunk.height}")
        pts = frame.pts
        if pts is None:
            return []
        t = float((pts - chunk.origin_pts) * chunk.time_base)
        self.report.decoded += 1
        self.report.last_time_s = t
        self._tick(pts, t, chunk)
        self._gop_start = self._gop_start or frame.key_frame
        if not self.sampler.take(t):
            return []
        image = frame.to_ndarray(format="rgb24")
        self.report.picked += 1
        captured = (current.capture + max(0.0, t - current.start_s)
                    if current.capture is not None else None)
        gop_start, self._gop_start = self._gop_start, False
        return [DecodedFrame(self.stream_id, self.report.picked - 1, pts, t, image, time.time(),
                             captured, gop_start)]

    def _tick(self, pts: int, t: float, chunk) -> None:
        """Move :attr:`clock_s` to the end of the frame at ``pts`` (time ``t``); ``chunk``
        is its GOP's first chunk.  The end is computed in the time base, so a next frame
        at exactly ``pts + duration`` is at exactly the clock, not a rounding error before."""
        if t < self.clock_s - 1e-9:
            self.durations_hold = False
        duration = self._durations.pop(pts, 0)
        self.clock_s = (float((pts + duration - chunk.origin_pts) * chunk.time_base)
                        if duration > 0 and self.durations_hold else t)
