"""Unit tests: settings, sources, sampling, retry, tracking, windows, geometry, events."""

from __future__ import annotations

import os

import numpy as np
import pytest

from facestream import assets, events
from facestream.config import Settings
from facestream.errors import AssetError, ConfigError, InputError
from facestream.ingest.sources import parse_source, stream_id_from
from facestream.retry import Backoff
from facestream.workers.crops import FaceChips, similarity_transform
from facestream.workers.decode import FrameSampler
from facestream.workers.landmarks import IBUG68_REGIONS, MESH_TO_IBUG68
from facestream.workers.tracker import TrackState, Tracker, iou_matrix
from facestream.workers.windows import FaceSample, Windower


# --- settings -------------------------------------------------------------------------

def test_settings_defaults_env_and_overrides():
    s = Settings.load(environ={})
    assert s.fps == 10.0 and s.window_s == 1.0 and s.describe is True
    s = Settings.load({"fps": 5}, environ={"FACESTREAM_FPS": "2", "FACESTREAM_DESCRIBE": "off"})
    assert s.fps == 5.0 and s.describe is False


@pytest.mark.parametrize("overrides, environ, message", [
    ({"fsp": 3}, {}, "unknown setting 'fsp'; did you mean 'fps'"),
    ({"fps": 0}, {}, "fps=0.0: must be >= 0.1"),
    ({"window_s": 0.2, "fps": 1}, {}, "shorter than one sampled frame"),
    ({"encoder_backend": "tensorflow"}, {}, "must be one of onnxruntime, torch"),
    ({}, {"FACESTREAM_DESCRIBE": "maybe"}, "expected bool"),
    ({"reconnect_backoff_s": 5, "reconnect_backoff_max_s": 1}, {}, "reconnect_backoff_max_s"),
])
def test_bad_settings_fail_loudly(overrides, environ, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(overrides, environ=environ)


def test_every_setting_is_documented():
    for name, doc, _ in Settings.describe_fields():
        assert doc and doc[0].isupper(), name


# --- sources ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, target, live", [
    ("rtsp://cam.local:554/live", "url", "rtsp://cam.local:554/live", True),
    ("https://example.org/a/clip.mp4", "url", "https://example.org/a/clip.mp4", True),
    ("webcam:0", "webcam", "/dev/video0", True),
])
def test_parse_live_sources(text, kind, target, live):
    spec = parse_source(text)
    assert (spec.kind, spec.target, spec.live) == (kind, target, live)


def test_parse_files_and_images(tmp_path):
    clip, photo = tmp_path / "my clip.mp4", tmp_path / "face.JPG"
    clip.write_bytes(b"x")
    photo.write_bytes(b"x")
    assert parse_source(str(clip)).kind == "file"
    assert parse_source(str(photo)).kind == "image"
    assert parse_source(f"file://{clip}").target == str(clip)
    assert parse_source(str(clip)).name == "my-clip"


@pytest.mark.parametrize("text, message", [
    ("", "source is empty"),
    ("ftp://host/x.mp4", "unsupported scheme 'ftp'"),
    ("/definitely/not/here.mp4", "no such file"),
])
def test_parse_rejects(text, message):
    with pytest.raises(InputError, match=message):
        parse_source(text)


def test_stream_ids_are_safe_keys():
    assert stream_id_from("Lobby cam #2 (east)") == "Lobby-cam-2-east"
    assert stream_id_from("///") == "stream"


# --- sampling and retry ----------------------------------------------------------------

def test_sampler_uses_timestamps_not_frame_counts():
    # 100 fps for one second, then one frame every 0.25 s: frame counting would pick
    # every 10th frame and miss most of the slow part.
    times = [i / 100 for i in range(100)] + [1.0 + 0.25 * i for i in range(8)]
    sampler = FrameSampler(10.0)
    picked = [t for t in times if sampler.take(t)]
    assert picked[:10] == pytest.approx([i / 10 for i in range(10)])
    assert picked[10:] == pytest.approx([1.0 + 0.25 * i for i in range(8)])


