"""The worker's face stage on several threads delivers exactly what one thread delivers,
and a round bounded in time (``round_max_s``) delivers the streams that are ready while a
slow one carries its chunk over.

No Kafka or Redis: the worker gets an in-memory consumer (one poll holding every message),
sink and dead-letter producer, so what it writes, checkpoints and commits can be compared
call by call.  The reference for the events themselves is embedded ``analyze`` on the files.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import av
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import EndOfStream, gop_chunks
from facestream.vision.decode import ChunkDecoder
from facestream.workers.worker import Worker, worker_threads
from tests.helpers import analyze_in_process, comparable, one_poll_worker
from tests.helpers import MemoryProducer, MemorySink, OnePollConsumer, Record

FPS = 5.0
TOPIC = "unit.video"


def _chunks(path, stream_id: str) -> list:
    with av.open(str(path)) as container:
        return list(gop_chunks(container, stream_id=stream_id))


@pytest.fixture(scope="module")
def batch(sample):
    """One poll: stream "both" (face_noface.mov, 6 chunks) alternates between partitions 0
    and 2, so every round holds two of its messages; partition 1 has a message that is no
    chunk, stream "single" (single_face.mp4) and a chunk of stream "broken" that does not
    decode.  Offsets are unique per stream, as a stream's skip check needs."""
    from kafka import TopicPartition

    both = _chunks(sample("face_noface.mov"), "both")
    single = _chunks(sample("single_face.mp4"), "single")
    broken = replace(single[0], stream_id="broken", payload=single[0].payload[:-5000])
    messages = {
        0: [("both", c.payload, c.headers()) for c in both[0::2]],
        1: [("noise", b"not video", []), ("broken", broken.payload, broken.headers()),
            *(("single", c.payload, c.headers()) for c in single),
            ("single", b"", EndOfStream("single", len(single) - 1).headers())],
        2: [*(("both", c.payload, c.headers()) for c in both[1::2]),
            ("both", b"", EndOfStream("both", len(both) - 1).headers())],
    }
    out = {}
    for partition, items in messages.items():
        out[TopicPartition(TOPIC, partition)] = [
            Record(TOPIC, partition, 2 * i + (partition == 2), key.encode(), value, headers)
            for i, (key, value, headers) in enumerate(items)]
    return out


def _run(batch: dict, models, threads: int):
    # Rounds wait for every chunk (round_max_s 0), so that the rounds themselves (writes,
    # checkpoints, commits) can be compared; bounded rounds are tested below.
    settings = Settings.load({"describe": False, "fps": FPS, "metrics_port": 0,
                              "video_topic": TOPIC, "worker_threads": threads,
                              "round_max_s": 0})
    consumer, sink, dlq = OnePollConsumer(batch), MemorySink(), MemoryProducer()
    worker = Worker(settings, models=models, consumer=consumer, sink=sink, dlq_producer=dlq)
    report = worker.run(until=lambda w: consumer.polls >= 2)
    return report, consumer, sink, dlq


@pytest.fixture(scope="module")
def one_thread(batch, models):
    return _run(batch, models, threads=1)


def test_one_thread_worker_writes_what_analyze_writes(one_thread, models, sample, tmp_path):
    report, _, sink, dlq = one_thread
    assert report.streams_ended == 2 and report.dead_letters == 2
    assert sorted(reason.split(":")[0] for _, reason in dlq.sent) == ["chunk 0 does not decode",
                                                                     "not a chunk"]
    got = [e for write in sink.writes for e in write]
    errors = sorted(e["data"]["stream_id"] for e in got if e["type"] == events.STREAM_ERROR)
    assert errors == ["broken", "noise"]
    expected = []
    for stream_id, clip in (("both", "face_noface.mov"), ("single", "single_face.mp4")):
        _, evs = analyze_in_process(sample(clip), models, tmp_path / stream_id,
                                    stream_id=stream_id, fps=FPS)
        expected += evs
    analysed = [e for e in got if e["type"] != events.STREAM_ERROR]
    assert any(e["type"] == events.FACE_ANALYSIS for e in expected)
    assert sorted(map(comparable, analysed)) == sorted(map(comparable, expected))


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_worker_delivers_exactly_what_one_thread_delivers(one_thread, batch, models,
                                                                   threads):
    report1, consumer1, sink1, dlq1 = one_thread
    report, consumer, sink, dlq = _run(batch, models, threads=threads)
    assert report == report1
    # Same events, same ids, same order, in the same Redis writes (one per round).
    assert ([[comparable(e) for e in write] for write in sink.writes]
            == [[comparable(e) for e in write] for write in sink1.writes])
    assert sink.saves == sink1.saves          # checkpoints: keys, offsets, TTLs, per round
    assert consumer.commits == consumer1.commits
    assert dlq.sent == dlq1.sent


