"""Helpers shared by the tests (fixtures are in conftest.py).

* Running facestream as a user does (:func:`run_cli`) or in process with preloaded models
  (:func:`analyze_in_process`), and reading and checking what it wrote
  (:func:`read_events`, :func:`check_events_file`).
* In-memory stand-ins for the worker's transports: one poll of Kafka records, a Redis sink
  and a dead-letter producer that record what they were given, so a test can compare what
  a worker wrote, checkpointed and committed call by call.  (The integration tests run the
  same worker against the real broker and Redis.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from facestream.config import Settings
from facestream.workers import checkpoint

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list
    timestamp: int | None = None


class OnePollConsumer:
    """Hands out ``batch`` on the first poll, then nothing; records every commit."""

    def __init__(self, batch: dict) -> None:
        self._batch = batch
        self.polls = 0
        self.commits: list[dict] = []

    def subscribe(self, topics, listener=None) -> None:
        pass

    def poll(self, timeout_ms: int = 0, max_records: int = 0) -> dict:
        self.polls += 1
        return self._batch if self.polls == 1 else {}

    def assignment(self) -> set:
        return set(self._batch)

    def partitions_for_topic(self, topic: str) -> set:
        return {tp.partition for tp in self._batch}

    def end_offsets(self, partitions, timeout_ms: int | None = None) -> dict:
        return {tp: self._batch[tp][-1].offset + 1 for tp in partitions}

    def position(self, tp) -> int:
        return self._batch[tp][-1].offset + 1

    def commit(self, positions: dict) -> None:
        self.commits.append({tp.partition: o.offset for tp, o in positions.items()})

    def close(self, autocommit: bool = False) -> None:
        pass


class MemorySink:
    def __init__(self) -> None:
        self.writes: list[list[dict]] = []
        self.status: list[dict] = []            # per write: stream id -> fields
        self.saves: list[list[tuple[str, int, int | None]]] = []
        self.calls: list[tuple[str, int]] = []  # ("write" | "checkpoints", index), in order

    def write(self, batch: list[dict], status: dict | None = None) -> int:
        self.calls.append(("write", len(self.writes)))
        self.writes.append(list(batch))
        self.status.append(dict(status or {}))
        return len(batch)

    def ping(self) -> bool:
        return True

    def checkpoints(self, saves: dict) -> None:
        self.calls.append(("checkpoints", len(self.saves)))
        self.saves.append([(key, checkpoint.loads(blob).offset, ttl)
                           for key, (blob, ttl) in saves.items()])

    def load_checkpoint(self, key: str) -> None:
        return None

class MemoryProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, str]] = []       # (key, fs-error)
        self.letters: list[tuple[bytes | None, bytes, dict]] = []

    def send(self, topic: str, *, key, value, headers) -> "MemoryProducer":
        self.sent.append((key, dict(headers)["fs-error"].decode()))
        self.letters.append((key, value, dict(headers)))
        return self

    def get(self, timeout: float | None = None) -> None:
        """The send's acknowledgement: at once."""

    def close(self, timeout: float | None = None) -> None:
        pass


def comparable(event: dict) -> tuple[str, str, str]:
    """An event as two runs of the same input must agree on it: id, type and data, without
    the fields that measure this run's timing (``latency_ms``, ``capture_latency_ms``)."""
    data = {k: v for k, v in event["data"].items()
            if k not in ("latency_ms", "capture_latency_ms")}
    return event["id"], event["type"], json.dumps(data, sort_keys=True)


