"""Nothing from outside stops a worker (docs/RELIABILITY.md), against the real broker and
Redis: poison messages on the video topic, two workers in the group, a good stream behind
them.  Each test has its own topics, group and Redis keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import av
import pytest

from facestream import events
from facestream.ingest.chunks import EndOfStream, gop_chunks
from tests.helpers import analyze_in_process, comparable
from tests.integration.helpers import BOOTSTRAP, events_in_redis, stream_status, wait

pytestmark = pytest.mark.integration

FPS = 5


def _chunks(path, stream_id):
    with av.open(str(path)) as container:
        return [replace(c, stream_id=stream_id) for c in gop_chunks(container, stream_id="x")]


def _with(chunk, **headers):
    """The chunk's headers with some values replaced (bytes) or added."""
    out = dict(chunk.headers())
    out.update(headers)
    return list(out.items())


def _dead_letters(settings) -> list[tuple[bytes | None, dict, int]]:
    """(key, headers, value size) of every dead letter of this test."""
    from kafka import KafkaConsumer

    dlq = KafkaConsumer(settings.dlq_topic, bootstrap_servers=BOOTSTRAP,
                        auto_offset_reset="earliest", consumer_timeout_ms=5000)
    letters = [(m.key, dict(m.headers), len(m.value or b"")) for m in dlq]
    dlq.close()
    return letters


def _committed_to_the_end(settings) -> bool:
    """Every partition of the video topic committed up to its end offset."""
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=settings.consumer_group,
                          enable_auto_commit=False)
    try:
        partitions = [TopicPartition(settings.video_topic, p)
                      for p in probe.partitions_for_topic(settings.video_topic)]
        ends = probe.end_offsets(partitions)
        return all((probe.committed(tp) or 0) == ends[tp] for tp in partitions)
    finally:
        probe.close()


