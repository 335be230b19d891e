"""Keyframe chunks: framing, headers, parts, and decoding them back to the same frames."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from facestream.ingest.chunks import (Chunk, ChunkError, EndOfStream, MediaClock, Packet,
                                      PartAssembler,
                                      gop_chunks, pack, parse_message, unpack)
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.vision.decode import ChunkDecoder, Decoder


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


def _with(name, value):
    """The chunk's headers with ``name`` set to ``value`` (None: without it)."""
    def headers(chunk):
        out = [(k, v) for k, v in chunk.headers() if k != name]
        return out if value is None else out + [(name, value)]
    return headers


# Every bound a header has (docs/RELIABILITY.md), with what the error must say.
@pytest.mark.parametrize("headers, value, message", [
    (_with("fs-codec", None), None, "missing headers: fs-codec"),
    (lambda c: [], b"x", "missing headers"),
    (_with("fs-format", b"other-1"), None, "fs-format"),
    (lambda c: c.headers(), b"", "empty payload"),
    (lambda c: c.headers() + [("fs-seq", b"4")], None, "appears twice"),
    # time base: both terms positive and at most 2^31
    (_with("fs-time-base", b"1/" + b"9" * 30), None, "fs-time-base '9{30}': not an integer"),
    (_with("fs-time-base", b"1/4294967296"), None, r"fs-time-base 4294967296 is outside 1\.\.2147483648"),
    (_with("fs-time-base", b"0/1"), None, "fs-time-base 0 is outside"),
    (_with("fs-time-base", b"1/0"), None, "fs-time-base 0 is outside"),
    (_with("fs-time-base", b"-1/90000"), None, "fs-time-base -1 is outside"),
    (_with("fs-time-base", b"90000"), None, "two numbers joined by '/'"),
    # pts: int64, and media time within 2^31 s of the origin
    (_with("fs-pts", str(2 ** 63).encode()), None, "fs-pts .* is outside"),
    (_with("fs-pts", str(2 ** 63 - 10).encode()), None, "s of media time after fs-origin-pts"),
    (_with("fs-origin-pts", str(-(2 ** 63)).encode()), None, "fs-origin-pts .* is outside"),
    (_with("fs-pts", b"1e9"), None, "not an integer"),
    # seq and parts
    (_with("fs-seq", b"-1"), None, "fs-seq -1 is outside"),
    (_with("fs-part", b"3/2"), None, "fs-part 3 is outside 1..2"),
    (_with("fs-part", b"0/2"), None, "fs-part 0 is outside"),
    (_with("fs-part", b"1/5000"), None, "fs-part 5000 is outside 1..4096"),
    (_with("fs-part", b"7/x"), None, "fs-part 'x': not an integer"),
    # frame size, codec, extradata, other headers
    (_with("fs-size", b"0x360"), None, "fs-size 0 is outside 1..16384"),
    (_with("fs-size", b"640x16385"), None, "fs-size 16385 is outside"),
    (_with("fs-codec", b"rawvideo"), None, "fs-codec 'rawvideo' is not one of"),
    (_with("fs-codec", b"\xff"), None, "fs-codec .*: not ASCII"),
    (_with("fs-extradata", b"x" * (1 << 20 | 1)), None, "fs-extradata' is 1048577 bytes; at most 1048576"),
    (_with("fs-live", b"yes"), None, "fs-live b'yes': expected 0 or 1"),
    (_with("fs-continued", b"2"), None, "fs-continued b'2': expected 0 or 1"),
    (_with("fs-unfinished", b"true"), None, "fs-unfinished b'true': expected 0 or 1"),
    (_with("fs-capture", b"-5"), None, "fs-capture '-5': not unix seconds"),
    (_with("fs-capture", b"1e12"), None, "fs-capture '1e12': not unix seconds"),
    (_with("fs-capture", b"12345678901.5"), None, "not unix seconds"),
    (lambda c: c.headers() + [("x-note", b"n" * 200_000)], None, "x-note' is 200000 bytes"),
    # stream ids are refused, never rewritten
    (_with("fs-stream", b"../wl"), None, "fs-stream '../wl': not a stream id"),
    (_with("fs-stream", b"-wl"), None, "not a stream id"),
    (_with("fs-stream", b"w" * 129), None, "not a stream id"),
])
def test_bad_messages_are_named(headers, value, message):
    chunk = _chunk()
    with pytest.raises(ChunkError, match=message) as refused:
        parse_message(headers(chunk), chunk.payload if value is None else value)
    assert len(str(refused.value)) < 250, "error text must stay bounded"