def one_poll_worker(messages, models, *, sink=None, topic: str = "unit.video",
                    partition_per_stream: bool = False, **settings):
    """One poll of ``messages`` (chunks, end or clock markers, or raw ``(key, value, headers)``) on
    one partition (``partition_per_stream``: each key on a partition of its own, so every
    round takes a message of each stream) through a :class:`~facestream.workers.worker.Worker`
    with in-memory transports and ``settings`` (describe off, one thread by default); returns
    (report, events written, dead-letter producer, worker, sink)."""
    from kafka import TopicPartition

    from facestream.config import Settings
    from facestream.ingest.chunks import EndOfStream, MediaClock
    from facestream.workers.worker import Worker

    records: dict[int, list[Record]] = {} if partition_per_stream else {0: []}
    partitions: dict[bytes | None, int] = {}
    for message in messages:
        if isinstance(message, tuple):
            key, value, headers = message
        elif isinstance(message, (EndOfStream, MediaClock)):
            key, value, headers = message.stream_id.encode(), b"", message.headers()
        else:
            key, value, headers = message.stream_id.encode(), message.payload, message.headers()
        partition = partitions.setdefault(key, len(partitions)) if partition_per_stream else 0
        queue = records.setdefault(partition, [])
        queue.append(Record(topic, partition, len(queue), key, value, headers))
    consumer = OnePollConsumer({TopicPartition(topic, p): queue for p, queue in records.items()})
    sink, dlq = sink or MemorySink(), MemoryProducer()
    worker = Worker(Settings.load({"describe": False, "metrics_port": 0, "video_topic": topic,
                                   "worker_threads": 1, **settings}),
                    models=models, consumer=consumer, sink=sink, dlq_producer=dlq)
    report = worker.run(until=lambda w: consumer.polls >= 2)
    return report, [e for write in sink.writes for e in write], dlq, worker, sink


def run_cli(*args: str, timeout: float = 600, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the `facestream` command as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "facestream", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)


def check_events_file(path: Path) -> None:
    """``path`` holds at least one event and every event in it holds against the package's
    JSON Schema (``facestream.events.validator``) and the cross-field rules below; the
    failure lists every bad event by line.

    An empty file fails: every run this checks writes events (at least a track or an error),
    so no events means a broken run, which must not pass as "no event was invalid"."""
    from facestream import events

    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip()]
    assert lines, f"{path}: no events; a run that analysed anything writes some"
    validator = events.validator()
    problems = []                       # (line number, event type, schema errors)
    seen: set = set()                   # ids, and the windows whose descriptions follow
    for number, line in lines:
        event = json.loads(line)
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}"
                  for e in validator.iter_errors(event)]
        if not errors:
            errors = _cross_field_problems(event, seen)
        if errors:
            kind = event.get("type") if isinstance(event, dict) else None
            problems.append((number, kind, errors))
    assert not problems, f"{path}: {len(problems)} of {len(lines)} events break the contract: " \
                         f"{problems[:5]}"


def _cross_field_problems(event: dict, seen: set[str]) -> list[str]:
    """What the JSON Schema cannot say: fields that must agree with each other, and ids
    unique within one run."""
    data, problems = event["data"], []
    if event["id"] in seen:
        problems.append(f"id {event['id']} twice in one run")
    seen.add(event["id"])
    if event["source"] != f"facestream://{data['stream_id']}":
        problems.append("source is not facestream://<data.stream_id>")
    if "track_id" in data and event.get("subject") != data["track_id"]:
        problems.append("subject is not data.track_id")
    if event["type"] == "facestream.face.analysis":
        window, (x1, y1, x2, y2) = data["window"], data["bbox"]
        if window["end_s"] < window["start_s"]:
            problems.append("window ends before it starts")
        if not (x2 > x1 and y2 > y1):
            problems.append("bbox is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
        if data.get("description_follows"):
            if data["description"] is not None or data["description_reused"]:
                problems.append("description_follows with a description already here")
            seen.add(("follows", data["stream_id"], data["track_id"], window["start_pts"]))
    if event["type"] == "facestream.face.description":
        window = data["window"]
        if ("follows", data["stream_id"], data["track_id"], window["start_pts"]) not in seen:
            problems.append("a description before (or without) its window's analysis event "
                            "with description_follows")
    return problems


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyze_in_process(path: Path, models, tmp_path: Path, *, stream_id: str | None = None,
                       **overrides):
    """``facestream.workers.embedded.analyze`` with shared preloaded models."""
    from facestream.ingest.sources import parse_source
    from facestream.workers.embedded import analyze

    settings = Settings.load({"describe": models.analyzer.language is not None, **overrides})
    spec = parse_source(str(path))
    summary = analyze(spec, settings, out_dir=tmp_path, models=models, stream_id=stream_id)
    return summary, read_events(summary.events_path)
