"""Decoding real encoded clips: timestamps, variable frame rate, live sources that drop."""

from __future__ import annotations

import re

import numpy as np
import pytest

from facestream import events
from facestream.errors import SourceDropped
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.vision.decode import Decoder
from tests.helpers import read_events, run_cli
from tests.media import HttpCamera
from facestream.scenes import face_patch, load_rgb, write_clip


def test_variable_frame_rate_clip_is_sampled_by_timestamp(tmp_path):
    # 50 fps for the first second, then a frame every 0.3 s for 1.5 s.
    times = [i / 50 for i in range(50)] + [1.0 + 0.3 * i for i in range(6)]
    frames = [np.full((64, 64, 3), i * 4 % 255, np.uint8) for i in range(len(times))]
    clip = write_clip(tmp_path / "vfr.mp4", frames, times=times)
    decoder = Decoder(parse_source(str(clip)), stream_id="vfr", fps=10,
                      backoff=Backoff(0, 0, 0))
    picked = [f.time_s for f in decoder.frames()]
    assert picked == pytest.approx([i / 10 for i in range(10)] + [1.0 + 0.3 * i for i in range(6)],
                                   abs=1e-3)
    assert decoder.report.decoded == len(times) and decoder.report.stopped_early is None


def test_frames_are_rgb_in_source_pixels(sample):
    with Decoder(parse_source(str(sample("single_face.mp4"))), stream_id="s", fps=5,
                 backoff=Backoff(0, 0, 0)) as decoder:
        frame = next(decoder.frames())
        assert frame.image.shape == (decoder.info.height, decoder.info.width, 3)
        assert (decoder.info.width, decoder.info.height) == (640, 360)
        assert decoder.info.codec == "h264" and decoder.info.duration_s > 2


@pytest.fixture(scope="module")
def live_payload(sample, face_analyzer, tmp_path_factory):
    photo = load_rgb(sample("single_face.jpg"))
    box = tuple(int(v) for v in face_analyzer(photo).boxes[0])
    patch = face_patch(photo, box, 200)
    frames = []
    for i in range(75):                              # 3 s at 25 fps, the face drifting right
        canvas = np.full((360, 640, 3), 70, np.uint8)
        x = 120 + 2 * i
        canvas[80:280, x:x + 200] = patch
        frames.append(canvas)
    clip = write_clip(tmp_path_factory.mktemp("live") / "live.ts", frames, fps=25,
                      container_format="mpegts")
    return clip.read_bytes()


# The camera answers every connection at once (a stream, or a 503), so no open or read
# waits on it and the open/read timeout only bounds a hang.  It is generous because PyAV
# measures it in wall-clock time per open and per read (GIL waits included): on a loaded
# machine a short one (it was 3 s) can expire on a healthy connection, failing the first
# open (one connection, the run errors out) or dropping a stream that was still flowing.
OPEN_TIMEOUT_S = 60


def _run_camera(plan, payload, tmp_path):
    server = HttpCamera(payload, plan)
    try:
        proc = run_cli("analyze", server.url, "--out", str(tmp_path), "--no-describe",
                       env={"FACESTREAM_RECONNECT_ATTEMPTS": "2",
                            "FACESTREAM_RECONNECT_BACKOFF_S": "0.05",
                            "FACESTREAM_OPEN_TIMEOUT_S": str(OPEN_TIMEOUT_S)}, timeout=600)
    finally:
        server.close()
    return proc, read_events(tmp_path / "events.jsonl"), server.requests


def test_camera_that_drops_and_stays_down_is_reported(live_payload, tmp_path):
    proc, evs, requests = _run_camera([0.6, None], live_payload, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert requests == 3                       # first connection + 2 bounded reconnects
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "gave up after 2 reconnects" in warnings[0]
    errors = [ev["data"] for ev in evs if ev["type"] == events.STREAM_ERROR]
    assert len(errors) == 4                    # the drop, two failed reconnects, giving up
    assert [e["fatal"] for e in errors] == [False, False, False, True]
    assert any(ev["type"] == events.FACE_ANALYSIS for ev in evs), "frames before the drop"


def test_live_source_reconnects_follow_the_backoff_and_are_bounded(live_payload):
    """The Decoder itself, with ``sleep`` injected and recorded: after the drop it reopens
    exactly ``attempts`` times, waiting exactly the backoff's delays (nothing is slept or
    timed), reports every failure, then gives up; the camera saw exactly 3 connections."""
    backoff = Backoff(2, 0.05, 0.4, seed=0)
    slept: list[float] = []
    errors: list[str] = []
    picked: list[float] = []
    server = HttpCamera(live_payload, [0.6, None])
    try:
        decoder = Decoder(parse_source(server.url), stream_id="cam", fps=5, backoff=backoff,
                          timeout_s=OPEN_TIMEOUT_S, on_error=errors.append,
                          sleep=slept.append)
        with pytest.raises(SourceDropped) as info:
            for frame in decoder.frames():
                picked.append(frame.time_s)
        decoder.close()
    finally:
        server.close()
    assert decoder.live and picked, "frames before the drop"
    assert server.requests == 3                # first connection + 2 bounded reconnects
    assert slept == list(backoff.delays()) and len(slept) == 2
    assert decoder.report.reconnects == 2
    drop = rf"source {re.escape(server.url)}: .+ at {decoder.report.last_time_s:.2f}s"
    assert re.fullmatch(drop, errors[0]) and decoder.report.errors == errors[:1], errors
    assert len(errors) == 3 and all("cannot open" in e for e in errors[1:]), errors
    assert str(info.value).startswith(errors[0]) and \
        str(info.value).endswith("gave up after 2 reconnects")


def test_camera_that_comes_back_keeps_being_analysed(live_payload, tmp_path):
    proc, evs, requests = _run_camera([0.5, 1.0, None], live_payload, tmp_path)
    assert proc.returncode == 0, proc.stderr
    errors = [ev["data"] for ev in evs if ev["type"] == events.STREAM_ERROR]
    drop = errors[0]
    assert not drop["fatal"] and "at " in drop["message"]
    windows = [ev["data"]["window"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    # The second connection delivered the whole 3 s clip again: it must have been analysed.
    assert max(w["end_s"] for w in windows) > drop["time_s"] + 2.5
    for earlier, later in zip(windows, windows[1:]):
        assert later["start_s"] > earlier["end_s"], "media time must run on across reconnects"
    assert len({ev["id"] for ev in evs}) == len(evs)