def test_poison_messages_are_dead_lettered_and_the_workers_go_on(isolated, models, sample,
                                                                 tmp_path):
    from kafka import KafkaProducer

    settings, env = isolated
    tag = uuid.uuid4().hex[:6]       # stream status hashes are not per test: unique ids

    def sid(name: str) -> str:
        return f"{name}-{tag}"

    clip = sample("face_noface.mov")
    good = _chunks(clip, sid("good"))
    order = _chunks(clip, sid("p-order"))[:3]
    template = _chunks(clip, "x")[0]
    hour_ago = int((time.time() - 3600) * 1000)

    def poison(name, **headers):
        return (sid(name).encode(), template.payload,
                _with(replace(template, stream_id=sid(name)), **headers), None)

    messages = [
        poison("p-timebase", **{"fs-time-base": b"1/" + b"9" * 30}),
        poison("p-int64", **{"fs-pts": str(2 ** 63 - 2).encode()}),
        poison("p-tb0", **{"fs-time-base": b"0/1"}),
        poison("p-header", **{"x-note": b"n" * 200_000}),
        (sid("p-big").encode(), os.urandom(2_000_000), [], None),
        (f"../{sid('wl')}".encode(), b"garbage", [], None),
        # A live chunk an hour late with a payload that is no packet framing: dropped.
        (sid("p-late").encode(), b"\x00" * 40,
         _with(replace(template, stream_id=sid("p-late"), live=True)), hour_ago),
        # The first of two parts, and never the second.
        *[(sid("p-orphan").encode(), part.payload, part.headers(), None)
          for part in replace(template, stream_id=sid("p-orphan")).split(
              len(template.payload) // 2 + 1)[:1]],
        # Chunks 0, 2, 1 of a stream: 1 comes after 2.
        *[(sid("p-order").encode(), c.payload, c.headers(), None)
          for c in (order[0], order[2], order[1])],
        *[(sid("good").encode(), c.payload, c.headers(), None) for c in good],
        (sid("good").encode(), b"", EndOfStream(sid("good"), good[-1].seq).headers(), None),
    ]
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", max_request_size=4_000_000)
    for key, value, headers, stamp in messages:
        producer.send(settings.video_topic, key=key, value=value, headers=headers,
                      timestamp_ms=stamp)
    producer.flush()
    producer.close()

    worker_env = {**os.environ, **env, "FACESTREAM_FPS": str(FPS),
                  "FACESTREAM_ORPHAN_PART_TIMEOUT_S": "1"}
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                env=worker_env, stdout=subprocess.DEVNULL,
                                stderr=log.open("w")) for log in logs]
    try:
        try:
            wait(lambda: stream_status(settings, sid("good")).get("worker_state") == "ended"
                 and _committed_to_the_end(settings)
                 or any(w.poll() is not None for w in workers), 300,
                 "the good stream to end and every offset to be committed")
        except BaseException:
            for w in workers:                    # their stacks, into their logs
                w.send_signal(signal.SIGUSR1)
            time.sleep(2)
            print(stream_status(settings, sid("good")))
            print("\n".join(log.read_text()[-6000:] for log in logs))
            raise
        alive = [w.poll() is None for w in workers]
        assert all(alive), "\n".join(log.read_text()[-2000:] for log in logs)
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        codes = [w.wait(timeout=60) for w in workers]
    assert codes == [0, 0], "SIGTERM must end workers cleanly"

    # One dead letter, with a reason, for each bad message; the late live chunk is dropped.
    letters = _dead_letters(settings)
    reasons = {key.decode().replace(f"-{tag}", ""): h["fs-error"].decode()
               for key, h, _ in letters}
    assert len(letters) == len(reasons) == 8, reasons
    assert "fs-time-base '9" in reasons["p-timebase"]
    assert "s of media time" in reasons["p-int64"]
    assert "fs-time-base 0 is outside" in reasons["p-tb0"]
    assert "x-note' is 200000 bytes" in reasons["p-header"]
    assert "missing headers" in reasons["p-big"] and "missing headers" in reasons["../wl"]
    assert "1 of 2 parts received" in reasons["p-orphan"]
    assert "chunk 1 arrived after chunk 2" in reasons["p-order"]
    assert all(len(r) <= 300 for r in reasons.values())
    [(_, big, big_size)] = [letter for letter in letters if letter[0] == sid("p-big").encode()]
    assert big["fs-truncated"] == b"1" and big["fs-source-size"] == b"2000000"
    assert big_size <= settings.max_message_bytes
    assert all(h["fs-source-topic"] == settings.video_topic.encode() for _, h, _ in letters)
    assert stream_status(settings, sid("p-late")).get("dropped_chunks") == "1"

    # Error events: one per dead letter, plus the gap; a bad key is no real stream's.
    got = events_in_redis(settings)
    errors = [e["data"] for e in got if e["type"] == events.STREAM_ERROR]
    by_stream = sorted(e["stream_id"] for e in errors)
    assert by_stream == sorted([*map(sid, ["p-timebase", "p-int64", "p-tb0", "p-header",
                                           "p-big", "p-orphan", "p-order", "p-order"]),
                                events.UNATTRIBUTED])
    assert any("chunk 1 never arrived" in e["message"] for e in errors)
    assert all(len(e["message"]) <= 300 for e in errors)
    assert stream_status(settings, sid("wl")) == {}
    assert events_in_redis(settings, f"{settings.events_stream}:{sid('wl')}") == []
    assert all(len(json.dumps(e)) < 4000 for e in got if e["type"] == events.STREAM_ERROR)
    validator = events.validator()
    assert [e["data"]["stream_id"] for e in got if not validator.is_valid(e)] == []

    # The good stream behind them: exactly what analyze writes.
    _, expected = analyze_in_process(clip, models, tmp_path / "good", stream_id=sid("good"),
                                     fps=FPS)
    good_got = events_in_redis(settings, f"{settings.events_stream}:{sid('good')}")

    assert expected and sorted(map(comparable, good_got)) == sorted(map(comparable, expected))
