"""Encoded video in transit: a stream cut at keyframes into chunks of whole GOPs.

A :class:`Chunk` carries the packets of one or more whole GOPs exactly as the demuxer gave
them (never re-encoded), framed as ``fs-packets-1``: per packet a little-endian header
(pts, dts, duration: int64; flags: uint8, bit 0 = keyframe; size: uint32) then its bytes.
Everything a decoder needs travels in the headers (codec, extradata, time base), so any
worker can start decoding a stream at any chunk.

Kafka headers (ARCHITECTURE.md): ``fs-stream``, ``fs-seq``, ``fs-part`` ("i/n", from 1),
``fs-codec``, ``fs-extradata``, ``fs-time-base`` ("num/den"), ``fs-origin-pts`` (the pts that
is media time 0 for the whole stream), ``fs-pts`` (first pts of the chunk), ``fs-size``
("WxH"), ``fs-format``, ``fs-live`` ("1": a live source).  A chunk larger than the broker's message limit is split into parts
that :class:`PartAssembler` puts back together.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Iterable, Iterator

FORMAT = "fs-packets-1"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,120}")
NO_TS = -(2 ** 63)
_PACKET = struct.Struct("<qqqBI")
_REQUIRED = ("fs-stream", "fs-seq", "fs-part", "fs-codec", "fs-time-base", "fs-origin-pts",
             "fs-pts", "fs-size", "fs-format")


END_HEADER = "fs-end"


@dataclass(frozen=True)
class EndOfStream:
    """The publisher's last message for a stream: no more chunks follow ``last_seq``."""

    stream_id: str
    last_seq: int

    def headers(self) -> list[tuple[str, bytes]]:
        return [("fs-stream", self.stream_id.encode()), ("fs-seq", str(self.last_seq).encode()),
                (END_HEADER, b"1"), ("fs-format", FORMAT.encode())]


def parse_message(headers: Iterable[tuple[str, bytes]] | None,
                  value: bytes | None) -> "Chunk | EndOfStream":
    """A video-topic message as a Chunk (or part of one) or an EndOfStream marker."""
    h = dict(headers or ())
    if END_HEADER in h:
        try:
            marker = EndOfStream(h["fs-stream"].decode(), int(h["fs-seq"]))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise ChunkError(f"malformed end-of-stream marker: {exc}") from None
        if not _SAFE_ID.fullmatch(marker.stream_id):
            raise ChunkError(f"fs-stream {marker.stream_id!r}: not a stream id")
        return marker
    return Chunk.from_message(h.items(), value)


class ChunkError(ValueError):
    """A message that is not a usable chunk; the text says which header or byte is wrong."""


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

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("fs-stream", self.stream_id.encode()), ("fs-seq", str(self.seq).encode()),
            ("fs-part", f"{self.part}/{self.parts}".encode()), ("fs-codec", self.codec.encode()),
            ("fs-extradata", self.extradata),
            ("fs-time-base", f"{self.time_base.numerator}/{self.time_base.denominator}".encode()),
            ("fs-origin-pts", str(self.origin_pts).encode()), ("fs-pts", str(self.first_pts).encode()),
            ("fs-size", f"{self.width}x{self.height}".encode()), ("fs-format", FORMAT.encode()),
            ("fs-live", b"1" if self.live else b"0"),
        ]

    @classmethod
    def from_message(cls, headers: Iterable[tuple[str, bytes]], value: bytes | None) -> "Chunk":
        """Parse a Kafka message; ChunkError naming the first problem found."""
        h = {k: v for k, v in headers or ()}
        missing = [k for k in _REQUIRED if k not in h]
        if missing:
            raise ChunkError(f"missing headers: {', '.join(missing)}")
        if h["fs-format"] != FORMAT.encode():
            raise ChunkError(f"fs-format is {h['fs-format']!r}, expected {FORMAT}")
        try:
            part, parts = (int(x) for x in h["fs-part"].decode().split("/"))
            width, height = (int(x) for x in h["fs-size"].decode().split("x"))
            num, den = (int(x) for x in h["fs-time-base"].decode().split("/"))
            chunk = cls(stream_id=h["fs-stream"].decode(), seq=int(h["fs-seq"]),
                        codec=h["fs-codec"].decode(), extradata=h.get("fs-extradata") or b"",
                        time_base=Fraction(num, den), origin_pts=int(h["fs-origin-pts"]),
                        first_pts=int(h["fs-pts"]), width=width, height=height,
                        payload=value or b"", part=part, parts=parts,
                        live=h.get("fs-live") == b"1")
        except (ValueError, ZeroDivisionError, UnicodeDecodeError) as exc:
            raise ChunkError(f"malformed header: {exc}") from None
        if not _SAFE_ID.fullmatch(chunk.stream_id):
            raise ChunkError(f"fs-stream {chunk.stream_id!r}: use letters, digits, '.', '_', '-'")
        if not (1 <= chunk.part <= chunk.parts) or chunk.seq < 0:
            raise ChunkError(f"fs-part {part}/{parts} or fs-seq {chunk.seq} out of range")
        if not chunk.payload:
            raise ChunkError("empty payload")
        return chunk

    def split(self, max_bytes: int) -> list["Chunk"]:
        """Parts of at most ``max_bytes`` of payload each (one part if it fits)."""
        if len(self.payload) <= max_bytes:
            return [self]
        pieces = [self.payload[i:i + max_bytes] for i in range(0, len(self.payload), max_bytes)]
        return [replace(self, payload=p, part=i + 1, parts=len(pieces))
                for i, p in enumerate(pieces)]

    def packets(self) -> list[Packet]:
        """The packets of a whole (reassembled) chunk; ChunkError if the framing is broken."""
        if self.parts != 1:
            raise ChunkError(f"part {self.part}/{self.parts}: reassemble the chunk first")
        return unpack(self.payload)


