"""Encoded video in transit: a stream cut at keyframes into chunks of whole GOPs.

A :class:`Chunk` carries the packets of one or more whole GOPs exactly as the demuxer gave
them (never re-encoded), framed as ``fs-packets-1``: per packet a little-endian header
(pts, dts, duration: int64; flags: uint8, bit 0 = keyframe; size: uint32) then its bytes.
Everything a decoder needs travels in the headers (codec, extradata, time base), so any
worker can start decoding a stream at any chunk that starts a GOP.

A live source does not wait for its GOP to end: every ``max_chunk_s`` of media it sends what
it has as a chunk marked ``fs-unfinished`` ("1": the GOP goes on in the next chunk), and the
next chunk is marked ``fs-continued`` ("1": it starts inside the GOP, with no keyframe).  A
worker keeps the stream's decoder open across them.  Only a chunk that is not continued is
a place to start decoding, so checkpoints and commits stay at GOP starts.

Kafka headers: ``fs-stream``, ``fs-seq``, ``fs-part`` ("i/n", from 1), ``fs-codec``,
``fs-extradata``, ``fs-time-base`` ("num/den"), ``fs-origin-pts`` (the pts that is media
time 0 for the whole stream), ``fs-pts`` (first pts of the chunk), ``fs-size`` ("WxH"),
``fs-format``, ``fs-live`` ("1": a live source), ``fs-continued``, ``fs-unfinished``, and
from the camera supervisor the stream's registered analysis rate and profile, ``fs-fps``
(0.1..120) and ``fs-profile`` (workers of other profiles refuse the chunk), and
``fs-capture``, the wall clock (unix seconds) at which the source produced the chunk's first
frame, where the publisher knows it (live sources: the source's own clock where it reports
one, see :func:`source_capture`, else the ingest time; paced files).  Each is bounded
where it is parsed (the bounds below; docs/RELIABILITY.md).  A chunk larger than the
broker's message limit is split into parts that :class:`PartAssembler` puts back together.

Two markers travel on the same partition, with an empty value: :class:`EndOfStream`
(``fs-end``: no chunk follows) and :class:`MediaClock` (``fs-clock``: a live source is
down, and its media time will go on no earlier than the marker's).
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Iterable, Iterator

from facestream.errors import bounded
from facestream.ingest.sources import is_stream_id

log = logging.getLogger(__name__)

FORMAT = "fs-packets-1"
NO_TS = -(2 ** 63)
_PACKET = struct.Struct("<qqqBI")
_REQUIRED = ("fs-stream", "fs-seq", "fs-part", "fs-codec", "fs-time-base", "fs-origin-pts",
             "fs-pts", "fs-size", "fs-format")
END_HEADER = "fs-end"
CLOCK_HEADER = "fs-clock"

# Bounds on what a message may say (docs/RELIABILITY.md).  A message outside them is refused
# with the bound it broke, never clamped or rewritten.
MAX_TIME_BASE_TERM = 2 ** 31          # numerator and denominator of fs-time-base
MAX_MEDIA_S = 2.0 ** 31               # |media time| of any timestamp, seconds (68 years)
MAX_CHUNK_S = 3600.0                  # a packet's pts within this of its chunk's fs-pts
MAX_SEQ = 2 ** 63 - 1
MAX_PARTS = 4096                      # parts of one chunk
MAX_SIDE = 16384                      # frame width and height, pixels
MAX_EXTRADATA = 1 << 20               # bytes
MAX_HEADER = 1024                     # bytes of any other header value
MIN_FPS, MAX_FPS = 0.1, 120.0         # fs-fps, as the registry allows
# A source's own wall clock further than this from the ingest clock is not believed (a
# camera whose clock is not set): its chunks are stamped with the ingest time instead.
MAX_SOURCE_SKEW_S = 10.0
CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mpeg4", "mpeg2video", "mpeg1video",
                    "h263", "mjpeg", "theora"})


class ChunkError(ValueError):
    """A message that is not a usable chunk; the text says which header or byte is wrong
    (bounded: values from the wire are quoted only in part)."""


def _show(raw: bytes | str) -> str:
    """A header value for an error message: repr, at most 40 characters."""
    return bounded(repr(raw), 40)


@dataclass(frozen=True)
class EndOfStream:
    """The publisher's last message for a stream: no more chunks follow ``last_seq``."""

    stream_id: str
    last_seq: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [("fs-stream", self.stream_id.encode()), ("fs-seq", str(self.last_seq).encode()),
                (END_HEADER, b"1"), ("fs-format", FORMAT.encode())]


