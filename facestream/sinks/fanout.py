"""The worker's sink: Redis, then the optional sinks the settings turn on (an events topic,
webhooks), all written in the one delivery step the worker checkpoints and commits after.

:meth:`FanoutSink.write` returns only once every sink has acknowledged the round (webhooks:
accepted or dead-lettered); a sink that fails raises, and the worker retries the same call
with backoff.  Sinks that already acknowledged that same round are not written again on the
retry (so an outage of the events topic does not pile copies of the round into Redis); a
worker that dies mid-round does write it again to every sink, with the same event ids.
Checkpoints, stream status and the ``/readyz`` probe stay Redis's alone.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from facestream.config import Settings
from facestream.sinks.redis_stream import RedisSink


class FanoutSink:
    """``primary`` (the :class:`RedisSink`: events, status, checkpoints) then ``others``
    (objects with ``write(events, status) -> int``, optionally ``close()``).  Blocking; one
    caller at a time."""

    def __init__(self, primary, others: Sequence[Any] = ()) -> None:
        self.primary = primary
        self.others = list(others)
        self._round: tuple | None = None         # the round being retried
        self._done: set[int] = set()             # indexes of the sinks that acknowledged it

    def write(self, events: Iterable[dict[str, Any]],
              status: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Write to every sink in turn; returns how many events.  Raises what a sink raised
        (SinkUnavailable), after the sinks before it acknowledged."""
        events = list(events)
        key = (tuple(e["id"] for e in events), repr(sorted((status or {}).items())))
        if key != self._round:
            self._round, self._done = key, set()
        for index, sink in enumerate([self.primary, *self.others]):
            if index not in self._done:
                sink.write(events, status if index == 0 else None)
                self._done.add(index)
        self._round, self._done = None, set()
        return len(events)

    def ping(self) -> bool:
        return self.primary.ping()

    def snapshot(self, stream_id: str, jpeg: bytes, ttl_s: int) -> bool:
        snapshot = getattr(self.primary, "snapshot", None)
        return bool(snapshot and snapshot(stream_id, jpeg, ttl_s))

    def checkpoints(self, saves) -> None:
        self.primary.checkpoints(saves)

    def load_checkpoint(self, key: str):
        return self.primary.load_checkpoint(key)

    def close(self) -> None:
        for sink in [self.primary, *self.others]:
            close = getattr(sink, "close", None)
            if close is not None:
                close()


def build_sink(settings: Settings, *, primary=None):
    """The worker's sink: ``primary`` (a :class:`RedisSink` of ``settings`` when None), with
    the events topic and webhooks when their settings are set; the primary alone when
    neither is (nothing changes for a worker that does not use them)."""
    primary = primary or RedisSink(settings)
    others: list[Any] = []
    if settings.events_topic:
        from facestream.sinks.kafka_topic import KafkaEventSink

        others.append(KafkaEventSink(settings))
    if settings.webhook_url_list:
        from facestream.sinks.webhook import WebhookSink

        others.append(WebhookSink(settings))
    return FanoutSink(primary, others) if others else primary
