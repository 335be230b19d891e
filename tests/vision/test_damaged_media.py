"""Damage in the middle of a real clip is skipped, counted and named, and decoding goes on to
the end; a container whose timing cannot place frames is unusable input (exit 2).

Every damaged file is a copy of the sample clip (WolfgangLanger_Pexels.mp4: 19.6 s of
H.264, a keyframe every 3 s) made in tmp_path, and every damaged decode is compared with
an undamaged decode of the same clip.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from facestream import events
from facestream.errors import InputError
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.vision.decode import Decoder
from tests.helpers import check_events_file, read_events, run_cli
from tests.media import remux_video

CLIP = "WolfgangLanger_Pexels.mp4"


def _box(data: bytes, kind: bytes, start: int = 0) -> tuple[int, int]:
    """(offset, size) of the first ``kind`` box at or after ``start`` (32-bit sizes)."""
    at = data.index(kind, start) - 4
    return at, struct.unpack(">I", data[at:at + 4])[0]


def _flip_1000_bytes_at_25_percent(data: bytes) -> bytes:
    at, size = _box(data, b"mdat")
    offset = at + 8 + (size - 8) // 4
    out = bytearray(data)
    out[offset:offset + 1000] = bytes(b ^ 0xFF for b in out[offset:offset + 1000])
    return bytes(out)


def _zero_64k_at_20_percent(data: bytes) -> bytes:
    offset = len(data) // 5
    out = bytearray(data)
    out[offset:offset + 65536] = bytes(65536)
    assert _box(data, b"mdat")[0] < offset, "the damage must hit media data"
    return bytes(out)


def _oversized_sample_in_index(data: bytes) -> bytes:
    """The video track's stsz gives one sample a 16 MB size: the demuxer runs off the end
    of the file a third of the way in (a damaged index, the media data intact)."""
    at, _ = _box(data, b"stsz")          # the first track is the video track
    count = struct.unpack(">I", data[at + 16:at + 20])[0]
    out = bytearray(data)
    struct.pack_into(">I", out, at + 20 + 4 * (count // 3), 0x01000000)
    return bytes(out)


def _video_mdhd_timescale_zero(data: bytes) -> bytes:
    # hdlr: size(4) type(4) version+flags(4) pre_defined(4) handler_type(4): the video
    # track's mdhd is the one before its hdlr
    hdlr = data.index(b"hdlr")
    while data[hdlr + 12:hdlr + 16] != b"vide":
        hdlr = data.index(b"hdlr", hdlr + 4)
    mdhd = data.rindex(b"mdhd", 0, hdlr) - 4
    assert data[mdhd + 8] == 0, "version 0 mdhd expected"
    # size(4) type(4) version(1) flags(3) creation(4) modification(4) timescale(4)
    assert struct.unpack(">I", data[mdhd + 20:mdhd + 24])[0] == 24000
    out = bytearray(data)
    out[mdhd + 20:mdhd + 24] = bytes(4)
    return bytes(out)


def _random_tail(data: bytes) -> bytes:
    at, size = _box(data, b"mdat")
    half = at + size // 2
    rng = np.random.default_rng(0)
    return data[:half] + rng.integers(0, 256, at + size - half, dtype=np.uint8).tobytes() \
        + data[at + size:]


def _damaged(sample, tmp_path, damage) -> str:
    path = tmp_path / f"{damage.__name__.strip('_')}.mp4"
    path.write_bytes(damage(sample(CLIP).read_bytes()))
    return str(path)


def _decode(path: str, fps: float = 1000):
    """Every frame (fps 1000 picks them all): {pts: a small green-channel thumbnail} and
    the report."""
    with Decoder(parse_source(path), stream_id="d", fps=fps, backoff=Backoff(0, 0, 0)) as dec:
        frames = {f.pts: f.image[::4, ::4, 1].astype(np.int16) for f in dec.frames()}
        return frames, dec.report, dec.info


@pytest.fixture(scope="module")
def reference(sample):
    return _decode(str(sample(CLIP)))


def _garbage(frames, reference_frames) -> list[int]:
    """pts of frames that differ visibly from the undamaged decode."""
    return [pts for pts, image in frames.items()
            if np.abs(image - reference_frames[pts]).mean() > 2]


def test_undamaged_clip_reports_no_damage(reference):
    frames, report, info = reference
    assert report.decoded == len(frames) == 472
    assert report.last_time_s == pytest.approx(info.duration_s, abs=0.1)
    assert (report.damaged_packets, report.resync_packets, report.corrupt_frames,
            report.unreadable_gaps, report.damage_spans) == (0, 0, 0, 0, [])
    assert report.warning() is None and report.stopped_early is None


def test_flipped_bytes_are_skipped_and_decoding_goes_on_to_the_end(sample, tmp_path, reference):
    ref_frames, ref_report, _ = reference
    frames, report, _ = _decode(_damaged(sample, tmp_path, _flip_1000_bytes_at_25_percent))
    assert report.last_time_s == pytest.approx(ref_report.last_time_s, abs=1e-3)
    assert report.decoded >= ref_report.decoded - 5          # the decoder recovers by itself
    assert report.damaged_packets >= 1 and report.stopped_early is None
    (start, end), = report.damage_spans
    assert 4.0 < start <= end < 6.0                          # a quarter into the media data
    warning = report.warning()
    assert warning.startswith(f"skipped {report.damaged_packets} damaged packet")
    assert f"{start:.2f}s" in warning and warning.endswith("; the rest was analysed")
    assert len(_garbage(frames, ref_frames)) <= 1            # at most the damaged frame


def test_zeroed_block_is_skipped_up_to_the_next_keyframe(sample, tmp_path, reference):
    ref_frames, ref_report, _ = reference
    frames, report, _ = _decode(_damaged(sample, tmp_path, _zero_64k_at_20_percent))
    assert report.last_time_s == pytest.approx(ref_report.last_time_s, abs=1e-3)
    assert report.decoded >= ref_report.decoded - 72         # at most one GOP (3 s) lost
    assert report.damaged_packets >= 1 and report.resync_packets > 0
    (start, end), = report.damage_spans
    assert 3.0 < start < end < 6.006                         # resynced at the 6.006 s keyframe
    assert min(pts for pts in frames if pts / 24000 > end) == 144144
    warning = report.warning()
    assert f"{report.damaged_packets} damaged packets" in warning
    assert f"{report.resync_packets} packets up to the next keyframe" in warning
    assert f"between {start:.2f}s and {end:.2f}s" in warning
    assert _garbage(frames, ref_frames) == []
    assert len(warning) < 200


def test_damaged_index_is_read_on_after_the_gap(sample, tmp_path, reference):
    ref_frames, ref_report, _ = reference
    frames, report, _ = _decode(_damaged(sample, tmp_path, _oversized_sample_in_index))
    assert report.last_time_s == pytest.approx(ref_report.last_time_s, abs=1e-3)
    assert report.unreadable_gaps == 1 and report.stopped_early is None
    assert report.decoded >= ref_report.decoded - 72
    assert "1 unreadable stretch" in report.warning()
    assert _garbage(frames, ref_frames) == []


def test_a_hopeless_tail_still_stops_with_the_damaged_tail_warning(sample, tmp_path):
    _, report, _ = _decode(_damaged(sample, tmp_path, _random_tail), fps=2)
    assert 5 < report.last_time_s < 12
    assert report.stopped_early and report.warning() == report.stopped_early
    assert "skipped" not in report.warning(), "the tail was not skipped: it ended decoding"


def test_zero_mdhd_timescale_is_unusable_input(sample, tmp_path):
    path = _damaged(sample, tmp_path, _video_mdhd_timescale_zero)
    with pytest.raises(InputError, match="unusable timestamps") as caught:
        Decoder(parse_source(path), stream_id="d", fps=2, backoff=Backoff(0, 0, 0))
    message = str(caught.value)
    assert message.startswith(f"source {path}: ") and "\n" not in message
    assert "ffmpeg -i" in message


def test_frames_without_timestamps_are_unusable_input(sample, tmp_path):
    """A raw H.264 stream (no container timing): every frame comes without a pts."""
    raw = tmp_path / "raw.h264"
    remux_video(sample("single_face.mp4"), raw, container_format="h264")
    decoder = Decoder(parse_source(str(raw)), stream_id="d", fps=2, backoff=Backoff(0, 0, 0))
    with decoder, pytest.raises(InputError, match=r"unusable timestamps \(none of its first "
                                                  r"72 decoded frames has a timestamp\)"):
        list(decoder.frames())


def test_cli_zero_timescale_exits_2_with_one_line(sample, tmp_path):
    path = _damaged(sample, tmp_path, _video_mdhd_timescale_zero)
    proc = run_cli("analyze", path, "--out", str(tmp_path / "out"), "--no-describe",
                   timeout=120)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"facestream: error: source {path}: unusable timestamps (")


def test_cli_analyses_past_mid_file_damage_and_names_it_once(sample, tmp_path):
    path = _damaged(sample, tmp_path, _zero_64k_at_20_percent)
    out = tmp_path / "out"
    proc = run_cli("analyze", path, "--out", str(out), "--no-describe", "--fps", "2",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "19.6s analysed" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith(f"facestream: warning: source {path}: skipped ")
    assert "damaged packets" in warnings[0] and "packets up to the next keyframe" in warnings[0]
    assert warnings[0].endswith("; the rest was analysed")
    check_events_file(out / "events.jsonl")
    evs = read_events(out / "events.jsonl")
    errors = [ev["data"] for ev in evs if ev["type"] == events.STREAM_ERROR]
    assert len(errors) == 1 and not errors[0]["fatal"]
    assert errors[0]["message"].startswith("skipped ")
    windows = [ev["data"]["window"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    assert max(w["end_s"] for w in windows) > 15, "the face after the damage is analysed"
