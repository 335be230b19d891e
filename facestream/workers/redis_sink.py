"""Events to Redis Streams, stream status to hashes (the Redis contract in ARCHITECTURE.md).

Each event is one entry ``{id, type, event}`` (``event`` is the CloudEvents JSON) added with
``XADD ... MAXLEN ~ N`` to ``facestream:events`` and to ``facestream:events:{stream id}``,
both in one pipelined round trip.  :meth:`RedisSink.write` returns only once Redis has
acknowledged every entry; the worker commits Kafka offsets after that, never before.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from facestream.config import Settings
from facestream.errors import FacestreamError


class SinkUnavailable(FacestreamError):
    """Redis did not acknowledge the write, after the client's own retries."""


def make_redis(settings: Settings):
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=5, socket_connect_timeout=5,
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class RedisSink:
    """Blocking; safe to share between threads (redis-py pools its connections)."""

    def __init__(self, settings: Settings, client=None) -> None:
        self._settings = settings
        self._redis = client or make_redis(settings)
        self._key = settings.events_stream
        self._maxlen = settings.events_maxlen

    def write(self, events: Iterable[dict[str, Any]]) -> int:
        """Append events; returns how many.  SinkUnavailable if Redis does not answer."""
        import redis

        events = list(events)
        if not events:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            fields = {"id": event["id"], "type": event["type"],
                      "event": json.dumps(event, separators=(",", ":"), ensure_ascii=False)}
            stream_id = event["data"]["stream_id"]
            pipe.xadd(self._key, fields, maxlen=self._maxlen, approximate=True)
            pipe.xadd(f"{self._key}:{stream_id}", fields, maxlen=self._maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise SinkUnavailable(f"Redis at {self._settings.redis_url}: {exc}") from None
        return len(events)

    def checkpoints(self, saves: dict[str, tuple[bytes, int | None]]) -> None:
        """Store checkpoints (key -> (blob, expiry in seconds or None)) in one transaction;
        SinkUnavailable if Redis fails."""
        import redis

        if not saves:
            return
        pipe = self._redis.pipeline(transaction=True)
        for key, (blob, ttl) in saves.items():
            pipe.set(key, blob, ex=ttl)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise SinkUnavailable(f"Redis at {self._settings.redis_url}: {exc}") from None

    def load_checkpoint(self, key: str) -> bytes | None:
        import redis

        try:
            return self._redis.get(key)
        except redis.RedisError as exc:
            raise SinkUnavailable(f"Redis at {self._settings.redis_url}: {exc}") from None

    def status(self, stream_id: str, **fields: Any) -> None:
        """Update ``facestream:stream:{id}``; best effort (status is advisory)."""
        import redis

        try:
            self._redis.hset(f"facestream:stream:{stream_id}",
                             mapping={k: str(v) for k, v in fields.items()})
        except redis.RedisError:
            pass