def test_backoff_is_bounded_capped_and_jittered():
    delays = list(Backoff(6, 0.5, 4.0, jitter=0.2, seed=1).delays())
    assert len(delays) == 6
    for k, d in enumerate(delays):
        nominal = min(4.0, 0.5 * 2 ** k)
        assert 0.8 * nominal <= d <= 1.2 * nominal
    assert list(Backoff(0, 1, 1).delays()) == []


# --- tracking --------------------------------------------------------------------------

def _box(cx, cy, side=60.0):
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def test_tentative_track_needs_confirmation_and_noise_leaves_no_id():
    tracker = Tracker(confirm_hits=2, max_lost_s=1.0)
    first = tracker.update(np.stack([_box(100, 100)]), 0.0)
    assert not first.started and first.matches[0][0].state is TrackState.TENTATIVE
    tracker.update(np.zeros((0, 4), np.float32), 0.1)          # vanished: it was noise
    tracker.update(np.stack([_box(400, 300)]), 0.2)
    update = tracker.update(np.stack([_box(402, 301)]), 0.3)
    assert [t.track_id for t in update.started] == ["t1"]


def test_track_survives_a_short_miss_and_ends_after_a_long_one():
    tracker = Tracker(confirm_hits=2, max_lost_s=0.5)
    for i in range(3):
        tracker.update(np.stack([_box(100 + 10 * i, 100)]), i * 0.1)
    tracker.update(np.zeros((0, 4), np.float32), 0.3)
    tracker.update(np.zeros((0, 4), np.float32), 0.4)
    update = tracker.update(np.stack([_box(150, 100)]), 0.5)    # where motion predicts
    assert update.matches[0][0].track_id == "t1" and not update.started
    tracker.update(np.zeros((0, 4), np.float32), 0.8)
    ended = tracker.update(np.zeros((0, 4), np.float32), 1.1).ended
    assert [t.track_id for t in ended] == ["t1"]


def test_crossing_tracks_keep_identity_through_occlusion():
    tracker = Tracker(confirm_hits=2, max_lost_s=1.0)
    ids_at_start, ids_at_end = {}, {}
    for i in range(41):
        t = i * 0.1
        a, b = (50 + 10 * i, 100), (450 - 10 * i, 110)
        boxes = [_box(*a), _box(*b)]
        if 18 <= i <= 22:                  # b hides a while they overlap
            boxes = [_box(*b)]
        update = tracker.update(np.stack(boxes), t)
        for track, j in update.matches:
            cx = (boxes[j][0] + boxes[j][2]) / 2
            owner = "a" if len(boxes) == 2 and j == 0 else "b"
            if i == 5:
                ids_at_start[owner] = track.track_id
            if i == 40:
                ids_at_end[owner] = track.track_id
            assert cx == pytest.approx(a[0] if owner == "a" else b[0], abs=31)
    assert ids_at_start == ids_at_end and len(set(ids_at_start.values())) == 2


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert iou_matrix(a, b) == pytest.approx(np.array([[1.0, 1 / 3, 0.0]]))


# --- windows ---------------------------------------------------------------------------

def _sample(t):
    return FaceSample(t, int(t * 1000), 0.0, _box(100, 100), np.zeros((68, 2)),
                      np.zeros((468, 3)), FaceChips.empty())


def test_windows_follow_each_tracks_own_grid():
    tracker = Tracker(confirm_hits=2)
    windower = Windower("s", window_s=1.0)
    closed = []
    for i in range(25):                         # 2.5 s at 10 fps
        t = 0.3 + i * 0.1
        track = tracker.update(np.stack([_box(100, 100)]), t).matches[0][0]
        closed += windower.add(track, _sample(t), (640, 360))
    closed += windower.close(tracker.finish()[0], (640, 360))
    assert [len(w.samples) for w in closed] == [10, 10, 5]
    assert [round(w.start_s, 2) for w in closed] == [0.3, 1.3, 2.3]
    assert closed[0].samples[0].time_s == pytest.approx(0.3), "tentative samples kept"