@dataclass(frozen=True)
class MediaClock:
    """A live source's publisher, after the source dropped: no chunk of the stream after
    ``last_seq`` has a frame before media time ``media_us`` (microseconds), so its windows
    that end by then can close now rather than when the source is back.  Sent before each
    reconnect wait; the media time a reconnected source resumes at is never less (see
    :meth:`facestream.ingest.sources.Reconnector.resume_s`).  Being in the log, it closes
    the same windows on every replay."""

    stream_id: str
    last_seq: int
    media_us: int

    @property
    def media_s(self) -> float:
        return self.media_us / 1e6

    def headers(self) -> list[tuple[str, bytes]]:
        return [("fs-stream", self.stream_id.encode()), ("fs-seq", str(self.last_seq).encode()),
                (CLOCK_HEADER, str(self.media_us).encode()), ("fs-format", FORMAT.encode())]


def parse_message(headers: Iterable[tuple[str, bytes]] | None, value: bytes | None, *,
                  key: bytes | None = None) -> "Chunk | EndOfStream | MediaClock":
    """A video-topic message as a Chunk (or part of one), an EndOfStream or a MediaClock
    marker; ChunkError naming the first header or byte that is wrong.  With ``key`` (the
    Kafka message key) the message's ``fs-stream`` must equal it: a stream's messages are
    ordered only on its key."""
    h = _header_map(headers)
    message: Chunk | EndOfStream | MediaClock
    if END_HEADER in h and CLOCK_HEADER in h:
        raise ChunkError(f"headers {END_HEADER} and {CLOCK_HEADER} together: a marker is one "
                         "or the other")
    if END_HEADER in h:
        message = EndOfStream(_stream_id(h), _int(h, "fs-seq", 0, MAX_SEQ))
    elif CLOCK_HEADER in h:
        limit = int(MAX_MEDIA_S * 1e6)
        message = MediaClock(_stream_id(h), _int(h, "fs-seq", 0, MAX_SEQ),
                             _int(h, CLOCK_HEADER, -limit, limit))
    else:
        message = Chunk.from_message(h.items(), value)
    if key is not None and key != message.stream_id.encode():
        raise ChunkError(f"message key {_show(key)} differs from fs-stream "
                         f"{message.stream_id!r}: publishers key each message by its stream id")
    return message


def _header_map(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, bytes]:
    h: dict[str, bytes] = {}
    for name, raw in headers or ():
        if not isinstance(name, str) or not isinstance(raw, (bytes, bytearray)):
            raise ChunkError(f"header {_show(name)}: not a name and a byte value")
        if name in h:
            raise ChunkError(f"header {_show(name)} appears twice")
        limit = MAX_EXTRADATA if name == "fs-extradata" else MAX_HEADER
        if len(raw) > limit:
            raise ChunkError(f"header {_show(name)} is {len(raw)} bytes; at most {limit}")
        h[name] = bytes(raw)
    return h


def _text(h: dict[str, bytes], name: str) -> str:
    if name not in h:
        raise ChunkError(f"missing headers: {name}")
    try:
        return h[name].decode("ascii")
    except UnicodeDecodeError:
        raise ChunkError(f"{name} {_show(h[name])}: not ASCII") from None


def _int(h: dict[str, bytes], name: str, low: int, high: int, text: str | None = None) -> int:
    text = _text(h, name) if text is None else text
    if not re.fullmatch(r"-?[0-9]{1,20}", text):
        raise ChunkError(f"{name} {_show(text)}: not an integer")
    value = int(text)
    if not low <= value <= high:
        raise ChunkError(f"{name} {value} is outside {low}..{high}")
    return value


def _pair(h: dict[str, bytes], name: str, sep: str) -> tuple[str, str]:
    text = _text(h, name)
    first, found, second = text.partition(sep)
    if not found:
        raise ChunkError(f"{name} {_show(text)}: expected two numbers joined by {sep!r}")
    return first, second


def _decimal(h: dict[str, bytes], name: str, *, digits: int, example: str) -> float | None:
    """An optional header holding a plain decimal (at most ``digits`` before the point and
    6 after: no sign, no exponent); None when absent."""
    if name not in h:
        return None
    text = _text(h, name)
    if not re.fullmatch(rf"[0-9]{{1,{digits}}}(\.[0-9]{{1,6}})?", text):
        raise ChunkError(f"{name} {_show(text)}: not {example}")
    return float(text)