def test_bounds_hold_at_their_limits():
    chunk = _chunk(stream_id="w" * 128, seq=2 ** 63 - 1, time_base=Fraction(1, 2 ** 31),
                   width=16384, height=1, extradata=b"x" * (1 << 20), part=4096, parts=4096)
    back = parse_message(chunk.headers(), chunk.payload)
    assert (back.stream_id, back.seq, back.time_base, back.width, back.part) == (
        "w" * 128, 2 ** 63 - 1, Fraction(1, 2 ** 31), 16384, 4096)


def test_the_message_key_must_be_the_stream_id():
    chunk = _chunk()
    assert parse_message(chunk.headers(), chunk.payload, key=b"cam1").stream_id == "cam1"
    with pytest.raises(ChunkError, match="message key b'wl' differs from fs-stream 'cam1'"):
        parse_message(chunk.headers(), chunk.payload, key=b"wl")
    with pytest.raises(ChunkError, match="differs"):
        parse_message(EndOfStream("cam1", 1).headers(), b"", key=None or b"")


def test_end_markers_are_bounded_too():
    with pytest.raises(ChunkError, match="fs-seq -3 is outside"):
        parse_message([(k, b"-3" if k == "fs-seq" else v)
                       for k, v in EndOfStream("cam1", 1).headers()], b"")
    with pytest.raises(ChunkError, match="not a stream id"):
        parse_message(EndOfStream("../x", 1).headers(), b"")


def test_clock_markers_round_trip_and_are_bounded():
    marker = MediaClock("cam1", 7, 12_345_678)
    assert parse_message(marker.headers(), b"", key=b"cam1") == marker
    assert marker.media_s == 12.345678
    limit = 2 ** 31 * 10 ** 6
    assert parse_message(MediaClock("cam1", 0, -limit).headers(), b"").media_us == -limit

    def changed(name, value, base=marker):
        return [(k, value if k == name else v) for k, v in base.headers()]

    with pytest.raises(ChunkError, match="fs-clock '1.5': not an integer"):
        parse_message(changed("fs-clock", b"1.5"), b"")
    with pytest.raises(ChunkError, match=f"fs-clock {limit + 1} is outside"):
        parse_message(changed("fs-clock", str(limit + 1).encode()), b"")
    with pytest.raises(ChunkError, match="fs-seq -1 is outside"):
        parse_message(changed("fs-seq", b"-1"), b"")
    with pytest.raises(ChunkError, match="missing headers: fs-seq"):
        parse_message([(k, v) for k, v in marker.headers() if k != "fs-seq"], b"")
    with pytest.raises(ChunkError, match="fs-end and fs-clock together"):
        parse_message(marker.headers() + [("fs-end", b"1")], b"")
    with pytest.raises(ChunkError, match="differs"):
        parse_message(marker.headers(), b"", key=b"cam2")


def test_packet_timestamps_far_from_the_chunk_are_refused():
    far = 3601 * 90000
    with pytest.raises(ChunkError, match="packet 1: pts .* more than 3600 s"):
        _chunk(payload=pack([Packet(0, 0, 1, True, b"k"), Packet(far, 1, 1, False, b"d")])).packets()
    with pytest.raises(ChunkError, match="negative duration"):
        _chunk(payload=pack([Packet(0, 0, -5, True, b"k")])).packets()


def test_orphan_parts_are_given_up_with_their_tokens():
    big = _chunk(payload=pack([Packet(0, 0, 1, True, bytes(2900))]))
    first, second, third = big.split(1000)
    assembler = PartAssembler()
    assert assembler.add(first, token="r1", now=0.0) is None
    assert assembler.tokens("cam1") == ["r1"]
    assembler.expire(10.0, 30.0)
    assert assembler.take_orphans() == []                   # not old enough yet
    assert assembler.add(second, token="r2", now=20.0) is None
    assembler.expire(31.0, 30.0)                            # first part came at 0.0
    [orphan] = assembler.take_orphans()
    assert (orphan.stream_id, orphan.seq, orphan.tokens) == ("cam1", 3, ("r1", "r2"))
    assert "2 of 3 parts received" in orphan.reason and "within 30 s" in orphan.reason
    assert assembler.tokens("cam1") == []


