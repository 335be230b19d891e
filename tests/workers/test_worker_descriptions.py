"""Descriptions in the Kafka worker (follow mode, the compact default): a description goes
out after its window's analysis event, in the first round after it is written, and the
worker never waits for one; one still being written is in its stream's checkpoint, so a
successor asks for it again.  In-memory transports (tests/helpers.py), so the order of
calls is exact."""

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


@pytest.mark.slow
def test_a_description_still_being_written_is_checkpointed_and_a_successor_writes_it(
        sample, monkeypatch):
    """The worker does not wait for a description: with the describer held, the round that
    asked for one is delivered, checkpointed (the checkpoint holds the description asked
    for) and committed.  A worker that takes the stream over from that checkpoint (the
    first one killed, as far as the checkpoint knows) asks for it again: the same
    description event, by id and window, as the first worker delivers once let go."""
    import threading
    import time

    from facestream.workers import checkpoint
    from tests.workers.test_continuations import CheckpointStore, StepConsumer

    clip = sample("WolfgangLanger_Pexels.mp4")
    with av.open(str(clip)) as container:
        chunks = list(gop_chunks(container, stream_id="cam"))
    records = [Record("unit.video", 0, offset, b"cam", c.payload, c.headers())
               for offset, c in enumerate(chunks)]
    from facestream.workers.compose import Models

    # Every window is described afresh: none shows (and so waits for) a held description.
    settings = Settings.load({"describe": True, "metrics_port": 0, "video_topic": "unit.video",
                              "worker_threads": 1, "llm_max_interval_s": 0})
    models = Models.load(settings)
    language = models.analyzer.language
    held = threading.Event()
    answer = language.answer
    monkeypatch.setattr(language, "answer", lambda picked: (held.wait(300), answer(picked))[1])
    def worker(consumer, store):
        return Worker(settings, models=models, consumer=consumer, sink=store,
                      dlq_producer=MemoryProducer())

    def asked(store) -> list[dict]:
        return [e for e in _events_of(store) if e["type"] == events.FACE_ANALYSIS
                and e["data"]["description_follows"]]

    def described(store) -> dict[str, dict]:
        return {e["id"]: e for e in _events_of(store) if e["type"] == events.FACE_DESCRIPTION}

    first_consumer, first_store = StepConsumer(records), CheckpointStore()
    first = worker(first_consumer, first_store)
    thread = threading.Thread(target=first.run, kwargs={"until": lambda w: bool(asked(first_store))})
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not (first_store.saves and first_consumer.commits and asked(first_store)):
            assert time.monotonic() < deadline and thread.is_alive(), "no round went through"
            held.wait(0.05)
        processed = first_consumer.commits[-1]
        saved = dict(first_store.blobs)
        [blob] = saved.values()
        pending = checkpoint.loads(blob).stream.state.pending
        assert [job.window.start_s for job in pending] == [
            e["data"]["window"]["start_s"] for e in asked(first_store)]
        assert described(first_store) == {}
    finally:
        held.set()
        thread.join(timeout=600)
    written = described(first_store)
    assert len(written) == len(pending) >= 1

    second_store = CheckpointStore(saved)
    second_consumer = StepConsumer(records[:processed])
    report = worker(second_consumer, second_store).run(until=lambda w: second_consumer.done)
    assert report.resumed == 1 and report.skipped == processed
    again = described(second_store)
    assert set(again) == set(written)
    assert all(again[i]["data"]["window"] == written[i]["data"]["window"] for i in written)
    assert all(again[i]["data"]["description"] for i in again)
    # Delivered, the description is no longer in the stream's checkpoint.
    assert checkpoint.loads(second_store.blobs[next(iter(saved))]).stream.state.pending == []
    models.close()


def _events_of(sink) -> list[dict]:
    return [e for write in sink.writes for e in write]
