"""The worker's fan-out (Redis, the events topic, webhooks) against the real broker and
Redis, with a real clip's events.  Each test has its own topic and Redis keys."""

from __future__ import annotations

import json
import uuid

import pytest

from facestream.sinks.fanout import FanoutSink, build_sink
from facestream.sinks.webhook import WebhookSink
from tests.helpers import analyze_in_process
from tests.integration.helpers import BOOTSTRAP, events_in_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clip_events(models, sample, tmp_path_factory):
    """The events of single_face.mp4 as stream camA (analysed once for the module)."""
    _, evs = analyze_in_process(sample("single_face.mp4"), models,
                                tmp_path_factory.mktemp("clip"), stream_id="camA")
    assert len(evs) > 3
    return evs


def _topic_records(topic: str, expected: int):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000)
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= expected:
            break
    consumer.close()
    return records


def test_the_events_topic_holds_every_event_as_redis_does(isolated, clip_events):
    settings, _ = isolated
    settings = type(settings).load({**{k: getattr(settings, k) for k in (
        "kafka_bootstrap", "redis_url", "events_stream")},
        "events_topic": f"it-{uuid.uuid4().hex[:8]}.events"})
    sink = build_sink(settings)
    assert isinstance(sink, FanoutSink)
    try:
        for start in range(0, len(clip_events), 7):          # rounds, as a worker writes
            batch = clip_events[start:start + 7]
            assert sink.write(batch, {"camA": {"state": "running"}}) == len(batch)
    finally:
        sink.close()

    in_redis = events_in_redis(settings)
    records = _topic_records(settings.events_topic, len(clip_events))
    assert [e["id"] for e in in_redis] == [e["id"] for e in clip_events]
    # One stream, one key, one partition: the topic's order is the stream's order.
    assert [dict(r.headers)["ce_id"].decode() for r in records] == [e["id"] for e in clip_events]
    for record, event in zip(records, clip_events):
        headers = {name: value.decode("utf-8") for name, value in record.headers}
        assert record.key == b"camA"
        assert json.loads(record.value) == event["data"]
        expected = {f"ce_{a}": event[a] for a in ("specversion", "id", "source", "type", "time",
                                                  "dataschema", "subject") if a in event}
        assert headers == {**expected, "content-type": "application/json"}


def test_an_unreachable_webhook_is_dead_lettered_to_redis(isolated, clip_events):
    import redis

    settings, _ = isolated
    settings = type(settings).load({
        "redis_url": settings.redis_url, "webhook_urls": "http://127.0.0.1:1/hook",
        "webhook_max_attempts": 2, "webhook_dead_stream": f"{settings.events_stream}:hooks:dead"})
    sleeps: list[float] = []
    sink = WebhookSink(settings, sleep=sleeps.append)
    batch = clip_events[:3]
    assert sink.write(batch) == 3
    sink.close()
    entries = redis.Redis.from_url(settings.redis_url).xrange(settings.webhook_dead_stream)
    letters = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]
    assert [(l["url"], l["id"], l["attempts"]) for l in letters] == [
        ("http://127.0.0.1:1/hook", e["id"], "2") for e in batch]
    assert [json.loads(l["event"]) for l in letters] == batch and sleeps == [0.5]


def test_a_worker_with_events_topic_set_produces_what_it_writes_to_redis(isolated, models,
                                                                         sample):
    import dataclasses
    import time

    from facestream.workers.worker import Worker
    from tests.helpers import run_cli

    settings, env = isolated
    settings = dataclasses.replace(settings, events_topic=f"{settings.video_topic}.events")
    proc = run_cli("ingest", str(sample("single_face.mp4")), "--stream-id", "camA",
                   timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    worker = Worker(settings, models=models)
    deadline = time.monotonic() + 120
    report = worker.run(until=lambda w: w.report.streams_ended >= 1
                        or time.monotonic() > deadline)
    assert report.streams_ended == 1, f"worker timed out: {report}"

    in_redis = events_in_redis(settings)
    records = _topic_records(settings.events_topic, len(in_redis) + 1)   # + 1: none more
    assert in_redis and len(records) == len(in_redis)
    assert [dict(r.headers)["ce_id"].decode() for r in records] == [e["id"] for e in in_redis]
    assert [json.loads(r.value) for r in records] == [e["data"] for e in in_redis]
    assert {r.key for r in records} == {b"camA"}
