"""The worker's environment going away (docs/RELIABILITY.md): readiness says so whether the
worker is busy or idle, and what could not be written is written once Redis is back.  The
broker is the one the test command starts; Redis is a redis-server of the test's own, on a
free port, so stopping it disturbs no other test."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import replace

import av
import pytest

from facestream.ingest.chunks import EndOfStream, gop_chunks
from tests.integration.helpers import BOOTSTRAP, free_port, http, stream_status, wait

pytestmark = pytest.mark.integration


class OwnRedis:
    """A redis-server without persistence on a free loopback port; stop and start it."""

    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tmp_path
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not on PATH: deploy/dev-services installs it"
        self._proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir",
                                       str(self._dir)], stdout=subprocess.DEVNULL)
        wait(self.answers, 30, "the test's redis-server to answer")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=30)
            self._proc = None

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False


def test_readiness_follows_redis_when_idle_and_status_waits_for_it(isolated, models, sample,
                                                                   tmp_path):
    from kafka import KafkaProducer

    from facestream.workers.worker import Worker

    settings, _ = isolated
    own = OwnRedis(tmp_path)
    own.start()
    port = free_port()
    settings = replace(settings, redis_url=own.url, metrics_port=port)
    with av.open(str(sample("single_face.mp4"))) as container:
        chunks = list(gop_chunks(container, stream_id="idle"))
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", max_request_size=4_000_000)
    for chunk in chunks:
        producer.send(settings.video_topic, key=b"idle", value=chunk.payload,
                      headers=chunk.headers())
    producer.flush()

    worker = Worker(settings, models=models)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait(lambda: stream_status(settings, "idle").get("worker_state") == "running"
             and worker.report.chunks == len(chunks), 120, "the stream's chunks to be analysed")
        wait(lambda: http(port, "/readyz") == (200, "ready"), 30, "the idle worker to be ready")
        own.stop()                              # the worker is idle: nothing to write
        wait(lambda: http(port, "/readyz")[0] == 503, 30, "/readyz to report Redis down")
        assert http(port, "/healthz") == (200, "ok")

        # The stream ends while Redis is down: its status must still reach Redis.
        producer.send(settings.video_topic, key=b"idle", value=b"",
                      headers=EndOfStream("idle", chunks[-1].seq).headers())
        producer.flush()
        wait(lambda: worker.report.streams_ended == 1, 60, "the end of the stream")
        retries = worker.metrics.registry.get_sample_value
        wait(lambda: retries("facestream_redis_retries_total") >= 1, 60,
             "the worker to retry its write")
        own.start()                             # empty: no persistence
        wait(lambda: http(port, "/readyz") == (200, "ready"), 60, "/readyz to recover")
        wait(lambda: stream_status(settings, "idle").get("worker_state") == "ended", 60,
             "the ended status, written after Redis came back")
    finally:
        worker.stop()
        thread.join(timeout=60)
        producer.close()
        own.stop()
