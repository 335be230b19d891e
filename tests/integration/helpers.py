"""Helpers of the integration tests: reading what the workers wrote to Redis and the
dead-letter topic, waiting on conditions, the workers' HTTP endpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

BOOTSTRAP = os.environ.get("FACESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("FACESTREAM_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(hostport: str) -> bool:
    host, port = hostport.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def events_in_redis(settings, key=None):
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    entries = client.xrange(key or settings.events_stream)
    return [json.loads(fields[b"event"]) for _, fields in entries]


def dlq_reasons(settings) -> list[str]:
    """The ``fs-error`` header of every dead letter of this test, sorted."""
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(settings.dlq_topic, bootstrap_servers=BOOTSTRAP,
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)
    reasons = sorted(dict(m.headers)["fs-error"].decode() for m in dlq)
    dlq.close()
    return reasons


def stream_status(settings, stream_id):
    import redis

    raw = redis.Redis.from_url(settings.redis_url).hgetall(
        f"{settings.stream_status_prefix}:{stream_id}")
    return {k.decode(): v.decode() for k, v in raw.items()}


def wait(predicate, timeout_s, what, *, every_s: float = 0.5):
    """Until ``predicate()`` holds, checked every ``every_s``; fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()
    except OSError:
        return 0, ""


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def services_cli(*args):
    proc = subprocess.run(["deploy/dev-services", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
