"""The camera supervisor (`facestream ingest --from-registry`) against the real broker and
Redis, with real clips served by loopback HTTP "cameras": a camera that is down when the
stream is registered is retried until it comes up, then goes live and its chunks reach a real
worker, which analyses it at the stream's registered rate and stores an annotated snapshot;
a publisher thread that dies is restarted; a removed stream stops and says so; subscribers
see every state change; /metrics counts it all (docs/EVENTS.md, "Stream status")."""

from __future__ import annotations

import io
import threading
import time

import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.registry import Registry, StreamSpec
from tests.integration.helpers import events_in_redis, free_port, http, stream_status, wait
from tests.media import HttpCamera, remux_video

CLIP = "WolfgangLanger_Pexels.mp4"         # 19.7 s, 640x360, one face throughout


def _mpegts(path) -> bytes:
    out = io.BytesIO()
    remux_video(path, out, container_format="mpegts")
    return out.getvalue()


def _settings(isolated, **more) -> Settings:
    settings, _ = isolated
    base = {f: getattr(settings, f) for f in (
        "kafka_bootstrap", "redis_url", "video_topic", "dlq_topic", "consumer_group",
        "events_stream", "checkpoint_prefix", "metrics_port", "describe",
        "stream_status_prefix", "registry_topic")}
    return Settings.load({**base, "registry_allow_private": True, "reconnect_backoff_s": 0.2,
                          "supervisor_backoff_max_s": 1.0, "open_timeout_s": 10,
                          "supervisor_metrics_port": 0, "stream_status_interval_s": 0.2,
                          **more})


def _status_events(settings, stream_id):
    return [e for e in events_in_redis(settings, f"{settings.events_stream}:{stream_id}")
            if e["type"] == events.STREAM_STATUS]


def _start(supervisor):
    thread = threading.Thread(target=supervisor.run, name="test-supervisor", daemon=True)
    thread.start()
    return thread


def _metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    return float("nan")