def _flag(h: dict[str, bytes], name: str) -> bool:
    value = h.get(name, b"0")
    if value not in (b"0", b"1"):
        raise ChunkError(f"{name} {_show(value)}: expected 0 or 1")
    return value == b"1"


def _stream_id(h: dict[str, bytes]) -> str:
    if "fs-stream" not in h:
        raise ChunkError("missing headers: fs-stream")
    text = h["fs-stream"].decode("ascii", errors="replace")
    if not is_stream_id(text):
        raise ChunkError(f"fs-stream {_show(text)}: not a stream id (letters, "
                         "digits, '.', '_', '-', at most 128, not starting with '.' or '-')")
    return text


@dataclass(frozen=True)
class Packet:
    pts: int | None
    dts: int | None
    duration: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True, eq=False)
class Chunk:
    stream_id: str
    seq: int                  # chunk number within the stream, from 0
    codec: str
    extradata: bytes
    time_base: Fraction
    origin_pts: int           # media time 0 of the stream, in time_base units
    first_pts: int
    width: int
    height: int
    payload: bytes            # fs-packets-1
    part: int = 1             # i of n, from 1
    parts: int = 1
    live: bool = False        # from a live source: a worker that falls behind may drop it
    continued: bool = False   # starts inside the previous chunk's GOP (no keyframe first)
    unfinished: bool = False  # its last GOP goes on in the next chunk
    fps: float | None = None  # the stream's registered analysis rate (None: the worker's)
    profile: str | None = None  # the profile the stream is registered for (None: any)
    capture: float | None = None  # unix s at which the source produced the first frame

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("fs-stream", self.stream_id.encode()), ("fs-seq", str(self.seq).encode()),
            ("fs-part", f"{self.part}/{self.parts}".encode()), ("fs-codec", self.codec.encode()),
            ("fs-extradata", self.extradata),
            ("fs-time-base", f"{self.time_base.numerator}/{self.time_base.denominator}".encode()),
            ("fs-origin-pts", str(self.origin_pts).encode()), ("fs-pts", str(self.first_pts).encode()),
            ("fs-size", f"{self.width}x{self.height}".encode()), ("fs-format", FORMAT.encode()),
            ("fs-live", b"1" if self.live else b"0"),
            ("fs-continued", b"1" if self.continued else b"0"),
            ("fs-unfinished", b"1" if self.unfinished else b"0"),
        ] + ([("fs-fps", f"{self.fps:g}".encode())] if self.fps is not None else []) + (
            [("fs-profile", self.profile.encode())] if self.profile is not None else []) + (
            [("fs-capture", f"{self.capture:.3f}".encode())] if self.capture is not None else [])

    @property
    def start_s(self) -> float:
        """Media seconds of the chunk's first pts."""
        return float((self.first_pts - self.origin_pts) * self.time_base)

    @classmethod
    def from_message(cls, headers: Iterable[tuple[str, bytes]], value: bytes | None) -> "Chunk":
        """Parse a Kafka message; ChunkError naming the first header out of bounds."""
        h = _header_map(headers)
        missing = [k for k in _REQUIRED if k not in h]
        if missing:
            raise ChunkError(f"missing headers: {', '.join(missing)}")
        if h["fs-format"] != FORMAT.encode():
            raise ChunkError(f"fs-format is {_show(h['fs-format'])}, expected {FORMAT}")
        stream_id = _stream_id(h)
        part, parts = _pair(h, "fs-part", "/")
        parts_n = _int(h, "fs-part", 1, MAX_PARTS, parts)
        part_i = _int(h, "fs-part", 1, parts_n, part)
        width, height = (_int(h, "fs-size", 1, MAX_SIDE, x) for x in _pair(h, "fs-size", "x"))
        num, den = (_int(h, "fs-time-base", 1, MAX_TIME_BASE_TERM, x)
                    for x in _pair(h, "fs-time-base", "/"))
        codec = _text(h, "fs-codec")
        if codec not in CODECS:
            raise ChunkError(f"fs-codec {_show(codec)} is not one of {', '.join(sorted(CODECS))}")
        live, continued, unfinished = (_flag(h, name) for name in
                                       ("fs-live", "fs-continued", "fs-unfinished"))
        if not value:
            raise ChunkError("empty payload")
        fps = _decimal(h, "fs-fps", digits=3, example="a number like 10 or 2.5")
        if fps is not None and not MIN_FPS <= fps <= MAX_FPS:
            raise ChunkError(f"fs-fps {fps:g} is outside {MIN_FPS:g}..{MAX_FPS:g}")
        profile = None
        if "fs-profile" in h:
            profile = _text(h, "fs-profile")
            if not re.fullmatch(r"[a-z0-9_-]{1,32}", profile):
                raise ChunkError(f"fs-profile {_show(profile)}: not a profile name")
        capture = _decimal(h, "fs-capture", digits=10, example="unix seconds like 1764570000.25")
        chunk = cls(stream_id=stream_id, seq=_int(h, "fs-seq", 0, MAX_SEQ), codec=codec,
                    extradata=h.get("fs-extradata") or b"", time_base=Fraction(num, den),
                    origin_pts=_int(h, "fs-origin-pts", NO_TS + 1, -NO_TS - 1),
                    first_pts=_int(h, "fs-pts", NO_TS + 1, -NO_TS - 1), width=width,
                    height=height, payload=bytes(value), part=part_i, parts=parts_n,
                    live=live, continued=continued, unfinished=unfinished, fps=fps,
                    profile=profile, capture=capture)
        if not -MAX_MEDIA_S <= chunk.start_s <= MAX_MEDIA_S:
            raise ChunkError(f"fs-pts {chunk.first_pts} is {chunk.start_s:.3g} s of media "
                             f"time after fs-origin-pts; at most {MAX_MEDIA_S:.3g} s")
        return chunk

    def split(self, max_bytes: int) -> list["Chunk"]:
        """Parts of at most ``max_bytes`` of payload each (one part if it fits)."""
        if len(self.payload) <= max_bytes:
            return [self]
        pieces = [self.payload[i:i + max_bytes] for i in range(0, len(self.payload), max_bytes)]
        return [replace(self, payload=p, part=i + 1, parts=len(pieces))
                for i, p in enumerate(pieces)]

    def packets(self) -> list[Packet]:
        """The packets of a whole (reassembled) chunk; ChunkError if the framing is broken
        or a packet's timestamps lie more than MAX_CHUNK_S from the chunk's first pts."""
        if self.parts != 1:
            raise ChunkError(f"part {self.part}/{self.parts}: reassemble the chunk first")
        packets = unpack(self.payload, continued=self.continued)
        reach = MAX_CHUNK_S / self.time_base
        for i, p in enumerate(packets):
            for name, ts in (("pts", p.pts), ("dts", p.dts)):
                if ts is not None and abs(ts - self.first_pts) > reach:
                    raise ChunkError(f"packet {i}: {name} {ts} is more than {MAX_CHUNK_S:.0f} s "
                                     f"from the chunk's fs-pts {self.first_pts}")
        return packets