def pack(packets: Iterable[Packet]) -> bytes:
    out = bytearray()
    for p in packets:
        out += _PACKET.pack(NO_TS if p.pts is None else p.pts, NO_TS if p.dts is None else p.dts,
                            p.duration, 1 if p.keyframe else 0, len(p.data))
        out += p.data
    return bytes(out)


def unpack(payload: bytes) -> list[Packet]:
    packets, offset, end = [], 0, len(payload)
    while offset < end:
        if end - offset < _PACKET.size:
            raise ChunkError(f"truncated packet header at byte {offset} of {end}")
        pts, dts, duration, flags, size = _PACKET.unpack_from(payload, offset)
        offset += _PACKET.size
        if size > end - offset:
            raise ChunkError(f"packet at byte {offset} claims {size} bytes, {end - offset} remain")
        packets.append(Packet(None if pts == NO_TS else pts, None if dts == NO_TS else dts,
                              duration, bool(flags & 1), payload[offset:offset + size]))
        offset += size
    if not packets:
        raise ChunkError("no packets")
    if not packets[0].keyframe:
        raise ChunkError("chunk does not start at a keyframe")
    return packets


class PartAssembler:
    """Collects the parts of split chunks.  Bounded: at most ``max_pending`` chunks wait."""

    def __init__(self, *, max_pending: int = 64) -> None:
        self._pending: dict[tuple[str, int], dict[int, Chunk]] = {}
        self._max_pending = max_pending

    def add(self, chunk: Chunk) -> Chunk | None:
        """The whole chunk once its last part arrives, else None."""
        if chunk.parts == 1:
            return chunk
        key = (chunk.stream_id, chunk.seq)
        parts = self._pending.setdefault(key, {})
        parts[chunk.part] = chunk
        if len(parts) < chunk.parts:
            while len(self._pending) > self._max_pending:
                self._pending.pop(next(iter(self._pending)))
            return None
        del self._pending[key]
        payload = b"".join(parts[i].payload for i in range(1, chunk.parts + 1))
        return replace(chunk, payload=payload, part=1, parts=1)


def gop_chunks(container, *, stream_id: str, min_chunk_s: float = 1.0) -> Iterator[Chunk]:
    """Cut a demuxed video stream into chunks of whole GOPs of at least ``min_chunk_s``.

    Packets before the first keyframe are dropped (no decoder could use them).  Blocking:
    reads the container as it goes.
    """
    stream = container.streams.video[0]
    ctx = stream.codec_context
    time_base = stream.time_base
    origin = stream.start_time
    extradata = bytes(ctx.extradata or b"")
    seq, current = 0, []

    def make(packets: list[Packet]) -> Chunk:
        nonlocal origin
        first = next((p.pts for p in packets if p.pts is not None), packets[0].dts or 0)
        origin = first if origin is None else origin
        return Chunk(stream_id, seq, ctx.name, extradata, time_base, origin, first,
                     ctx.width, ctx.height, pack(packets))

    for av_packet in container.demux(stream):
        if av_packet.size == 0:
            continue        # the demuxer's flush packet
        packet = Packet(av_packet.pts, av_packet.dts, av_packet.duration or 0,
                        av_packet.is_keyframe, bytes(av_packet))
        if not current and not packet.keyframe:
            continue
        if packet.keyframe and current:
            span = (packet.dts or 0) - (current[0].dts or 0)
            if span * time_base >= min_chunk_s:
                yield make(current)
                seq += 1
                current = []
        current.append(packet)
    if current:
        yield make(current)
