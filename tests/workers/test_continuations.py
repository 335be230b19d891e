"""Live chunks that leave before their GOP ends (``fs-unfinished`` / ``fs-continued``).

The worker keeps the stream's decoder open across them, yet checkpoints and commits only at
GOP starts, so the events are those of whole-GOP chunks and a stream moved to another
worker mid-GOP resumes from its GOP's start with the same ids.  No Kafka or Redis: the
worker gets an in-memory consumer (one message per poll, so one per round), sink and
dead-letter producer; the integration tests run the same on the real services.
"""

from __future__ import annotations


import av
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import Chunk, EndOfStream, gop_chunks, parse_message
from facestream.workers import checkpoint
from facestream.workers.worker import Worker
from tests.helpers import MemoryProducer, MemorySink, Record, comparable

FPS = 5.0
TOPIC = "unit.video"


class StepConsumer:
    """One partition's records from ``start``, one per poll; records every commit."""

    def __init__(self, records: list[Record], start: int = 0) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition(TOPIC, 0)
        self._records = [r for r in records if r.offset >= start]
        self.polls = 0
        self.commits: list[int] = []

    @property
    def done(self) -> bool:
        return self.polls > len(self._records)

    def subscribe(self, topics, listener=None) -> None:
        pass

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict:
        self.polls += 1
        return {self.tp: [self._records[self.polls - 1]]} if not self.done else {}

    def assignment(self) -> set:
        return {self.tp}

    def partitions_for_topic(self, topic: str) -> set:
        return {0}

    def end_offsets(self, partitions, timeout_ms: int | None = None) -> dict:
        return {self.tp: self._records[-1].offset + 1}

    def position(self, tp) -> int:
        return self._records[-1].offset + 1

    def commit(self, positions: dict) -> None:
        self.commits.append(positions[self.tp].offset)

    def close(self, autocommit: bool = False) -> None:
        pass


class CheckpointStore(MemorySink):
    """A MemorySink whose checkpoints are kept and loaded, as Redis keeps them."""

    def __init__(self, blobs: dict | None = None) -> None:
        super().__init__()
        self.blobs = {} if blobs is None else blobs
        self.history: list[bytes] = []        # every blob saved, in order

    def checkpoints(self, saves: dict) -> None:
        super().checkpoints(saves)
        self.blobs.update({key: blob for key, (blob, _) in saves.items()})
        self.history += [blob for blob, _ in saves.values()]

    def load_checkpoint(self, key: str):
        return self.blobs.get(key)


def _records(path, *, max_chunk_s: float | None) -> list[Record]:
    with av.open(str(path)) as container:
        chunks = list(gop_chunks(container, stream_id="cam", max_chunk_s=max_chunk_s))
    messages = [(c.payload, c.headers()) for c in chunks]
    messages.append((b"", EndOfStream("cam", len(chunks) - 1).headers()))
    return [Record(TOPIC, 0, i, b"cam", value, headers)
            for i, (value, headers) in enumerate(messages)]


def _run(records, models, *, start: int = 0, store: CheckpointStore | None = None,
         stop_after: int | None = None):
    """A worker over ``records`` from offset ``start``; it stops after ``stop_after`` polls
    (a worker that goes away) or once every record is processed."""
    settings = Settings.load({"describe": False, "fps": FPS, "metrics_port": 0,
                              "video_topic": TOPIC, "worker_threads": 1})
    consumer, sink = StepConsumer(records, start), store or CheckpointStore()
    worker = Worker(settings, models=models, consumer=consumer, sink=sink,
                    dlq_producer=MemoryProducer())
    worker.run(until=lambda w: consumer.done or consumer.polls == stop_after)
    return consumer, sink


def _events(sink: MemorySink) -> list[dict]:
    return [e for write in sink.writes for e in write]


@pytest.fixture(scope="module")
def clip(sample):
    return sample("face_noface.mov")          # 6 GOPs of about 1.7 s, B-frames


@pytest.fixture(scope="module")
def whole(clip, models):
    return _run(_records(clip, max_chunk_s=None), models)


def test_continued_chunks_give_exactly_the_events_of_whole_gops(clip, models, whole):
    records = _records(clip, max_chunk_s=0.3)
    assert sum(1 for r in records if dict(r.headers).get("fs-continued") == b"1") >= 10
    _, sink = _run(records, models)
    expected = _events(whole[1])
    assert any(e["type"] == events.FACE_ANALYSIS for e in expected)
    assert sorted(map(comparable, _events(sink))) == sorted(map(comparable, expected))
    assert not any(e["type"] == events.STREAM_ERROR for e in _events(sink))


def test_checkpoints_and_commits_stay_at_gop_starts(clip, models):
    records = _records(clip, max_chunk_s=0.3)
    starts = {r.offset for r in records if dict(r.headers).get("fs-continued") != b"1"}
    consumer, sink = _run(records, models)
    assert consumer.commits and sink.saves
    # Every commit is the offset of a message a decoder can start at (or the end), and a
    # round that ended mid-GOP moved nothing past that GOP's first chunk.
    assert set(consumer.commits) <= starts | {len(records)}
    offsets = [offset for save in sink.saves for _, offset, _ in save]
    assert set(offsets) <= starts | {len(records)}
    mid_gop_rounds = [i for i, r in enumerate(records[:-1])
                      if dict(r.headers).get("fs-unfinished") == b"1"]
    assert mid_gop_rounds, "the clip must have rounds that end mid-GOP"
    for i in mid_gop_rounds:
        gop_start = max(o for o in starts if o <= i)
        assert consumer.commits[i] <= gop_start
    # The face stage's memory of a stream is not checkpointed: the next frame after a
    # checkpoint starts a GOP, where the face stage detects afresh.
    restored = [checkpoint.loads(blob).stream for blob in sink.history]
    restored = [stream for stream in restored if stream is not None]     # not the end marker
    assert len(restored) >= 3 and all(stream.faces is None for stream in restored)