# --- geometry --------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def test_ibug_table_is_a_proper_68_point_layout(face_analyzer, sample):
    from tests.media import load_rgb

    assert len(set(MESH_TO_IBUG68.tolist())) == 68 and MESH_TO_IBUG68.max() < 468
    assert sum(len(r) for r in IBUG68_REGIONS.values()) == 68
    lm = face_analyzer(load_rgb(sample("single_face.jpg"))).landmarks[0]
    x, y = lm[:, 0], lm[:, 1]
    assert x[36] < x[39] < x[42] < x[45]               # eye corners, image left to right
    assert x[0] < x[8] < x[16] and y[8] == y.max()     # jaw, chin lowest
    assert x[48] < x[51] < x[54] and y[51] < y[57]     # mouth corners, upper above lower
    assert y[19] < y[37] and y[24] < y[44]             # brows above eyes
    assert y[27] < y[30] < y[33]                       # nose top to bottom


# --- events and assets -----------------------------------------------------------------

def test_event_ids_are_deterministic_and_distinct():
    a = events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "compact")
    assert a == events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "compact")
    others = {events.event_id("cam1", "t1", 3000, events.TRACK_STARTED, "compact"),
              events.event_id("cam1", "t2", 3000, events.FACE_ANALYSIS, "compact"),
              events.event_id("cam1", "t1", 3001, events.FACE_ANALYSIS, "compact"),
              events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "facellava")}
    assert a not in others and len(others) == 4


def _track_event():
    return events.track_event(events.TRACK_STARTED, stream_id="cam1", track_id="t1",
                              time_s=1.5, pts=1500, profile="compact", time_epoch=0.0)


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("id"),
    lambda e: e.update(specversion="0.3"),
    lambda e: e.update(time="yesterday"),
    lambda e: e.update(type="facestream.face.other"),
    lambda e: e["data"].pop("track_id"),
    lambda e: e.update(source="camera://cam1"),
])
def test_schema_rejects_broken_events(mutate):
    event = _track_event()
    assert events.validator().is_valid(event)
    mutate(event)
    assert not events.validator().is_valid(event)


def test_missing_asset_names_the_command(tmp_path):
    with pytest.raises(AssetError, match="run `facestream models pull`"):
        assets.require(tmp_path, "models/age-v1.onnx")
    with pytest.raises(AssetError, match="models pull --samples"):
        assets.sample(tmp_path, "clip.mp4")


def test_hash_check_catches_a_file_changed_in_place(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"weights" * 1000)
    good = assets.sha256_of(f)
    assert assets._verified(f, good)                 # hashed, stamp written
    stamp = f.with_name("m.bin.sha256").read_text()
    assert stamp.startswith(good) and assets._verified(f, good)      # the stamp is trusted
    with open(f, "r+b") as fh:                       # one byte, same size, same inode
        fh.seek(3000)
        fh.write(b"W")
    assert f.with_name("m.bin.sha256").read_text() == stamp          # the stamp is stale
    assert not assets._verified(f, good)


def test_a_stamp_does_not_vouch_for_another_file(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"weights")
    good = assets.sha256_of(f)
    assert assets._verified(f, good)
    replacement = tmp_path / "other.bin"
    replacement.write_bytes(b"WEIGHTS")              # same size
    os.utime(replacement, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns))   # same mtime
    replacement.replace(f)                           # another inode
    assert not assets._verified(f, good)


def test_manifest_is_consistent():
    manifest = assets.Manifest.bundled()
    for f in manifest.files.values():
        assert f.package in manifest.packages
        assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
    assert all("==" in p.requirement for p in manifest.packages.values())


@pytest.mark.parametrize("text", ["~nosuchuser-facestream/clip.mp4", "x" * 5000 + ".mp4",
                                  "webcam:" + "9" * 5000])
def test_sources_that_name_nothing_usable_are_input_errors(text):
    with pytest.raises(InputError, match="cannot be used") as refused:
        parse_source(text)
    assert len(str(refused.value)) < 250
