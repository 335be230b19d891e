"""`facestream serve` without services: where it refuses to listen, how URLs are redacted,
and how tracks and their timelines are folded from events (the API tests against the real
broker and Redis are tests/integration/test_api.py)."""

from __future__ import annotations

import socket

import pytest

from facestream.api.feed import build_tracks
from facestream.api.shared import loopback
from facestream.errors import redact
from tests.helpers import run_cli


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_serve_refuses_a_public_address_without_a_token(host):
    proc = run_cli("serve", "--host", host, timeout=60,
                   env={"FACESTREAM_API_TOKEN": "", "FACESTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"facestream: error: api_host {host} is not a loopback address and no api_token is set: "
        "set FACESTREAM_API_TOKEN, or listen on 127.0.0.1"]


def test_serve_names_a_port_it_cannot_listen_on():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"facestream: error: cannot listen on 127.0.0.1:{port} (")
    assert "FACESTREAM_API_PORT" in line


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("camera.local", False)])
def test_loopback(host, expected):
    assert loopback(host) is expected


@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:s3cret@cam.local:554/s1", "rtsp://admin:***@cam.local:554/s1"),
    ("http://:tok@host/x", "http://:***@host/x"),
    ("open rtsp://u:p@a/1 and http://v:q@b/2 failed", "open rtsp://u:***@a/1 and http://v:***@b/2 failed"),
    ("rtsp://cam.local/s1", "rtsp://cam.local/s1"),
    ("rtsp://user@cam.local/s1", "rtsp://user@cam.local/s1"),
    ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("a:b@c is not a URL", "a:b@c is not a URL"),
])
def test_redact_hides_passwords_in_urls(text, expected):
    assert redact(text) == expected


def _window(track: str, start: float, label: str, *, stream: str = "cam", description=None,
            years: float = 30.0) -> dict:
    scores = {k: 0.0 for k in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")}
    scores[label] = 1.0
    return {"type": "facestream.face.analysis", "time": f"2025-01-01T00:00:{int(start):02d}Z",
            "data": {"stream_id": stream, "track_id": track,
                     "window": {"start_s": start, "end_s": start + 0.9,
                                "start_pts": int(start * 1000), "end_pts": None, "frames": 10},
                     "bbox": [1, 2, 3, 4], "expression": {"label": label, "scores": scores},
                     "attributes": {"gender": {"label": "female", "score": 0.9},
                                    "age": {"years": years, "low": years - 4,
                                            "high": years + 4}},
                     "description": description}}


def _track(kind: str, track: str, time_s: float, *, stream: str = "cam") -> dict:
    return {"type": f"facestream.track.{kind}", "time": "2025-01-01T00:00:00Z",
            "data": {"stream_id": stream, "track_id": track, "time_s": time_s, "pts": None}}


def test_tracks_fold_windows_descriptions_and_ends():
    described = {"type": "facestream.face.description", "time": "2025-01-01T00:00:01Z",
                 "data": {"stream_id": "cam", "track_id": "t1",
                          "window": {"start_s": 0.0, "start_pts": 0}, "description": "A smile."}}
    status = {"type": "facestream.stream.status", "time": "2025-01-01T00:00:01Z",
              "data": {"stream_id": "cam", "state": "live"}}
    tracks = build_tracks([
        _track("started", "t1", 0.0), _window("t1", 0.0, "happy"), status, described,
        _track("started", "t2", 0.5), _window("t2", 0.5, "sad", years=50),
        _window("t1", 1.0, "neutral", years=32), _track("ended", "t2", 1.4),
        _window("t1", 1.0, "neutral", stream="other"),
    ])
    assert [(t["stream_id"], t["track_id"], t["current"]) for t in tracks] == [
        ("other", "t1", True), ("cam", "t1", True), ("cam", "t2", False)]
    t1 = tracks[1]
    assert [(p["start_s"], p["label"], p["description"]) for p in t1["timeline"]] == [
        (0.0, "happy", "A smile."), (1.0, "neutral", None)]
    assert (t1["expression"], t1["age"]["years"], t1["description"]) == ("neutral", 32, "A smile.")
    assert (tracks[2]["started_s"], tracks[2]["ended_s"]) == (0.5, 1.4)


def test_tracks_keep_every_current_one_and_the_latest_ended():
    evs = []
    for i in range(5):
        evs += [_window(f"t{i}", float(i), "happy"), _track("ended", f"t{i}", i + 0.5)]
    evs.append(_window("t9", 9.0, "anger"))
    tracks = build_tracks(evs, recent=2)
    assert [t["track_id"] for t in tracks] == ["t9", "t4", "t3"]
    assert build_tracks(evs, recent=0) == tracks[:1]


def test_the_defaults_are_loopback_port_8080_and_no_token():
    from facestream.config import Settings

    settings = Settings.load(environ={})
    assert (settings.api_host, settings.api_port, settings.api_token) == ("127.0.0.1", 8080, "")
    assert settings.stream_status_prefix == "facestream:stream"
