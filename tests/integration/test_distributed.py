"""Kafka in, Redis out, against the real broker and Redis server that the test command
starts (`deploy/dev-services up`).  Each test has its own topics, group and Redis keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import av
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import Chunk, EndOfStream, Packet, gop_chunks, pack
from tests.helpers import analyze_in_process, comparable, run_cli
from tests.integration.helpers import (BOOTSTRAP, dlq_reasons, events_in_redis, free_port, http,
                                       metric, services_cli, stream_status, wait)

pytestmark = pytest.mark.integration

def _run_worker(settings, models, *, streams_to_end: int, timeout_s: float = 120, **options):
    from facestream.workers.worker import Worker

    worker = Worker(settings, models=models, **options)
    deadline = time.monotonic() + timeout_s
    report = worker.run(until=lambda w: w.report.streams_ended >= streams_to_end
                        or time.monotonic() > deadline)
    assert report.streams_ended >= streams_to_end, f"worker timed out: {report}"
    return report


def test_worker_events_equal_what_analyze_writes(isolated, models, sample, tmp_path):
    settings, env = isolated
    clips = {"camA": sample("single_face.mp4"), "camB": sample("noface_face.mov")}
    for stream_id, path in clips.items():
        # A 60 kB message limit: every GOP goes as several parts the worker puts together.
        proc = run_cli("ingest", str(path), "--stream-id", stream_id, timeout=120,
                       env={**env, "FACESTREAM_MAX_MESSAGE_BYTES": "60000"})
        assert proc.returncode == 0, proc.stderr
        chunks, messages = re.search(r"(\d+) chunks \((\d+) messages", proc.stdout).groups()
        assert int(messages) > int(chunks) > 0, proc.stdout

    report = _run_worker(settings, models, streams_to_end=2)
    assert report.dead_letters == 0
    got = events_in_redis(settings)

    expected = []
    for stream_id, path in clips.items():
        _, evs = analyze_in_process(path, models, tmp_path / stream_id, stream_id=stream_id)
        expected += evs
    assert expected and sorted(map(comparable, got)) == sorted(map(comparable, expected))
    per_stream = events_in_redis(settings, f"{settings.events_stream}:camB")
    assert per_stream and {e["data"]["stream_id"] for e in per_stream} == {"camB"}
    validator = events.validator()
    assert all(validator.is_valid(e) for e in got)

    # Everything acknowledged by Redis is committed: a new worker in the group has nothing to do.
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=settings.consumer_group,
                          enable_auto_commit=False)
    partitions = [TopicPartition(settings.video_topic, p)
                  for p in probe.partitions_for_topic(settings.video_topic)]
    ends = probe.end_offsets(partitions)
    for tp in partitions:
        assert (probe.committed(tp) or 0) == ends[tp], tp
    probe.close()


def test_bad_messages_go_to_the_dead_letter_topic_and_the_rest_goes_on(isolated, models, sample):
    from kafka import KafkaProducer

    settings, env = isolated
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    topic = settings.video_topic
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        good = list(gop_chunks(container, stream_id="good"))[:2]
    broken = Chunk(**{**good[1].__dict__, "stream_id": "broken",
                      "payload": pack([Packet(0, 0, 1, True, b"\x00" * 5000)])[:-100]})
    producer.send(topic, key=b"noise", value=b"not video at all")                       # no headers
    producer.send(topic, key=b"broken", value=broken.payload, headers=broken.headers())  # truncated
    producer.send(topic, key=b"odd", value=b"x",
                  headers=[(k, v) for k, v in good[0].headers() if k != "fs-time-base"])
    for chunk in good:
        producer.send(topic, key=b"good", value=chunk.payload, headers=chunk.headers())
    producer.send(topic, key=b"good", value=b"", headers=EndOfStream("good", 1).headers())
    producer.flush()
    producer.close()

    report = _run_worker(settings, models, streams_to_end=1)
    assert report.dead_letters == 3
    reasons = dlq_reasons(settings)
    assert len(reasons) == 3
    assert any("missing headers" in r for r in reasons)
    assert any("claims" in r or "does not decode" in r for r in reasons)
    got = events_in_redis(settings)
    errors = [e for e in got if e["type"] == events.STREAM_ERROR]
    assert sorted(e["data"]["stream_id"] for e in errors) == ["broken", "noise", "odd"]
    good_analysis = [e for e in got if e["type"] == events.FACE_ANALYSIS]
    assert len(good_analysis) >= 5 and {e["data"]["stream_id"] for e in good_analysis} == {"good"}


def test_events_tail_prints_and_acknowledges(isolated, models, sample):
    settings, env = isolated
    proc = run_cli("ingest", str(sample("single_face.mp4")), "--stream-id", "lobby", env=env)
    assert proc.returncode == 0, proc.stderr
    _run_worker(settings, models, streams_to_end=1)
    total = len(events_in_redis(settings))
    tail = run_cli("events", "tail", "--stream", "lobby", "--count", str(total), env=env,
                   timeout=60)
    assert tail.returncode == 0, tail.stderr
    lines = tail.stdout.strip().splitlines()
    assert len(lines) == total and all(" lobby " in line for line in lines)
    assert any(" t1 " in line for line in lines)

    # A second tail of the same group: the acknowledged events do not come back; the first
    # thing it prints is an event added after it started reading.
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.events_stream}:lobby"

    def reading() -> bool:
        """A client is in XREADGROUP (the second tail, blocked waiting for news)."""
        return any(c.get("cmd") == "xreadgroup" for c in client.client_list())

    second = subprocess.Popen([sys.executable, "-m", "facestream", "events", "tail", "--stream",
                               "lobby", "--count", "1"], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: reading() or second.poll() is not None, 60,
             "the second tail to read the group")
        sentinel = events.stream_error(stream_id="lobby", message="sentinel", time_s=0.0, seq=0,
                                       profile="compact", time_epoch=time.time(), fatal=False)
        client.xadd(key, {"id": sentinel["id"], "type": sentinel["type"],
                          "event": json.dumps(sentinel)})
        out, err = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert out.strip().splitlines() == [f"{out.split()[0]} lobby ERROR sentinel"], out


def test_killed_worker_streams_move_with_no_window_lost_and_the_same_ids(isolated, models,
                                                                           sample, tmp_path):
    import sys

    settings, env = isolated
    clip = sample("WolfgangLanger_Pexels.mp4")
    streams = [f"kill-{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
    for stream_id in streams:
        proc = run_cli("ingest", str(clip), "--stream-id", stream_id, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr

    full_env = {**os.environ, **env}
    workers = [subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        # Kill the owner of a stream once it has written some, but far from all, of its
        # windows (the clip gives ~20).
        def victim():
            """(a worker, the streams it is running) once one of them is part-way."""
            for stream_id in streams:
                status = stream_status(settings, stream_id)
                mine = events_in_redis(settings, f"{settings.events_stream}:{stream_id}")
                owner = next((w for w in workers
                              if status.get("worker", "").endswith(f":{w.pid}")), None)
                if status.get("worker_state") == "running" and 4 <= len(mine) <= 12 and owner:
                    return owner, [s for s in streams
                                   if stream_status(settings, s).get("worker_state") == "running"
                                   and stream_status(settings, s)["worker"].endswith(
                                       f":{owner.pid}")]
            return None

        found = []
        wait(lambda: found.append(victim()) or found[-1] is not None, 120,
             "a worker part-way through a stream")
        killed, orphaned = found[-1]
        killed.kill()
        killed.wait()
        killed_at = time.monotonic()
        survivor = next(w for w in workers if w is not killed)
        # The session timeout (10 s) decides how soon the survivor takes the streams over;
        # kafka-python's own default (45 s) would take longer than the bound below.
        wait(lambda: any(stream_status(settings, s).get("worker", "").endswith(f":{survivor.pid}")
                         for s in orphaned), 120, "the survivor to take the streams over")
        assert time.monotonic() - killed_at < 35, "a dead worker's streams waited too long"
        wait(lambda: all(stream_status(settings, s).get("worker_state") == "ended" for s in streams), 180,
              "the surviving worker to finish every stream")
        assert all(stream_status(settings, s)["worker"].endswith(f":{survivor.pid}")
                   for s in orphaned), "streams did not move"
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(timeout=30)

    expected = {}
    for stream_id in streams:
        _, evs = analyze_in_process(clip, models, tmp_path / stream_id, stream_id=stream_id)
        expected.update({e["id"]: e for e in evs})
    got = events_in_redis(settings)
    got_ids = {e["id"] for e in got}
    analysis_expected = {i for i, e in expected.items() if e["type"] == events.FACE_ANALYSIS}
    assert analysis_expected <= got_ids, f"{len(analysis_expected - got_ids)} windows lost"
    assert got_ids <= set(expected), "an event was written under an id analyze does not give it"
    for e in got:                                   # duplicates are the same event
        assert comparable(e) == comparable(expected[e["id"]])


def _messages(topic: str) -> list:
    """Every message of ``topic`` so far."""
    from kafka import KafkaConsumer

    reader = KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                           consumer_timeout_ms=5000)
    messages = list(reader)
    reader.close()
    return messages


def _camera_and_worker(clip, stream_id: str, env: dict, worker_log, **worker_env):
    """A real-time publisher of ``clip`` and a worker, as separate processes (the worker's
    stderr goes to ``worker_log``)."""
    import sys

    full_env = {**os.environ, **env}
    publisher = subprocess.Popen([sys.executable, "-m", "facestream", "ingest", str(clip),
                                  "--stream-id", stream_id, "--realtime"], env=full_env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with open(worker_log, "w") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                  env={**full_env, **worker_env}, stdout=subprocess.DEVNULL,
                                  stderr=log_file)
    return publisher, worker


def test_redis_outage_delays_events_but_loses_none(isolated, models, sample, tmp_path):

    settings, env = isolated
    stream_id = f"outage-{uuid.uuid4().hex[:4]}"
    clip = sample("WolfgangLanger_Pexels.mp4")
    port = free_port()
    worker_log = tmp_path / "worker.log"
    publisher, worker = _camera_and_worker(clip, stream_id, env, worker_log,
                                           FACESTREAM_METRICS_PORT=str(port))
    key = f"{settings.events_stream}:{stream_id}"
    try:
        wait(lambda: len(events_in_redis(settings, key)) >= 2, 90, "the first events")
        assert http(port, "/readyz") == (200, "ready")
        services_cli("stop-redis")
        wait(lambda: http(port, "/readyz")[0] == 503, 20, "/readyz to report Redis down")
        wait(lambda: metric(http(port, "/metrics")[1], "facestream_redis_retries_total") >= 3
             or worker.poll() is not None, 120, "the worker to retry its writes")
        assert worker.poll() is None, "the worker must wait for Redis, not die"
        assert http(port, "/healthz") == (200, "ok")
        services_cli("start-redis")
        wait(lambda: http(port, "/readyz")[0] == 200, 30, "/readyz to recover")
        assert publisher.wait(timeout=60) == 0, publisher.stderr.read()
        wait(lambda: stream_status(settings, stream_id).get("worker_state") == "ended", 120,
              "the worker to finish the stream after Redis came back")
        metrics = http(port, "/metrics")[1]
        assert metric(metrics, "facestream_redis_retries_total") >= 1
        assert metric(metrics, "facestream_frames_total") >= 190
        # Faces followed between detections: the detector ran at each GOP's first frame
        # and about once a second, not on every frame.
        detected = metric(metrics, "facestream_detected_frames_total")
        assert 7 <= detected < metric(metrics, "facestream_frames_total") / 2
        assert metric(metrics, 'facestream_events_total{type="facestream.face.analysis"}') >= 19
    finally:
        services_cli("start-redis")
        for proc in (publisher, worker):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    assert "retrying" in worker_log.read_text()

    _, expected_events = analyze_in_process(clip, models, tmp_path, stream_id=stream_id)
    expected = {e["id"]: e for e in expected_events}
    got = events_in_redis(settings, key)
    assert {e["id"] for e in got} == set(expected), "events lost or invented across the outage"
    for e in got:
        assert comparable(e) == comparable(expected[e["id"]])


def test_broker_restart_is_ridden_out_by_publisher_and_worker(isolated, models, sample, tmp_path):

    settings, env = isolated
    stream_id = f"restart-{uuid.uuid4().hex[:4]}"
    clip = sample("WolfgangLanger_Pexels.mp4")
    worker_log = tmp_path / "worker.log"
    publisher, worker = _camera_and_worker(clip, stream_id, env, worker_log)
    key = f"{settings.events_stream}:{stream_id}"
    try:
        wait(lambda: len(events_in_redis(settings, key)) >= 2, 90, "the first events")
        services_cli("restart-kafka")
        assert publisher.wait(timeout=90) == 0, publisher.stderr.read()
        wait(lambda: stream_status(settings, stream_id).get("worker_state") == "ended"
              or worker.poll() is not None, 120,
              "the worker to finish the stream after the broker came back")
        assert worker.poll() is None, worker_log.read_text()[-3000:]
    finally:
        for proc in (publisher, worker):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    _, expected_events = analyze_in_process(clip, models, tmp_path, stream_id=stream_id)
    expected = {e["id"]: e for e in expected_events}
    got = events_in_redis(settings, key)
    assert {e["id"] for e in got} == set(expected), "events lost or invented across the restart"


def test_registry_drives_the_publishers(isolated, models, sample):
    import sys

    from kafka import KafkaProducer

    settings, env = isolated
    tag = uuid.uuid4().hex[:6]
    env = {**env, "FACESTREAM_REGISTRY_TOPIC": f"it-{tag}.streams",
           "FACESTREAM_REGISTRY_ALLOW_FILES": "1"}
    settings = Settings.load({**{k: getattr(settings, k) for k in (
        "kafka_bootstrap", "redis_url", "video_topic", "dlq_topic", "consumer_group",
        "events_stream", "checkpoint_prefix", "metrics_port", "describe",
        "stream_status_prefix")},
        "registry_topic": f"it-{tag}.streams", "registry_allow_files": True})
    short, long = f"reg-short-{tag}", f"reg-long-{tag}"

    refused = run_cli("streams", "add", "intruder", "file:///etc/passwd",
                      env={**env, "FACESTREAM_REGISTRY_ALLOW_FILES": "0"})
    assert refused.returncode == 2 and "local files are not allowed" in refused.stderr
    for stream_id, clip in ((short, "single_face.mp4"), (long, "WolfgangLanger_Pexels.mp4")):
        added = run_cli("streams", "add", stream_id, str(sample(clip)), "--fps", "5", env=env)
        assert added.returncode == 0, added.stderr
    raw = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all")
    raw.send(settings.registry_topic, key=b"garbage", value=b'{"source": 42}')
    raw.flush()
    raw.close()
    listing = run_cli("streams", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert short in listing.stdout and long in listing.stdout
    assert "garbage\tINVALID" in listing.stdout and "intruder" not in listing.stdout

    publisher = subprocess.Popen([sys.executable, "-m", "facestream", "ingest", "--from-registry"],
                                 env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    from facestream.workers.worker import Worker

    worker = Worker(settings, models=models)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # (generous deadlines: a busy machine slows the paced publishers and the worker)
        wait(lambda: stream_status(settings, short).get("worker_state") == "ended", 300,
              "the short registered stream to be published and analysed")
        wait(lambda: stream_status(settings, long).get("worker_state") == "running", 300,
             "the long one")
        removed = run_cli("streams", "remove", long, env=env)
        assert removed.returncode == 0, removed.stderr
        wait(lambda: stream_status(settings, long).get("worker_state") == "ended", 120,
              "the removed stream to be ended by its publisher")
    finally:
        worker.stop()
        thread.join(timeout=60)
        publisher.terminate()
        _, log = publisher.communicate(timeout=60)
    assert f"{long}: stopped (removed from the registry)" in log
    # Removal stopped the publisher before the clip's last chunk (the clip has 7, 0..6).
    [last_seq] = [int(dict(m.headers)["fs-seq"]) for m in _messages(settings.video_topic)
                  if m.key == long.encode() and "fs-end" in dict(m.headers)]
    assert last_seq < 6, "removal must stop the publisher, not the end of the clip"
    assert "rejected registry entry" in log and "'source' must be a string" in log
    reasons = dlq_reasons(settings)
    assert any("'source' must be a string" in r for r in reasons)
    analysed = {e["data"]["stream_id"] for e in events_in_redis(settings)
                if e["type"] == events.FACE_ANALYSIS}
    assert analysed == {short, long}


def test_late_live_chunks_are_dropped_and_counted_files_never(isolated, models, sample):
    from dataclasses import replace

    from kafka import KafkaProducer

    settings, _ = isolated
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        chunks = list(gop_chunks(container, stream_id="x"))
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all",
                             max_request_size=4_000_000)
    # Lateness is judged by the worker's clock, injected: it reads "now" as the time the
    # on-time chunks were stamped with, however long the worker takes on this machine.
    now_ms = int(time.time() * 1000)
    an_hour_ago = now_ms - 3600 * 1000
    for stream_id, live in (("camera", True), ("recording", False)):
        for i, chunk in enumerate(chunks):
            chunk = replace(chunk, stream_id=stream_id, live=live)
            stamp = an_hour_ago if i < 3 else now_ms         # the first three arrive late
            producer.send(settings.video_topic, key=stream_id.encode(), value=chunk.payload,
                          headers=chunk.headers(), timestamp_ms=stamp)
        producer.send(settings.video_topic, key=stream_id.encode(), value=b"",
                      headers=EndOfStream(stream_id, len(chunks) - 1).headers())
    producer.flush()
    producer.close()

    report = _run_worker(settings, models, streams_to_end=2, clock=lambda: now_ms / 1000)
    assert report.dropped_chunks == 3
    assert stream_status(settings, "camera")["dropped_chunks"] == "3"
    got = [e["data"] for e in events_in_redis(settings) if e["type"] == events.FACE_ANALYSIS]
    first_kept = float((chunks[3].first_pts - chunks[3].origin_pts) * chunks[3].time_base)
    camera = [d for d in got if d["stream_id"] == "camera"]
    recording = [d for d in got if d["stream_id"] == "recording"]
    assert camera and min(d["window"]["start_s"] for d in camera) >= first_kept - 0.05
    assert min(d["window"]["start_s"] for d in recording) == 0.0
    assert len(recording) >= 19


def test_three_workers_six_streams_each_stream_owned_once(isolated, models, sample, tmp_path):
    import sys

    settings, env = isolated
    clip = sample("single_face.mp4")
    streams = [f"six-{i}-{uuid.uuid4().hex[:4]}" for i in range(6)]
    for stream_id in streams:
        assert run_cli("ingest", str(clip), "--stream-id", stream_id, env=env).returncode == 0
    workers = [subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        wait(lambda: all(stream_status(settings, s).get("worker_state") == "ended" for s in streams), 180,
              "the three workers to finish the six streams")
    finally:
        for w in workers:
            w.terminate()
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0], "SIGTERM must end workers cleanly"
    pids = {str(w.pid) for w in workers}
    owners = {s: stream_status(settings, s)["worker"].rsplit(":", 1)[1] for s in streams}
    assert set(owners.values()) <= pids
    expected = {}
    for stream_id in streams:
        _, evs = analyze_in_process(clip, models, tmp_path / stream_id, stream_id=stream_id)
        expected.update({e["id"]: e for e in evs})
    got = events_in_redis(settings)
    # Each event exactly once: one owner per stream, nothing analysed twice or lost.
    assert sorted(e["id"] for e in got) == sorted(expected)
    for e in got:
        assert comparable(e) == comparable(expected[e["id"]])


def test_chunks_of_an_ended_stream_are_refused_until_it_restarts(isolated, models, sample):
    from dataclasses import replace

    from kafka import KafkaProducer

    settings, _ = isolated
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
        chunks = [replace(c, stream_id="gate") for c in gop_chunks(container, stream_id="x")][:3]
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", max_request_size=4_000_000)

    def send(chunk):
        producer.send(settings.video_topic, key=b"gate", value=chunk.payload,
                      headers=chunk.headers())

    send(chunks[0])
    send(chunks[1])
    producer.send(settings.video_topic, key=b"gate", value=b"",
                  headers=EndOfStream("gate", 1).headers())
    send(chunks[2])                 # a straggler after the end: refused
    send(chunks[0])                 # the stream restarts from chunk 0: accepted
    producer.send(settings.video_topic, key=b"gate", value=b"",
                  headers=EndOfStream("gate", 0).headers())
    producer.flush()
    producer.close()

    report = _run_worker(settings, models, streams_to_end=2)
    assert report.dead_letters == 1
    reasons = dlq_reasons(settings)
    assert len(reasons) == 1 and "has ended" in reasons[0] and "chunk 2 refused" in reasons[0]
    errors = [e for e in events_in_redis(settings) if e["type"] == events.STREAM_ERROR]
    assert [e["data"]["stream_id"] for e in errors] == ["gate"]


def test_threaded_worker_writes_what_a_one_thread_worker_writes(isolated, models, sample):
    from dataclasses import replace

    from kafka import KafkaProducer

    settings, _ = isolated
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", max_request_size=4_000_000)
    clips = {"th-a": "WolfgangLanger_Pexels.mp4", "th-b": "noface_face.mov",
             "th-c": "single_face.mp4"}
    for stream_id, clip in clips.items():
        with av.open(str(sample(clip))) as container:
            chunks = list(gop_chunks(container, stream_id=stream_id))
        for chunk in chunks:
            producer.send(settings.video_topic, key=stream_id.encode(), value=chunk.payload,
                          headers=chunk.headers())
        producer.send(settings.video_topic, key=stream_id.encode(), value=b"",
                      headers=EndOfStream(stream_id, chunks[-1].seq).headers())
    producer.flush()
    producer.close()

    written = {}
    for threads in (1, 2):
        own = replace(settings, fps=5.0, worker_threads=threads,
                      consumer_group=f"{settings.consumer_group}-t{threads}",
                      events_stream=f"{settings.events_stream}-t{threads}",
                      checkpoint_prefix=f"{settings.checkpoint_prefix}-t{threads}")
        report = _run_worker(own, models, streams_to_end=len(clips))
        assert report.dead_letters == 0 and report.dropped_chunks == 0
        # Per stream, in order: a stream's events do not depend on how polls batch messages.
        written[threads] = {s: [comparable(e) for e in
                                events_in_redis(own, f"{own.events_stream}:{s}")]
                            for s in clips}
    assert all(written[1].values())
    assert written[2] == written[1]
