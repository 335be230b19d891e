"""Decoding real encoded clips: timestamps, variable frame rate, live sources that drop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from facestream import events
from facestream.config import Settings
from facestream.errors import SourceDropped
from facestream.ingest.sources import Stopped, parse_source
from facestream.retry import Backoff
from facestream.vision.decode import Decoder, SourcePause
from facestream.workers.embedded import analyze
from tests.helpers import check_events_file, read_events, run_cli
from tests.integration.helpers import wait
from tests.media import HttpCamera, RtspCamera
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
def live_frames(sample, face_analyzer) -> list[np.ndarray]:
    """3 s at 25 fps of a face drifting right."""
    photo = load_rgb(sample("single_face.jpg"))
    box = tuple(int(v) for v in face_analyzer(photo).boxes[0])
    patch = face_patch(photo, box, 200)
    frames = []
    for i in range(75):
        canvas = np.full((360, 640, 3), 70, np.uint8)
        x = 120 + 2 * i
        canvas[80:280, x:x + 200] = patch
        frames.append(canvas)
    return frames


@pytest.fixture(scope="module")
def live_payload(live_frames, tmp_path_factory):
    clip = write_clip(tmp_path_factory.mktemp("live") / "live.ts", live_frames, fps=25,
                      container_format="mpegts")
    return clip.read_bytes()


# The camera answers every connection at once (a stream, or a 503), so no open or read
# waits on it and the open/read timeout only bounds a hang.  It is generous because PyAV
# measures it in wall-clock time per open and per read (GIL waits included): on a loaded
# machine a short one (it was 3 s) can expire on a healthy connection, failing the first
# open (one connection, the run errors out) or dropping a stream that was still flowing.
OPEN_TIMEOUT_S = 60


def _run_camera(plan, payload, tmp_path, *, camera=HttpCamera, credentials: str = ""):
    server = camera(payload, plan)
    url = server.url.replace("://", f"://{credentials}@") if credentials else server.url
    try:
        proc = run_cli("analyze", url, "--out", str(tmp_path), "--no-describe",
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


def test_a_camera_password_is_never_shown(live_payload, tmp_path):
    """A camera URL with a user and password (as `analyze` gets it): the run works, and the
    password is in no line printed and no event written (its messages show ``***``)."""
    proc, evs, _ = _run_camera([0.6, None], live_payload, tmp_path,
                               credentials="admin:s3cret-pw")
    assert proc.returncode == 0, proc.stderr
    assert any(ev["type"] == events.FACE_ANALYSIS for ev in evs)
    written = (tmp_path / "events.jsonl").read_text()
    for text in (proc.stdout, proc.stderr, written):
        assert "s3cret-pw" not in text
    assert "admin:***@" in proc.stderr and "admin:***@" in written


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


def test_an_rtsp_camera_is_analysed_and_reconnected_as_an_http_one_is(live_frames, tmp_path):
    """``analyze rtsp://...`` against an RTSP camera (RTP over the RTSP connection, H.264
    per RFC 6184): analysed live; when it drops, reconnected (a 503 while it is down, then
    the whole clip again, analysed with media time running on); given up after the bounded
    reconnects, with one warning."""
    proc, evs, requests = _run_camera([0.5, None, 1.0, None], live_frames, tmp_path,
                                      camera=RtspCamera)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and requests == 5, (requests, proc.stderr)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "gave up after 2 reconnects" in warnings[0], warnings
    errors = [ev["data"] for ev in evs if ev["type"] == events.STREAM_ERROR]
    assert [e["fatal"] for e in errors] == [False] * (len(errors) - 1) + [True]
    drop = errors[0]
    assert 1.0 < drop["time_s"] < 2.0                  # half the clip, then it dropped
    windows = [ev["data"]["window"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    assert windows[0]["start_s"] < 0.2
    assert max(w["end_s"] for w in windows) > drop["time_s"] + 2.5
    for earlier, later in zip(windows, windows[1:]):
        assert later["start_s"] > earlier["end_s"], "media time must run on across reconnects"
    assert len({ev["id"] for ev in evs}) == len(evs)
    check_events_file(tmp_path / "events.jsonl")


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


def test_a_camera_that_is_down_gets_its_drop_and_cut_window_written_and_stops_on_ctrl_c(
        live_payload, tmp_path):
    """``analyze`` of a camera that drops and stays down: while it is down (it answers 503
    on every reconnect until the end), events.jsonl already holds the drop's error and the
    window the drop cut (analysed once the wall clock passed that window's end: the camera
    cannot resume before); Ctrl-C then ends the run as the end of a file does (exit 0,
    the summary, the tracks' ends), with no traceback."""
    server = HttpCamera(live_payload, [0.5, None])
    events_path = tmp_path / "events.jsonl"
    env = {**os.environ, "FACESTREAM_RECONNECT_ATTEMPTS": "1000",
           "FACESTREAM_RECONNECT_BACKOFF_S": "0.2", "FACESTREAM_RECONNECT_BACKOFF_MAX_S": "0.2",
           "FACESTREAM_OPEN_TIMEOUT_S": str(OPEN_TIMEOUT_S)}
    proc = subprocess.Popen([sys.executable, "-m", "facestream", "analyze", server.url,
                             "--out", str(tmp_path), "--no-describe"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def cut_window_written() -> bool:
            assert proc.poll() is None, proc.communicate()
            if not events_path.is_file():
                return False
            evs = read_events(events_path)
            drops = [ev["data"] for ev in evs if ev["type"] == events.STREAM_ERROR]
            if not drops:
                return False
            dropped_at = drops[0]["time_s"]
            return any(w["start_s"] <= dropped_at and w["end_s"] >= dropped_at - 0.3
                       for w in (ev["data"]["window"] for ev in evs
                                 if ev["type"] == events.FACE_ANALYSIS))

        wait(cut_window_written, 300, "the window the drop cut, while the camera is down",
             every_s=0.2)
        assert server.requests >= 2            # it was down: every reconnect got a 503
        written = read_events(events_path)
        assert not any(ev["type"] == events.TRACK_ENDED for ev in written)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopping: analysing the open windows" in err
    lines = err.splitlines()
    # While it was down, each wait was announced (why, and when it is tried again).
    waits = [i for i, line in enumerate(lines) if re.fullmatch(
        rf"facestream: source {re.escape(server.url)}: .+; trying again in 0\.2s", line)]
    assert waits and waits[0] < lines.index(next(line for line in lines if "stopping:" in line))
    drop = next(ev["data"] for ev in written if ev["type"] == events.STREAM_ERROR)
    assert lines[waits[0]] == f"facestream: {drop['message']}; trying again in 0.2s"
    assert "stopped; the open windows were analysed" in out and "tracks: 1" in out, out
    evs = read_events(events_path)
    assert evs[:len(written)] == written       # what was written while down stays as it was
    assert [ev["type"] for ev in evs].count(events.TRACK_ENDED) == 1
    assert len({ev["id"] for ev in evs}) == len(evs)


def test_pauses_precede_each_wait_and_the_camera_resumes_after_them(live_payload):
    """The Decoder with ``pauses``: before each wait to reconnect (``sleep`` injected and
    recorded) it gives a SourcePause whose time is no later than any frame after the
    reconnect; without ``pauses`` nothing but frames comes out."""
    log: list[tuple[str, float]] = []
    server = HttpCamera(live_payload, [0.4, None, 1.0, None])
    try:
        decoder = Decoder(parse_source(server.url), stream_id="cam", fps=5,
                          backoff=Backoff(2, 0.05, 0.4, seed=0), timeout_s=OPEN_TIMEOUT_S,
                          sleep=lambda s: log.append(("sleep", s)))
        with pytest.raises(SourceDropped):
            for item in decoder.frames(pauses=True):
                if isinstance(item, SourcePause):
                    assert item.stream_id == "cam"
                    log.append(("pause", item.resume_s))
                    log.append(("announced", item.delay_s))
                else:
                    log.append(("frame", item.time_s))
        decoder.close()
    finally:
        server.close()
    # Each pause announces the wait that follows it.
    for i, (kind, value) in enumerate(log):
        if kind == "announced":
            assert log[i + 1] == ("sleep", value), log
    log = [entry for entry in log if entry[0] != "announced"]
    kinds = [kind for kind, _ in log]
    first_pause = kinds.index("pause")
    # frames, a pause, its wait, a failed reconnect (503), a pause, its wait, the camera back
    # with frames, then the same once more until the two reconnects allowed are spent.
    wait_twice = ["pause", "sleep", "pause", "sleep"]
    assert kinds[first_pause:first_pause + 4] == wait_twice, kinds
    assert kinds[-4:] == wait_twice and kinds[:first_pause] == ["frame"] * first_pause
    before = [t for kind, t in log[:first_pause] if kind == "frame"]
    pause = log[first_pause + 2][1]
    after = [t for kind, t in log[first_pause + 4:-4] if kind == "frame"]
    assert after and kinds[first_pause + 4:-4] == ["frame"] * len(after)
    assert pause >= before[-1] + 1 / 5 - 0.002
    assert min(after) >= pause, (pause, after[:3])

    server = HttpCamera(live_payload, [0.4, None])
    try:
        decoder = Decoder(parse_source(server.url), stream_id="cam", fps=5,
                          backoff=Backoff(2, 0.05, 0.4, seed=0), timeout_s=OPEN_TIMEOUT_S,
                          sleep=lambda s: None)
        with pytest.raises(SourceDropped):
            assert all(not isinstance(item, SourcePause) for item in decoder.frames())
        decoder.close()
    finally:
        server.close()


def test_stop_ends_a_wait_to_reconnect(live_payload):
    """With ``stop`` set, the wait to reconnect ends at once (no sleep, no reconnect)."""
    stop = threading.Event()
    server = HttpCamera(live_payload, [0.4, None])
    try:
        decoder = Decoder(parse_source(server.url), stream_id="cam", fps=5,
                          backoff=Backoff(100, 30, 30), timeout_s=OPEN_TIMEOUT_S, stop=stop)
        with pytest.raises(Stopped):
            for item in decoder.frames(pauses=True):
                if isinstance(item, SourcePause):
                    stop.set()
        decoder.close()
    finally:
        server.close()
    assert server.requests == 1 and decoder.report.reconnects == 0


def test_a_stopped_camera_run_analyses_its_open_windows_and_writes_its_report(
        live_payload, models, tmp_path):
    """``analyze(stop=...)`` on a camera still sending: the run ends after the frame during
    which ``stop`` was set, with that frame's window analysed, the track ended and the
    report written."""
    stop = threading.Event()
    times: list[float] = []

    def progress(time_s: float, duration_s: float | None, frames: int) -> None:
        times.append(time_s)
        if frames == 12:
            stop.set()

    settings = Settings.load({"describe": False, "reconnect_attempts": 1000,
                              "reconnect_backoff_s": 30, "reconnect_backoff_max_s": 30,
                              "open_timeout_s": OPEN_TIMEOUT_S})
    server = HttpCamera(live_payload, [1.0, None])
    try:
        summary = analyze(parse_source(server.url), settings, out_dir=tmp_path, models=models,
                          report=True, progress=progress, stop=stop)
    finally:
        server.close()
    assert summary.stopped and summary.frames == 12 == len(times) and not summary.warnings
    assert summary.media_s == times[-1]          # not the frames decoded ahead of it
    evs = read_events(tmp_path / "events.jsonl")
    windows = [ev["data"]["window"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    assert max(w["end_s"] for w in windows) == pytest.approx(times[-1], abs=1e-3)
    assert [ev["type"] for ev in evs].count(events.TRACK_ENDED) == 1
    assert summary.report_path == tmp_path / "report.html" and summary.report_path.is_file()


def test_a_camera_run_stopped_before_its_first_frame_leaves_the_earlier_outputs(
        live_payload, models, tmp_path):
    """Stopped before any frame was analysed (Ctrl-C at once), a camera's run writes
    nothing: the output folder keeps an earlier run's events and report as they were."""
    (tmp_path / "events.jsonl").write_text("earlier\n")
    (tmp_path / "report.html").write_text("earlier report")
    stop = threading.Event()
    stop.set()
    server = HttpCamera(live_payload, [1.0])
    try:
        summary = analyze(parse_source(server.url), Settings.load({"describe": False}),
                          out_dir=tmp_path, models=models, report=True, stop=stop)
    finally:
        server.close()
    assert summary.stopped and summary.frames == 0 and summary.report_path is None
    assert (tmp_path / "events.jsonl").read_text() == "earlier\n"
    assert (tmp_path / "report.html").read_text() == "earlier report"