def pack(packets: Iterable[Packet]) -> bytes:
    out = bytearray()
    for p in packets:
        out += _PACKET.pack(NO_TS if p.pts is None else p.pts, NO_TS if p.dts is None else p.dts,
                            p.duration, 1 if p.keyframe else 0, len(p.data))
        out += p.data
    return bytes(out)


def count_packets(payload: bytes) -> int:
    """How many packets (frames) an ``fs-packets-1`` payload holds, reading only their
    headers (the publisher's frame counter; a broken framing counts what it can)."""
    count, offset, end = 0, 0, len(payload)
    while end - offset >= _PACKET.size:
        size = _PACKET.unpack_from(payload, offset)[4]
        offset += _PACKET.size + size
        if offset > end:
            break
        count += 1
    return count


def unpack(payload: bytes, *, continued: bool = False) -> list[Packet]:
    """The packets of an fs-packets-1 payload; the first must be a keyframe unless the
    chunk is ``continued``.  ChunkError naming the first broken byte otherwise."""
    packets, offset, end = [], 0, len(payload)
    while offset < end:
        if end - offset < _PACKET.size:
            raise ChunkError(f"truncated packet header at byte {offset} of {end}")
        pts, dts, duration, flags, size = _PACKET.unpack_from(payload, offset)
        offset += _PACKET.size
        if size > end - offset:
            raise ChunkError(f"packet at byte {offset} claims {size} bytes, {end - offset} remain")
        if duration < 0:
            raise ChunkError(f"packet at byte {offset}: negative duration {duration}")
        if flags & ~1:
            raise ChunkError(f"packet at byte {offset}: flags {flags:#04x}; only bit 0 "
                             "(keyframe) is defined")
        packets.append(Packet(None if pts == NO_TS else pts, None if dts == NO_TS else dts,
                              duration, bool(flags & 1), payload[offset:offset + size]))
        offset += size
    if not packets:
        raise ChunkError("no packets")
    if not packets[0].keyframe and not continued:
        raise ChunkError("chunk does not start at a keyframe (and is not marked fs-continued)")
    return packets


