"""Keyframe chunks: framing, headers, parts, and decoding them back to the same frames."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from facestream.ingest.chunks import (Chunk, ChunkError, EndOfStream, Packet, PartAssembler,
                                      gop_chunks, pack, parse_message, unpack)
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.workers.decode import ChunkDecoder, Decoder


def _chunk(payload=None, **kw):
    payload = payload if payload is not None else pack([Packet(0, -1, 1, True, b"key"),
                                                        Packet(1, 0, 1, False, b"delta")])
    fields = dict(stream_id="cam1", seq=3, codec="h264", extradata=b"\x01\x02",
                  time_base=Fraction(1, 90000), origin_pts=0, first_pts=0, width=640,
                  height=360, payload=payload)
    fields.update(kw)
    return Chunk(**fields)


def test_packets_round_trip():
    packets = [Packet(0, None, 3, True, b"\x00" * 10), Packet(None, 5, 0, False, b"")]
    assert unpack(pack(packets)) == packets


def test_headers_round_trip():
    chunk = _chunk()
    back = parse_message(chunk.headers(), chunk.payload)
    assert (back.stream_id, back.seq, back.codec, back.extradata, back.time_base,
            back.width, back.height) == ("cam1", 3, "h264", b"\x01\x02", Fraction(1, 90000), 640, 360)
    assert back.packets()[0].data == b"key"
    end = parse_message(EndOfStream("cam1", 9).headers(), b"")
    assert end == EndOfStream("cam1", 9)


def test_split_and_reassemble_in_any_order():
    big = _chunk(payload=pack([Packet(0, 0, 1, True, bytes(range(256)) * 40)]))
    parts = big.split(1000)
    assert len(parts) == 11 and all(len(p.payload) <= 1000 for p in parts)
    assembler = PartAssembler()
    received = [Chunk.from_message(p.headers(), p.payload) for p in reversed(parts)]
    results = [assembler.add(p) for p in received]
    assert results[:-1] == [None] * 10
    assert results[-1].payload == big.payload and results[-1].parts == 1


@pytest.mark.parametrize("headers, value, message", [
    (lambda c: [h for h in c.headers() if h[0] != "fs-codec"], None, "missing headers: fs-codec"),
    (lambda c: [(k, b"7/x" if k == "fs-part" else v) for k, v in c.headers()], None, "malformed header"),
    (lambda c: [(k, b"3/2" if k == "fs-part" else v) for k, v in c.headers()], None, "out of range"),
    (lambda c: [(k, b"other-1" if k == "fs-format" else v) for k, v in c.headers()], None, "fs-format"),
    (lambda c: c.headers(), b"", "empty payload"),
    (lambda c: [], b"x", "missing headers"),
    (lambda c: [(k, b"../../etc" if k == "fs-stream" else v) for k, v in c.headers()], None,
     "use letters, digits"),
])
def test_bad_messages_are_named(headers, value, message):
    chunk = _chunk()
    with pytest.raises(ChunkError, match=message):
        parse_message(headers(chunk), chunk.payload if value is None else value)


@pytest.mark.parametrize("payload, message", [
    (pack([Packet(0, 0, 1, True, b"abc")])[:-1], "claims 3 bytes"),
    (pack([Packet(0, 0, 1, True, b"abc")])[:10], "truncated packet header"),
    (pack([Packet(0, 0, 1, False, b"abc")]), "does not start at a keyframe"),
])
def test_broken_framing_is_named(payload, message):
    with pytest.raises(ChunkError, match=message):
        _chunk(payload=payload).packets()


@pytest.mark.parametrize("clip", ["WolfgangLanger_Pexels.mp4", "noface_face.mov"])
def test_chunks_decode_to_exactly_the_frames_of_the_file(clip, sample):
    path = sample(clip)
    with av.open(str(path)) as container:
        chunks = list(gop_chunks(container, stream_id="s"))
    assert len(chunks) > 2 and [c.seq for c in chunks] == list(range(len(chunks)))
    decoder = ChunkDecoder("s", fps=10)
    got = []
    for chunk in chunks:                        # through the wire format, split in parts
        assembler, whole = PartAssembler(), None
        for part in chunk.split(50_000):
            whole = assembler.add(parse_message(part.headers(), part.payload))
        got += decoder.decode(whole)
    reference = list(Decoder(parse_source(str(path)), stream_id="s", fps=10,
                             backoff=Backoff(0, 0, 0)).frames())
    assert len(got) == len(reference)
    for a, b in zip(got, reference):
        assert (a.pts, a.time_s) == (b.pts, b.time_s)
        assert np.array_equal(a.image, b.image)


def test_corrupt_chunk_yields_nothing_and_the_next_one_decodes(sample):
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        chunks = list(gop_chunks(container, stream_id="s"))
    decoder = ChunkDecoder("s", fps=10)
    zeroed = pack([Packet(p.pts, p.dts, p.duration, p.keyframe, bytes(len(p.data)))
                   for p in chunks[0].packets()])
    try:
        decoded = decoder.decode(Chunk(**{**chunks[0].__dict__, "payload": zeroed}))
    except av.error.FFmpegError:
        decoded = []
    assert decoded == []
    frames = decoder.decode(chunks[1])
    start = float((chunks[1].first_pts - chunks[1].origin_pts) * chunks[1].time_base)
    assert len(frames) >= 25 and frames[0].time_s == pytest.approx(start, abs=0.05)
    assert all(f.image.std() > 10 for f in frames)      # real pictures, not grey mush