RELEASE_TIMEOUT_S = 60.0       # a worker that waits for the slow stream fails, not hangs


class ReleasingSink(MemorySink):
    """Sets ``release`` once a write says stream "fast" ended, noting how many writes and
    checkpoint saves there were by then."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release
        self.writes_at_release = self.saves_at_release = None

    def write(self, batch: list[dict], status: dict | None = None) -> int:
        written = super().write(batch, status)
        if (status or {}).get("fast", {}).get("worker_state") == "ended" and \
                not self.release.is_set():
            self.writes_at_release, self.saves_at_release = len(self.writes), len(self.saves)
            self.release.set()
        return written


def _per_stream(sink: MemorySink) -> dict[str, list]:
    out: dict[str, list] = {}
    for write in sink.writes:
        for event in write:
            out.setdefault(event["data"]["stream_id"], []).append(comparable(event))
    return out


def test_a_bounded_round_delivers_the_ready_streams_while_a_slow_one_carries_over(
        sample, models, monkeypatch):
    """Streams "slow" and "fast" interleaved on one partition, two face-stage threads.
    Decoding slow's first chunk blocks until the sink has written fast's end: a round that
    waited for it would never get there (the wait gives up after RELEASE_TIMEOUT_S).  With
    round_max_s the rounds deliver fast's events meanwhile, hold slow's next messages back,
    checkpoint nothing of slow and commit nothing past slow's first message; in the end
    every stream's events (ids, order, data) are those of unbounded rounds."""
    slow = _chunks(sample("face_noface.mov"), "slow")
    fast = _chunks(sample("single_face.mp4"), "fast")
    messages = [m for pair in zip(slow, fast) for m in pair]
    messages += slow[len(fast):] + fast[len(slow):]
    messages += [EndOfStream("fast", len(fast) - 1), EndOfStream("slow", len(slow) - 1)]
    settings = dict(topic=TOPIC, fps=FPS, worker_threads=2)
    reference = one_poll_worker(messages, models, round_max_s=0, **settings)

    release, released = threading.Event(), []
    decode = ChunkDecoder.decode

    def slow_decode(decoder: ChunkDecoder, chunk):
        if decoder.stream_id == "slow" and chunk.seq == 0:
            released.append(release.wait(RELEASE_TIMEOUT_S))
        return decode(decoder, chunk)

    monkeypatch.setattr(ChunkDecoder, "decode", slow_decode)
    sink = ReleasingSink(release)
    report, _, dlq, worker, _ = one_poll_worker(messages, models, sink=sink, round_max_s=0.05,
                                                **settings)
    assert released == [True], "the rounds waited for the slow stream"
    early = [e for write in sink.writes[:sink.writes_at_release] for e in write]
    assert {e["data"]["stream_id"] for e in early} == {"fast"}
    assert sum(1 for e in early if e["type"] == events.FACE_ANALYSIS) >= 3
    slow_key = worker._checkpoint_key("slow")
    assert not any(key == slow_key for save in sink.saves[:sink.saves_at_release]
                   for key, _, _ in save)
    # A round's commit follows its checkpoints: every round up to the one that released
    # the slow stream committed nothing past its first message (offset 0).
    assert all(commit == {0: 0} for commit in worker.consumer.commits[:sink.saves_at_release + 1])
    assert worker.metrics.carried_chunks._value.get() > 0
    # In the end: what unbounded rounds deliver, stream by stream.
    ref_report, _, ref_dlq, ref_worker, ref_sink = reference
    assert _per_stream(sink) == _per_stream(ref_sink)
    assert any(e[1] == events.FACE_ANALYSIS for e in _per_stream(sink)["slow"])
    assert report == ref_report and dlq.sent == ref_dlq.sent == []
    assert worker.consumer.commits[-1] == ref_worker.consumer.commits[-1] == {0: len(messages)}
    assert sink.saves[-1] == ref_sink.saves[-1]


@pytest.mark.parametrize("setting, cores, expected", [(0, 1, 1), (0, 2, 2), (0, 16, 2),
                                                      (1, 16, 1), (4, 2, 4)])
def test_worker_threads_default_to_two_at_most(monkeypatch, setting, cores, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert worker_threads(Settings.load({"worker_threads": setting})) == expected