def test_a_new_chunk_of_the_stream_gives_up_the_unfinished_one():
    big = _chunk(payload=pack([Packet(0, 0, 1, True, bytes(2900))]))
    assembler = PartAssembler()
    assembler.add(big.split(1000)[0], token="a")
    whole = _chunk(seq=4)
    assert assembler.add(whole, token="b") is whole
    [orphan] = assembler.take_orphans()
    assert orphan.tokens == ("a",) and "chunk 4 began" in orphan.reason
    other = _chunk(stream_id="cam2", payload=big.payload).split(1000)[0]
    assembler.add(other, token="c")                         # another stream: unaffected
    assembler.add(big.split(1000)[0], token="d")
    assert assembler.take_orphans() == [] and assembler.tokens("cam2") == ["c"]


def test_conflicting_parts_and_too_many_pending_are_given_up():
    big = _chunk(payload=pack([Packet(0, 0, 1, True, bytes(2900))]))
    parts = big.split(1000)
    assembler = PartAssembler(max_pending=2)
    assembler.add(parts[0], token=1)
    assembler.add(parts[0], token=2)                        # the same part twice
    [conflict] = assembler.take_orphans()
    assert conflict.tokens == (1,) and "conflicts" in conflict.reason
    for i, stream in enumerate(["s1", "s2", "s3"]):
        assembler.add(_chunk(stream_id=stream, payload=big.payload).split(1000)[0], token=stream)
    evicted = assembler.take_orphans()
    assert [o.stream_id for o in evicted] == ["cam1", "s1"]          # the oldest two
    assert all("more than 2" in o.reason for o in evicted)


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


def test_corrupt_chunk_is_refused_by_the_decoder_and_the_next_one_decodes(sample):
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        chunks = list(gop_chunks(container, stream_id="s"))
    decoder = ChunkDecoder("s", fps=10)
    zeroed = pack([Packet(p.pts, p.dts, p.duration, p.keyframe, bytes(len(p.data)))
                   for p in chunks[0].packets()])
    with pytest.raises(av.error.InvalidDataError):     # the worker dead-letters it
        decoder.decode(Chunk(**{**chunks[0].__dict__, "payload": zeroed}))
    assert decoder.report.picked == 0
    frames = decoder.decode(chunks[1])
    start = float((chunks[1].first_pts - chunks[1].origin_pts) * chunks[1].time_base)
    assert len(frames) >= 25 and frames[0].time_s == pytest.approx(start, abs=0.05)
    assert all(f.image.std() > 10 for f in frames)      # real pictures, not grey mush


def test_continuation_flags_and_the_capture_time_round_trip():
    chunk = _chunk(payload=pack([Packet(3, 2, 1, False, b"delta")]), continued=True,
                   unfinished=True, capture=1764570000.125)
    back = parse_message(chunk.headers(), chunk.payload)
    assert (back.continued, back.unfinished, back.capture) == (True, True, 1764570000.125)
    assert back.packets()[0].data == b"delta"     # a continued chunk starts without a keyframe
    plain = parse_message(_chunk().headers(), _chunk().payload)
    assert (plain.continued, plain.unfinished, plain.capture) == (False, False, None)
    with pytest.raises(ChunkError, match="does not start at a keyframe"):
        parse_message(_chunk(payload=chunk.payload).headers(), chunk.payload).packets()


@pytest.mark.parametrize("max_chunk_s", [0.2, 0.5, 1.0])
def test_chunks_cut_within_a_gop_decode_to_the_same_frames(sample, max_chunk_s):
    """A GOP sent as unfinished/continued chunks decodes, through one open decoder, to the
    frames (and pictures) whole-GOP chunks give; each chunk's first packet is stamped with
    the clock, and each frame's capture time follows it by its media time."""
    path = sample("face_noface.mov")             # B-frames: reordering across chunk edges
    with av.open(str(path)) as container:
        whole = list(gop_chunks(container, stream_id="s"))
    ticks = iter(range(1000, 10_000))
    with av.open(str(path)) as container:
        cut = list(gop_chunks(container, stream_id="s", max_chunk_s=max_chunk_s,
                              clock=lambda: float(next(ticks))))
    assert len(cut) > len(whole) and any(c.continued for c in cut)
    assert [c.capture for c in cut] == [float(1000 + i) for i in range(len(cut))]
    reference = ChunkDecoder("s", fps=10)
    expected = [f for c in whole for f in reference.decode(c)]
    decoder = ChunkDecoder("s", fps=10)
    got = []
    for chunk in cut:
        frames = decoder.decode(parse_message(chunk.headers(), chunk.payload))
        assert decoder.mid_gop == chunk.unfinished
        for frame in frames:
            # the chunk the frame came out of (or the one that closed its GOP)
            assert frame.captured == pytest.approx(
                chunk.capture + max(0.0, frame.time_s - chunk.start_s))
        got += frames
    assert [(f.pts, f.time_s) for f in got] == [(f.pts, f.time_s) for f in expected]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(got, expected))