@dataclass(frozen=True, eq=False)
class Orphan:
    """Parts of a chunk that will never be whole, with the tokens they were added with."""

    stream_id: str
    seq: int
    parts: int                 # n of the chunk
    tokens: tuple              # in arrival order
    reason: str


class PartAssembler:
    """Collects the parts of split chunks; bounded in count and in time.

    A publisher sends a chunk's parts one after the other, so parts of a chunk are given up
    (become an :class:`Orphan`, drained with :meth:`take_orphans`) when a part of another
    chunk of the same stream arrives, when more than ``max_pending`` chunks wait, or when
    :meth:`expire` finds them older than its ``max_age_s``.  Each part carries an opaque
    ``token`` (the worker's Kafka record), so whoever drains orphans can dead-letter them.
    ``now`` is any monotonic clock, in seconds.  Not thread-safe.
    """

    def __init__(self, *, max_pending: int = 64) -> None:
        # (stream id, seq) -> (parts by index, tokens, first arrival)
        self._pending: dict[tuple[str, int], tuple[dict[int, Chunk], list, float]] = {}
        self._max_pending = max_pending
        self._orphans: list[Orphan] = []

    def add(self, chunk: Chunk, *, token=None, now: float = 0.0) -> Chunk | None:
        """The whole chunk once its last part arrives, else None."""
        key = (chunk.stream_id, chunk.seq)
        for other in [k for k in self._pending if k[0] == chunk.stream_id and k != key]:
            self._orphan(other, f"chunk {chunk.seq} began before its last part arrived")
        if chunk.parts == 1:
            return chunk
        if key in self._pending:
            parts, tokens, _ = self._pending[key]
            first = next(iter(parts.values()))
            if first.parts != chunk.parts or chunk.part in parts:
                self._orphan(key, f"part {chunk.part}/{chunk.parts} conflicts with the parts "
                                  f"received ({first.parts} parts, {sorted(parts)} present)")
        parts, tokens, _ = self._pending.setdefault(key, ({}, [], now))
        parts[chunk.part] = chunk
        tokens.append(token)
        if len(parts) < chunk.parts:
            while len(self._pending) > self._max_pending:
                self._orphan(next(iter(self._pending)),
                             f"more than {self._max_pending} split chunks were waiting")
            return None
        del self._pending[key]
        payload = b"".join(parts[i].payload for i in range(1, chunk.parts + 1))
        return replace(chunk, payload=payload, part=1, parts=1)

    def expire(self, now: float, max_age_s: float) -> None:
        """Give up parts that have waited longer than ``max_age_s``."""
        for key in [k for k, (_, _, since) in self._pending.items() if now - since > max_age_s]:
            self._orphan(key, f"the other parts did not arrive within {max_age_s:g} s")

    def tokens(self, stream_id: str) -> list:
        """Tokens of the stream's parts still waiting, in arrival order."""
        return [t for (sid, _), (_, tokens, _) in self._pending.items() if sid == stream_id
                for t in tokens]

    def forget(self, stream_ids) -> None:
        """Drop the parts of streams this process no longer owns (no orphans)."""
        for key in [k for k in self._pending if k[0] in stream_ids]:
            del self._pending[key]

    def take_orphans(self) -> list[Orphan]:
        orphans, self._orphans = self._orphans, []
        return orphans

    def _orphan(self, key: tuple[str, int], reason: str) -> None:
        parts, tokens, _ = self._pending.pop(key)
        n = next(iter(parts.values())).parts
        self._orphans.append(Orphan(key[0], key[1], n, tuple(tokens),
                                    f"chunk {key[1]}: {len(parts)} of {n} parts received; "
                                    f"given up: {reason}"))


