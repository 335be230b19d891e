"""Fuzz target ``packets``: the ``fs-packets-1`` framing, :func:`facestream.ingest.chunks.unpack`
and :meth:`Chunk.packets`.

Contract: any bytes unpack to a list of packets (the first a keyframe) or raise ChunkError
(at most 300 characters); when unpacking succeeds ``pack`` gives back the same bytes.
``Chunk.packets()`` (any time base and first pts a message may carry) returns the same packets,
each timestamp within MAX_CHUNK_S of the chunk's fs-pts, or raises ChunkError.

Input layout: time base numerator and denominator (4 bytes each), the chunk's fs-pts
(8 bytes), then the payload: the rest.

    python tests/fuzz/fuzz_packets.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import sys
from fractions import Fraction

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream.ingest import chunks
else:
    from facestream.ingest import chunks

TERM = (1, 2 ** 31)
PTS = (chunks.NO_TS + 1, -chunks.NO_TS - 1)
MAX_ERROR = 300


def write_input(payload: bytes, *, time_base: Fraction, first_pts: int) -> bytes:
    return (Writer().int_in(time_base.numerator, *TERM).int_in(time_base.denominator, *TERM)
            .int_in(first_pts, *PTS).raw(payload).bytes())


def TestOneInput(data: bytes) -> None:
    p = Provider(data)
    time_base = Fraction(p.int_in(*TERM), p.int_in(*TERM))
    first_pts = p.int_in(*PTS)
    payload = p.rest()
    try:
        packets = chunks.unpack(payload)
    except chunks.ChunkError as exc:
        assert len(str(exc)) <= MAX_ERROR, str(exc)[:400]
        packets = None
    else:
        assert packets and packets[0].keyframe
        assert all(p.duration >= 0 for p in packets)
        repacked = chunks.pack(packets)
        assert repacked == payload, f"re-packed {len(repacked)} bytes differ from {len(payload)}"

    chunk = chunks.Chunk("cam", 0, "h264", b"", time_base, 0, first_pts, 16, 16, payload)
    try:
        framed = chunk.packets()
    except chunks.ChunkError as exc:
        assert len(str(exc)) <= MAX_ERROR, str(exc)[:400]
        return
    assert framed == packets, "Chunk.packets() and unpack() disagree"
    reach = chunks.MAX_CHUNK_S / time_base
    for packet in framed:
        for ts in (packet.pts, packet.dts):
            assert ts is None or abs(ts - first_pts) <= reach, (ts, first_pts, time_base)


if __name__ == "__main__":
    atheris.instrument_all()        # the standard library's parsing too: more branches to see
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