def test_a_camera_down_at_start_is_retried_goes_live_and_is_analysed_at_its_fps(
        isolated, models, sample):
    from facestream.workers.supervisor import Supervisor
    from facestream.workers.worker import Worker

    settings = _settings(isolated)
    port = free_port()                       # nothing listens: connection refused
    url = f"http://127.0.0.1:{port}/live.ts"
    Registry(settings).put(StreamSpec("cam", url, fps=2.0), stream_id="cam")
    supervisor = Supervisor(settings, log=lambda line: None)
    runner = _start(supervisor)
    camera = worker = None
    try:
        # Down: reconnecting, attempt after attempt, and each try is announced.
        wait(lambda: stream_status(settings, "cam").get("state") == "reconnecting"
             and int(stream_status(settings, "cam").get("attempt", 0)) >= 3, 60,
             "the camera that is down to be retried")
        status = stream_status(settings, "cam")
        assert "refused" in status["last_error"].lower(), status
        assert (status["fps"], status["profile"], status["url"]) == ("2", "compact", url)
        seen = _status_events(settings, "cam")
        assert [e["data"]["state"] for e in seen[:2]] == ["connecting", "reconnecting"]
        retries = [e["data"] for e in seen if e["data"]["state"] == "reconnecting"]
        assert [d["attempt"] for d in retries[:3]] == [1, 2, 3]
        assert "refused" in retries[0]["reason"].lower()
        for event in seen:
            events.validator().validate(event)

        # Up: the camera starts serving a real clip where it was expected.
        camera = HttpCamera(_mpegts(sample(CLIP)), [1.0], port=port)
        wait(lambda: stream_status(settings, "cam").get("state") == "live", 60,
             "the camera to go live once it serves")
        live = [e for e in _status_events(settings, "cam") if e["data"]["state"] == "live"]
        assert live and live[0]["data"]["previous"] == "reconnecting"

        # A real worker at the global 10 fps analyses the stream at its registered 2 fps.
        assert settings.fps == 10.0
        worker = Worker(settings, models=models)
        worker_thread = threading.Thread(target=worker.run, daemon=True)
        worker_thread.start()
        key = f"{settings.events_stream}:cam"

        def windows():
            return [e["data"]["window"] for e in events_in_redis(settings, key)
                    if e["type"] == events.FACE_ANALYSIS]

        wait(lambda: len(windows()) >= 3, 120, "three analysed windows of the stream")
        for window in windows():
            assert 1 <= window["frames"] <= 2, window            # 10 fps would give ~10
            if window["frames"] == 2:
                assert window["end_s"] - window["start_s"] == pytest.approx(0.5, abs=0.02)
        assert any(w["frames"] == 2 for w in windows())

        # The status hash: the supervisor's fields and the worker's, side by side.
        wait(lambda: "worker_at" in stream_status(settings, "cam")
             and float(stream_status(settings, "cam").get("frames_per_s", 0)) > 0, 30,
             "the worker's and the supervisor's live fields")
        status = stream_status(settings, "cam")
        assert int(status["frames"]) > 0 and int(status["bytes"]) > 0
        assert float(status["last_frame_at"]) > time.time() - 30
        assert status["last_error"] == "" and status["attempt"] == "0"
        assert int(status["reconnects"]) >= 3
        assert status["publisher"] == supervisor.name and status["worker"]
        assert int(status["faces"]) >= 0 and float(status["events_per_s"]) >= 0

        # The snapshot: a JPEG of the camera's frame size, boxes drawn on it.
        import cv2
        import numpy as np
        import redis

        client = redis.Redis.from_url(settings.redis_url)
        snapshot_key = f"{settings.stream_status_prefix}:cam:snapshot"
        wait(lambda: client.exists(snapshot_key), 30, "a snapshot")
        image = cv2.imdecode(np.frombuffer(client.get(snapshot_key), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (360, 640, 3)
        assert 0 < client.ttl(snapshot_key) <= settings.snapshot_ttl_s

        # /metrics of the supervisor.
        code, text = http(supervisor.metrics_port, "/metrics")
        assert code == 200
        assert _metric(text, "facestream_ingest_frames_total", stream="cam") > 0
        assert _metric(text, "facestream_ingest_bytes_total", stream="cam") > 0
        assert _metric(text, "facestream_ingest_reconnects_total", stream="cam") >= 3
        assert _metric(text, "facestream_ingest_stream_state", stream="cam", state="live") == 1
        assert _metric(text, "facestream_ingest_stream_state", stream="cam",
                       state="reconnecting") == 0
        assert _metric(text, "facestream_ingest_publishers") == 1
        assert http(supervisor.metrics_port, "/readyz")[0] == 200

        # Removed: the publisher stops, the state says so, the hash expires.
        Registry(settings).put(None, stream_id="cam")
        wait(lambda: stream_status(settings, "cam").get("state") == "removed", 60,
             "the removed stream's state")
        assert supervisor.streams == []
        assert 0 < client.ttl(f"{settings.stream_status_prefix}:cam") <= \
            settings.stream_removed_ttl_s
        removed = [e for e in _status_events(settings, "cam") if e["data"]["state"] == "removed"]
        assert len(removed) == 1 and removed[0]["data"]["previous"] in ("live", "reconnecting")
        wait(lambda: stream_status(settings, "cam").get("worker_state") == "ended", 60,
             "the worker to end the removed stream")
    finally:
        supervisor.stop()
        runner.join(timeout=60)
        if worker is not None:
            worker.stop()
        if camera is not None:
            camera.close()
    assert not runner.is_alive()


def test_a_publisher_that_dies_is_restarted_and_others_go_on(isolated, sample, monkeypatch):
    """A publisher thread killed by an exception is restarted with backoff; the state says
    failed (with the reason) then live again; the other camera never stops."""
    from facestream.workers import supervisor as supervisor_module
    from facestream.workers.supervisor import Supervisor

    settings = _settings(isolated)
    payload = _mpegts(sample(CLIP))
    cameras = [HttpCamera(payload, [1.0]), HttpCamera(payload, [1.0])]
    real = supervisor_module.count_packets
    fired = []

    def faulty(payload):                     # the first chunk of "fragile" kills its thread
        if threading.current_thread().name == "ingest-fragile" and not fired:
            fired.append(True)
            raise RuntimeError("injected fault")
        return real(payload)

    monkeypatch.setattr(supervisor_module, "count_packets", faulty)
    registry = Registry(settings)
    registry.put(StreamSpec("fragile", cameras[0].url), stream_id="fragile")
    registry.put(StreamSpec("steady", cameras[1].url), stream_id="steady")
    supervisor = Supervisor(settings, log=lambda line: None)
    runner = _start(supervisor)
    try:
        wait(lambda: fired and stream_status(settings, "fragile").get("state") == "live"
             and supervisor.status("fragile").restarts == 1, 60,
             "the dead publisher to be restarted and live again")
        states = [(e["data"]["state"], e["data"]["reason"])
                  for e in _status_events(settings, "fragile")]
        failed = [reason for state, reason in states if state == "failed"]
        assert failed == ["publisher died: RuntimeError: injected fault"], states
        after = states[[s for s, _ in states].index("failed"):]
        assert [s for s, _ in after[:3]] == ["failed", "connecting", "live"], states
        assert after[1][1] == "publisher restarted"
        steady = [e["data"]["state"] for e in _status_events(settings, "steady")]
        assert steady == ["connecting", "live"], steady
        code, text = http(supervisor.metrics_port, "/metrics")
        assert _metric(text, "facestream_ingest_publisher_restarts_total",
                       stream="fragile") == 1
        assert _metric(text, "facestream_ingest_publishers") == 2
    finally:
        supervisor.stop()
        runner.join(timeout=60)
        for camera in cameras:
            camera.close()
    assert not runner.is_alive()
    # A clean stop: every stream says ended, and the workers were told (an end marker each).
    for stream_id in ("fragile", "steady"):
        assert stream_status(settings, stream_id)["state"] == "ended"


def test_the_supervisor_process_stops_cleanly_on_sigterm(isolated, sample):
    """`facestream ingest --from-registry` as operators run it: SIGTERM ends it with 0 and
    every stream's state says ended."""
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO

    settings = _settings(isolated)
    _, env = isolated
    camera = HttpCamera(_mpegts(sample(CLIP)), [1.0])
    Registry(settings).put(StreamSpec("cam", camera.url), stream_id="cam")
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream", "ingest", "--from-registry"], cwd=REPO,
        env={**os.environ, **env, "FACESTREAM_REGISTRY_ALLOW_PRIVATE": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: stream_status(settings, "cam").get("state") == "live"
             or proc.poll() is not None, 60, "the supervisor to publish the camera")
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        camera.close()
    assert proc.returncode == 0, log
    assert "supervisor: /metrics on port" in log
    assert stream_status(settings, "cam")["state"] == "ended"


def test_a_changed_spec_restarts_the_publisher_with_it(isolated, sample):
    """`streams add` again with another rate: the publisher restarts, the status and the
    chunks carry the new fps."""
    from facestream.workers.supervisor import Supervisor
    from tests.integration.test_distributed import _messages

    settings = _settings(isolated)
    camera = HttpCamera(_mpegts(sample(CLIP)), [1.0])
    registry = Registry(settings)
    registry.put(StreamSpec("cam", camera.url, fps=2.0), stream_id="cam")
    supervisor = Supervisor(settings, log=lambda line: None)
    runner = _start(supervisor)
    try:
        wait(lambda: stream_status(settings, "cam").get("state") == "live", 60, "live at 2 fps")
        registry.put(StreamSpec("cam", camera.url, fps=5.0), stream_id="cam")
        wait(lambda: stream_status(settings, "cam").get("fps") == "5"
             and stream_status(settings, "cam").get("state") == "live", 60, "live at 5 fps")
    finally:
        supervisor.stop()
        runner.join(timeout=60)
        camera.close()
    stamps = [dict(m.headers).get("fs-fps") for m in _messages(settings.video_topic)
              if "fs-end" not in dict(m.headers)]
    assert stamps[0] == b"2" and stamps[-1] == b"5", stamps
    assert [e["data"]["fps"] for e in _status_events(settings, "cam")
            if e["data"]["state"] == "connecting"] == [2.0, 5.0]


def test_with_a_reconnect_limit_a_camera_that_stays_down_fails_and_the_others_go_on(
        isolated, sample):
    """``supervisor_reconnect_attempts=2``: a registered camera that never answers is tried
    on opening and twice more, then its state is ``failed`` with the reason, and it is not
    tried again; a camera beside it goes live and stays so."""
    from facestream.workers.supervisor import Supervisor

    settings = _settings(isolated, supervisor_reconnect_attempts=2)
    dead_url = f"http://127.0.0.1:{free_port()}/live.ts"      # nothing listens: refused
    camera = HttpCamera(_mpegts(sample(CLIP)), [1.0])
    registry = Registry(settings)
    registry.put(StreamSpec("dead", dead_url), stream_id="dead")
    registry.put(StreamSpec("alive", camera.url), stream_id="alive")
    supervisor = Supervisor(settings, log=lambda line: None)
    runner = _start(supervisor)
    try:
        wait(lambda: stream_status(settings, "dead").get("state") == "failed", 60,
             "the camera that stays down to be given up")
        wait(lambda: stream_status(settings, "alive").get("state") == "live", 60,
             "the other camera to go live")
        states = [(e["data"]["state"], e["data"]["attempt"], e["data"]["reason"])
                  for e in _status_events(settings, "dead")]
        assert [(s, a) for s, a, _ in states] == [
            ("connecting", 0), ("reconnecting", 1), ("reconnecting", 2), ("failed", 2)], states
        assert "gave up after 2 reconnects" in states[-1][2], states[-1]
        assert "refused" in stream_status(settings, "dead")["last_error"].lower()
        assert "dead" not in supervisor.streams and "alive" in supervisor.streams
        assert supervisor.status("dead").reconnects == 2
    finally:
        supervisor.stop()
        runner.join(timeout=60)
        camera.close()
    assert not runner.is_alive()
    assert stream_status(settings, "dead")["state"] == "failed"       # stopping keeps it
    assert stream_status(settings, "alive")["state"] == "ended"