def _clocks(chunks, durations=lambda p: p.duration) -> list[tuple[float, bool, list[float]]]:
    """After each chunk: the media clock, whether the stream's durations still hold, and
    the times of the frames it gave (all of them: 1000 fps picks every frame), with the
    packets' durations set by ``durations``."""
    decoder = ChunkDecoder("s", fps=1000)
    out = []
    for chunk in chunks:
        payload = pack([Packet(p.pts, p.dts, durations(p), p.keyframe, p.data)
                        for p in chunk.packets()])
        frames = decoder.decode(Chunk(**{**chunk.__dict__, "payload": payload}))
        out.append((decoder.clock_s, decoder.durations_hold, [f.time_s for f in frames]))
    return out


@pytest.mark.parametrize("clip, max_chunk_s, constant_rate", [
    ("WolfgangLanger_Pexels.mp4", 0.5, True),
    ("face_noface.mov", 0.3, False)])       # 30 fps, then 24 fps: one frame comes early
def test_the_media_clock_is_the_end_of_the_last_frame_and_no_later_frame_precedes_it(
        sample, clip, max_chunk_s, constant_rate):
    """After each chunk the clock is never after a frame decoded later (what keeps a window
    that closes on it holding the same samples).  While the stream's durations hold, it is
    the end of the chunk's last frame (time + the packet's duration), and at most chunk
    edges exactly the next frame's time (what closes a window with the chunk that holds its
    last frame); once a frame came before the previous one ended (the rate change), it is
    the last frame's time."""
    with av.open(str(sample(clip))) as container:
        cut = list(gop_chunks(container, stream_id="s", max_chunk_s=max_chunk_s))
    assert any(c.continued for c in cut)
    steps = _clocks(cut)
    assert all(hold for _, hold, _ in steps) == constant_rate
    ahead = exact = 0
    for k, (clock, hold, times) in enumerate(steps[:-1]):
        later = [t for _, _, ts in steps[k + 1:] for t in ts]
        assert clock <= min(later), f"chunk {k}: clock {clock} after a later frame"
        if times:
            assert clock > times[-1] if hold else clock == times[-1]
            ahead += hold
            exact += hold and clock == min(later)
    assert ahead >= 5 and exact >= ahead // 2


def test_without_durations_or_with_durations_that_overrun_the_clock_is_the_frame_time(sample):
    """Unknown durations (0), or durations longer than the gap to the next frame (here
    twice the real ones, as a variable rate stamped with a nominal one can be): the clock
    is the last frame's time, the rule that holds whatever the durations (from the second
    frame on, for the overrun: it shows when that frame comes before the first one ends)."""
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        cut = list(gop_chunks(container, stream_id="s", max_chunk_s=0.5))
    for durations in (lambda p: 0, lambda p: 2 * p.duration):
        steps = _clocks(cut, durations)
        assert all(clock == times[-1] for clock, _, times in steps if times)


def test_a_continued_chunk_with_no_open_gop_is_refused(sample):
    with av.open(str(sample("face_noface.mov"))) as container:
        cut = list(gop_chunks(container, stream_id="s", max_chunk_s=0.3))
    decoder = ChunkDecoder("s", fps=10)
    with pytest.raises(ChunkError, match="continues a GOP this decoder never started"):
        decoder.decode(cut[1])
    decoder.decode(cut[0])
    decoder.abandon()
    assert not decoder.mid_gop
    with pytest.raises(ChunkError, match="never started"):
        decoder.decode(cut[1])
