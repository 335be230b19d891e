"""Fuzz target ``decode``: the chunk decoder, :class:`facestream.vision.decode.ChunkDecoder`,
on chunks that :func:`parse_message` accepted, seeded from real chunks of the sample clips.

Contract: ``ChunkDecoder(stream_id, fps=5).decode(chunk)`` returns frames (RGB, in media time)
or raises ChunkError, av.error.FFmpegError or InputError; nothing else, and no crash or hang.

Input layout: codec (1 byte, index into CODECS_TRIED), time base (1 byte, index into
TIME_BASES), mode (1 byte), extradata blob, then the payload (fs-packets-1): the rest, at
most MAX_PAYLOAD bytes (a bound on the cost of one input).  The chunk's fs-pts is its first
packet's pts.  FFmpeg is not instrumented, so the fuzzer sees no coverage inside it: in
mode 1 (odd) the harness mends the framing (sizes, flags, timestamps) before the message is
made, so that bytes inserted into or cut from a packet reach the decoder instead of the
framing's checks, which the ``packets`` target covers.

    python tests/fuzz/fuzz_decode.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import struct
import sys
from fractions import Fraction

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        import av

        from facestream.errors import InputError
        from facestream.ingest import chunks
        from facestream.vision.decode import ChunkDecoder
else:
    import av

    from facestream.errors import InputError
    from facestream.ingest import chunks
    from facestream.vision.decode import ChunkDecoder

CODECS_TRIED = ("hevc", "h264", "mpeg4", "mjpeg", "vp9", "av1", "png", "h263", "mpeg2video",
                "mpeg1video", "vp8", "theora")
TIME_BASES = (Fraction(1, 15360), Fraction(1, 90000), Fraction(1, 1000), Fraction(1, 25),
              Fraction(1001, 30000), Fraction(1, 1))
MAX_EXTRADATA = 4096
MAX_PAYLOAD = 200_000
ALLOWED = (chunks.ChunkError, av.error.FFmpegError, InputError)


def write_input(payload: bytes, *, codec: str, time_base: Fraction, extradata: bytes,
                mend: bool = True) -> bytes:
    return (Writer().pick(codec, CODECS_TRIED).pick(time_base, TIME_BASES).flag(mend)
            .blob(extradata).raw(payload).bytes())


def mended(payload: bytes, time_base: Fraction) -> bytes:
    """``payload`` framed as it claims, where it can be: sizes cut to what is there, flags
    to the keyframe bit (the first packet a keyframe), durations >= 0, timestamps moved to
    the first pts when they lie out of the chunk's reach."""
    head = chunks._PACKET
    packets, offset = [], 0
    reach = int(chunks.MAX_CHUNK_S / time_base)
    while offset + head.size <= len(payload):
        pts, dts, duration, flags, size = head.unpack_from(payload, offset)
        offset += head.size
        data = payload[offset:offset + size]
        offset += len(data)
        pts = None if pts == chunks.NO_TS else pts
        dts = None if dts == chunks.NO_TS else dts
        if packets:
            first = packets[0].pts if packets[0].pts is not None else 0
            pts = pts if pts is None or abs(pts - first) <= reach else first
            dts = dts if dts is None or abs(dts - first) <= reach else first
        packets.append(chunks.Packet(pts, dts, abs(duration) if duration != -2 ** 63 else 0,
                                     bool(flags & 1) or not packets, data))
    return chunks.pack(packets) if packets else payload


def message(data: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    p = Provider(data)
    codec = p.pick(CODECS_TRIED)
    time_base = p.pick(TIME_BASES)
    mend = p.flag()
    extradata = p.blob(MAX_EXTRADATA)
    payload = p.take(MAX_PAYLOAD)
    if mend:
        payload = mended(payload, time_base)
    first_pts = struct.unpack_from("<q", payload.ljust(8, b"\0"))[0]
    if first_pts == chunks.NO_TS:
        first_pts = 0
    headers = [("fs-stream", b"cam"), ("fs-seq", b"0"), ("fs-part", b"1/1"),
               ("fs-codec", codec.encode()), ("fs-extradata", extradata),
               ("fs-time-base", f"{time_base.numerator}/{time_base.denominator}".encode()),
               ("fs-origin-pts", b"0"), ("fs-pts", str(first_pts).encode()),
               ("fs-size", b"960x540"), ("fs-format", chunks.FORMAT.encode())]
    return headers, payload


def TestOneInput(data: bytes) -> None:
    headers, payload = message(data)
    try:
        chunk = chunks.parse_message(headers, payload, key=b"cam")
    except chunks.ChunkError:
        return          # the message parser's own target covers these
    decoder = ChunkDecoder("cam", fps=5)
    try:
        frames = decoder.decode(chunk)
    except ALLOWED:
        return
    for frame in frames:
        image = frame.image
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8", \
            (image.shape, image.dtype)
        assert frame.stream_id == "cam" and frame.pts is not None


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
