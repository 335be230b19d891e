"""examples/anger_alert.py end to end, against the real broker and Redis that the test command
starts: a sample clip is ingested, a `facestream worker` process analyses it, and the example
runs as its own process on the stream's events key.  Its alerts (stdout and the alerts
stream) are what the episode logic gives for the events the worker wrote to Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from facestream.client import Event
from tests.helpers import REPO, run_cli
from tests.integration.helpers import events_in_redis, stream_status, wait
from tests.test_examples import load_example

pytestmark = pytest.mark.integration


def _stop(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    """SIGTERM, then wait for a clean exit (killed only if it hangs, and then the test fails)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"pid {proc.pid} did not stop within {timeout}s of SIGTERM: {err[-2000:]}")


def test_the_example_alerts_on_what_a_real_worker_wrote(isolated, sample, tmp_path):
    import redis

    settings, env = isolated
    alerts_mod = load_example()
    # The clip's face is happy from ~9 s to its end (~19.6 s), and never angry: watch
    # "happy" for 3 s, so that real content triggers (sad, its first 7 s, would too).
    stream_id = f"ex-{uuid.uuid4().hex[:8]}"       # facestream:stream:{id} is not per test
    key = f"{settings.events_stream}:{stream_id}"
    alerts_key = f"{settings.events_stream}:alerts"
    group = "happy-alert"
    full_env = {**os.environ, **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")]))}

    proc = run_cli("ingest", str(sample("WolfgangLanger_Pexels.mp4")), "--stream-id", stream_id,
                   env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr

    service = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "anger_alert.py"), "--stream", stream_id,
         "--label", "happy", "--seconds", "3", "--group", group, "--alerts-key", alerts_key],
        env=full_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(tmp_path / "worker.log", "w") as worker_log:
        worker = subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                  env=full_env, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=worker_log)
    client = redis.Redis.from_url(settings.redis_url)

    def caught_up() -> bool:
        """The service's group has read the key's last entry and acknowledged everything."""
        last = client.xrevrange(key, count=1)
        groups = {g["name"].decode(): g for g in client.xinfo_groups(key)} if last else {}
        mine = groups.get(group)
        return bool(mine) and mine["last-delivered-id"] == last[0][0] and mine["pending"] == 0

    try:
        wait(lambda: stream_status(settings, stream_id).get("worker_state") == "ended"
             or worker.poll() is not None or service.poll() is not None, 300,
             "the worker to finish the stream")
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        assert service.poll() is None, service.communicate()[1][-2000:]
        wait(lambda: caught_up() or service.poll() is not None, 120,
             "the example to handle every event")
    finally:
        service_out, service_err = _stop(service)
        _stop(worker)
    assert service.returncode == 0, service_err[-2000:]
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]

    written = [Event.from_dict(raw) for raw in events_in_redis(settings, key)]
    expected = alerts_mod.SustainedExpression(label="happy", seconds=3).feed_all(written)
    got = [json.loads(line) for line in service_out.splitlines() if line.strip()]
    assert expected, "the clip's happy stretch should give an alert"
    assert got == expected, service_err[-2000:]
    assert {(a["stream_id"], a["track_id"], a["label"]) for a in got} == {(stream_id, "t1",
                                                                           "happy")}
    assert all(a["duration_s"] >= 3 for a in got)
    stored = [json.loads(fields[b"alert"]) for _, fields in client.xrange(alerts_key)]
    assert stored == expected
    # The clean stop left the group with nothing pending and no consumer holding anything.
    assert client.xpending(key, group)["pending"] == 0
    assert client.xinfo_consumers(key, group) == []