@pytest.mark.parametrize("moved_after", [2, 5, 9])
def test_a_stream_moved_mid_gop_resumes_from_its_gop_start_with_the_same_ids(
        clip, models, whole, moved_after):
    records = _records(clip, max_chunk_s=0.3)
    assert dict(records[moved_after - 1].headers).get("fs-unfinished") == b"1", \
        "the first worker must stop mid-GOP"
    first, first_sink = _run(records, models, stop_after=moved_after)
    resume_at = first.commits[-1]
    assert resume_at < moved_after                # the open GOP is read again
    second, second_sink = _run(records, models, start=resume_at,
                               store=CheckpointStore(first_sink.blobs))
    got = _events(first_sink) + _events(second_sink)
    by_id: dict[str, tuple] = {}
    for event in got:
        seen = by_id.setdefault(event["id"], comparable(event))
        assert seen == comparable(event), f"{event['id']} written twice, differently"
    assert sorted(by_id.values()) == sorted(map(comparable, _events(whole[1])))


def test_a_continued_chunk_whose_gop_start_was_lost_is_dropped_not_dead_lettered(clip, models):
    records = _records(clip, max_chunk_s=0.3)

    def continued(record) -> bool:
        return dict(record.headers).get("fs-continued") == b"1"

    lost = next(i for i, r in enumerate(records)
                if i > 0 and not continued(r) and dict(r.headers).get("fs-unfinished") == b"1")
    orphans = 0                     # the continued chunks of the lost GOP
    while continued(records[lost + 1 + orphans]):
        orphans += 1
    assert orphans >= 2
    settings = Settings.load({"describe": False, "fps": FPS, "metrics_port": 0,
                              "video_topic": TOPIC, "worker_threads": 1})
    consumer, sink, dlq = StepConsumer(records[:lost] + records[lost + 1:]), CheckpointStore(), \
        MemoryProducer()
    worker = Worker(settings, models=models, consumer=consumer, sink=sink, dlq_producer=dlq)
    report = worker.run(until=lambda w: consumer.done)
    assert dlq.sent == [] and report.dropped_chunks == orphans
    errors = [e["data"]["message"] for e in _events(sink) if e["type"] == events.STREAM_ERROR]
    assert len(errors) == 1 and "never arrived" in errors[0]
    # The GOPs after the lost one are analysed again.
    nxt = records[lost + 1 + orphans]
    resumed_s = Chunk.from_message(nxt.headers, nxt.value).start_s
    later = [e for e in _events(sink) if e["type"] == events.FACE_ANALYSIS
             and e["data"]["window"]["start_s"] >= resumed_s]
    assert later and consumer.commits[-1] == len(records)


def test_events_carry_the_latency_from_capture_and_the_worker_measures_it(clip, models):
    """Chunks stamped with the source's capture time (``fs-capture``, here 30 s ago): each
    analysis event says how long after capture it was built, and /metrics has the
    per-stream latency of every window delivered."""
    import time
    from dataclasses import replace

    records = _records(clip, max_chunk_s=0.3)
    captured_at = time.time() - 30.0
    stamped = []
    for record in records:
        chunk = parse_message(record.headers, record.value, key=record.key)
        if isinstance(chunk, Chunk):
            chunk = replace(chunk, capture=captured_at + chunk.start_s)
            record = Record(TOPIC, 0, record.offset, b"cam", chunk.payload, chunk.headers())
        stamped.append(record)
    settings = Settings.load({"describe": False, "fps": FPS, "metrics_port": 0,
                              "video_topic": TOPIC, "worker_threads": 1})
    consumer, sink = StepConsumer(stamped), CheckpointStore()
    worker = Worker(settings, models=models, consumer=consumer, sink=sink,
                    dlq_producer=MemoryProducer())
    before = time.time()
    worker.run(until=lambda w: consumer.done)
    after = time.time()
    windows = [e for e in _events(sink) if e["type"] == events.FACE_ANALYSIS]
    assert windows
    for event in windows:
        frame_captured = captured_at + event["data"]["window"]["end_s"]
        latency_s = event["data"]["capture_latency_ms"] / 1000
        assert before - frame_captured - 0.01 <= latency_s <= after - frame_captured + 0.01
    validator = events.validator()
    assert all(not list(validator.iter_errors(e)) for e in windows)
    samples = {s.labels["stream"]: s.value for metric in worker.metrics.registry.collect()
               if metric.name == "facestream_event_latency_seconds" for s in metric.samples
               if s.name.endswith("_count")}
    assert samples == {"cam": len(windows)}


def test_without_a_capture_time_events_have_no_capture_latency(whole):
    windows = [e for e in _events(whole[1]) if e["type"] == events.FACE_ANALYSIS]
    assert windows and not any("capture_latency_ms" in e["data"] for e in windows)
