"""Helpers shared by the unit tests.

In-memory stand-ins for the worker's transports: one poll of Kafka records, a Redis sink and
a dead-letter producer that record what they were given, so a test can compare what a worker
wrote, checkpointed and committed call by call.  (The integration tests run the same worker
against the real broker and Redis.)
"""

from __future__ import annotations

from dataclasses import dataclass

from facestream.workers import checkpoint


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

    def write(self, batch: list[dict], status: dict | None = None) -> int:
        self.writes.append(list(batch))
        self.status.append(dict(status or {}))
        return len(batch)

    def ping(self) -> bool:
        return True

    def checkpoints(self, saves: dict) -> None:
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