def source_capture(container, pts: int | None, time_base: Fraction) -> float | None:
    """The wall clock (unix s) at which the source says it produced the frame at ``pts``, or
    None where the container reports no wall clock (yet).

    FFmpeg's ``start_time_realtime`` is the wall clock of pts 0, in microseconds.  RTSP sets
    it when the first RTCP sender report arrives (it may be some packets into the stream):
    the report's NTP time, less the media time from pts 0 to the RTP timestamp the report
    pairs with it; later pts follow that mapping, so pts 0 stays where it was put.  (A
    server whose PLAY reply has a Range start other than 0 shifts pts by it, unseen here.)
    """
    realtime = container.start_time_realtime
    if realtime is None or pts is None:
        return None
    return float(Fraction(realtime, 1_000_000) + pts * time_base)


def gop_chunks(container, *, stream_id: str, min_chunk_s: float = 1.0,
               max_chunk_s: float | None = None,
               clock: Callable[[], float] | None = None) -> Iterator[Chunk]:
    """Cut a demuxed video stream into chunks of whole GOPs of at least ``min_chunk_s``.

    With ``max_chunk_s`` (live sources), a chunk also leaves once it holds ``max_chunk_s``
    of media without reaching a keyframe: ``unfinished``, and the next one ``continued``.
    A continued chunk ends at the next keyframe, so every GOP start is a chunk start.
    With ``clock`` (a live source: ``time.time``), each chunk's ``capture`` is the source's
    own wall clock at its first pts (:func:`source_capture`) where the container reports one
    within MAX_SOURCE_SKEW_S of the clock, else the clock when its first packet came out of
    the demuxer; each change of which it is gets a log line.  Packets before the first
    keyframe are dropped (no decoder could use them).  Blocking: reads the container as it
    goes.
    """
    stream = container.streams.video[0]
    ctx = stream.codec_context
    time_base = stream.time_base
    origin = stream.start_time
    extradata = bytes(ctx.extradata or b"")
    seq, current, continued, captured, stamped_by = 0, [], False, None, None

    def capture(pts: int | None) -> float | None:
        """The chunk's capture time, from the source's clock or the ingest time."""
        nonlocal stamped_by
        if captured is None:
            return None
        own = source_capture(container, pts, time_base)
        skew = None if own is None else own - captured
        by = "ingest" if skew is None else "source" if abs(skew) <= MAX_SOURCE_SKEW_S else "skewed"
        if by != stamped_by:
            stamped_by = by
            if by == "source":
                log.debug("stream %s: capture times from the source's own clock (RTSP: RTCP "
                          "sender reports), %+.3f s from the ingest clock", stream_id, skew)
            elif by == "skewed":
                log.warning("stream %s: the source's clock is %+.1f s from this machine's "
                            "(more than %g s): capture times are ingest times; set the "
                            "camera's clock (NTP)", stream_id, skew, MAX_SOURCE_SKEW_S)
            else:
                log.debug("stream %s: capture times are ingest times (the source reports no "
                          "wall clock yet)", stream_id)
        return own if by == "source" else captured

    def make(packets: list[Packet], *, unfinished: bool) -> Chunk:
        nonlocal origin
        pts = next((p.pts for p in packets if p.pts is not None), None)
        first = pts if pts is not None else packets[0].dts or 0
        origin = first if origin is None else origin
        return Chunk(stream_id, seq, ctx.name, extradata, time_base, origin, first,
                     ctx.width, ctx.height, pack(packets), continued=continued,
                     unfinished=unfinished, capture=capture(pts))

    try:
        for av_packet in container.demux(stream):
            if av_packet.size == 0:
                continue        # the demuxer's flush packet
            packet = Packet(av_packet.pts, av_packet.dts, av_packet.duration or 0,
                            av_packet.is_keyframe, bytes(av_packet))
            if not current and not packet.keyframe and not continued:
                continue
            if current:
                # (from the first dts known: RTSP's first packet may have none)
                start = next((p.dts for p in current if p.dts is not None), None)
                span = (0 if start is None or packet.dts is None
                        else (packet.dts - start) * time_base)
                cut = packet.keyframe and (continued or span >= min_chunk_s)
                if cut or (max_chunk_s is not None and not packet.keyframe
                           and span >= max_chunk_s):
                    yield make(current, unfinished=not cut)
                    seq += 1
                    current, continued = [], not cut
            if not current and clock is not None:
                captured = clock()
            current.append(packet)
    except Exception:
        # The source broke off (a camera's connection dropped: FFmpeg's error): what was read
        # of the GOP still goes out, closing it, before the caller hears of the error.
        if current:
            yield make(current, unfinished=False)
        raise
    if current:
        yield make(current, unfinished=False)
