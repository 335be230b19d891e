"""Descriptions in the Kafka worker (follow mode, the compact default): a round's analysis
events go out first, its descriptions after them, and both before the checkpoint and commit
that cover the round, so a worker killed in between loses no description.  In-memory
transports (tests/helpers.py) so the order of calls is exact."""

from __future__ import annotations

import json

import av
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import EndOfStream, gop_chunks
from facestream.workers.worker import Worker
from tests.helpers import (MemoryProducer, MemorySink, OnePollConsumer, Record,
                           analyze_in_process, check_events_file)

TOPIC = "unit.video"


@pytest.mark.slow
def test_descriptions_follow_each_round_before_its_checkpoint(sample, models_with_llm, tmp_path):
    from kafka import TopicPartition

    clip = sample("WolfgangLanger_Pexels.mp4")
    with av.open(str(clip)) as container:
        chunks = list(gop_chunks(container, stream_id="cam"))
    messages = [(c.stream_id.encode(), c.payload, c.headers()) for c in chunks]
    end = EndOfStream("cam", len(chunks) - 1)
    messages.append((b"cam", b"", end.headers()))
    records = [Record(TOPIC, 0, offset, *m) for offset, m in enumerate(messages)]
    consumer = OnePollConsumer({TopicPartition(TOPIC, 0): records})
    sink = MemorySink()
    worker = Worker(Settings.load({"describe": True, "metrics_port": 0, "video_topic": TOPIC,
                                   "worker_threads": 1}),
                    models=models_with_llm, consumer=consumer, sink=sink,
                    dlq_producer=MemoryProducer())
    worker.run(until=lambda w: consumer.polls >= 2)
    written = [e for batch in sink.writes for e in batch]
    out = tmp_path / "events.jsonl"
    out.write_text("".join(json.dumps(e) + "\n" for e in written))
    check_events_file(out)          # schema, and every description after its window's event

    follows = [e["data"] for e in written
               if e["type"] == events.FACE_ANALYSIS and e["data"]["description_follows"]]
    described = [e["data"] for e in written if e["type"] == events.FACE_DESCRIPTION]
    assert follows and len(described) == len(follows)
    # Every write holding a description is followed by a checkpoint before the next
    # round's events: no description waits behind a committed offset.
    for n, (call, index) in enumerate(sink.calls):
        if call == "write" and any(e["type"] == events.FACE_DESCRIPTION
                                   for e in sink.writes[index]):
            assert sink.calls[n + 1][0] == "checkpoints", sink.calls[n:n + 3]
    # The same sentences as embedded analysis of the same clip writes.
    _, embedded = analyze_in_process(clip, models_with_llm, tmp_path / "embedded",
                                     stream_id="cam")
    texts = {e["data"]["window"]["start_s"]: e["data"]["description"] for e in embedded
             if e["type"] == events.FACE_DESCRIPTION}
    assert {d["window"]["start_s"]: d["description"] for d in described} == texts
