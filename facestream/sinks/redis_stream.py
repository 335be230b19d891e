"""Events to Redis Streams, stream status to hashes, snapshots to plain keys (the Redis keys in
README and docs/EVENTS.md).

Each event is one entry ``{id, type, event}`` (``event`` is the CloudEvents JSON) added with
``XADD ... MAXLEN ~ N`` to ``facestream:events`` and to ``facestream:events:{stream id}``,
both in one pipelined round trip.  With ``events_retention_s`` set, the same round trip
also trims each stream it wrote by age (``XTRIM ... MINID ~ <now - retention>``: an XADD
takes one trimming strategy only, so the age cut is its own command, once per stream and
write).  :meth:`RedisSink.write` returns only once Redis has acknowledged every entry; the
worker commits Kafka offsets after that, never before.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Iterable, Mapping

from facestream.config import Settings
from facestream.errors import FacestreamError, bounded, redact

# redis-py prefixes a pipeline's error with the failed command and its arguments, which can
# be a whole pickled checkpoint: never show those.
_PIPELINE_COMMAND = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.S)


class SinkUnavailable(FacestreamError):
    """Redis did not acknowledge the write, after the client's own retries."""


def _unavailable(settings: Settings, exc: Exception) -> SinkUnavailable:
    reason = _PIPELINE_COMMAND.sub("", str(exc)).splitlines()[0] if str(exc) else ""
    return SinkUnavailable(f"Redis at {redact(settings.redis_url)}: "
                           f"{bounded(reason or type(exc).__name__, 200)}")


def make_redis(settings: Settings, *, timeout_s: float = 5.0, retries: int = 3):
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
        retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class RedisSink:
    """Blocking; safe to share between threads (redis-py pools its connections)."""

    def __init__(self, settings: Settings, client=None) -> None:
        self._settings = settings
        self._redis = client or make_redis(settings)
        self._probe = client or make_redis(settings, timeout_s=1.0, retries=0)
        self._key = settings.events_stream
        self._maxlen = settings.events_maxlen
        self._retention_ms = int(settings.events_retention_s * 1000)
        self._status = settings.stream_status_prefix

    def write(self, events: Iterable[dict[str, Any]],
              status: Mapping[str, Mapping[str, Any]] | None = None, *,
              expire: Mapping[str, int | None] | None = None) -> int:
        """Append events, then update streams' status hashes (stream id -> fields;
        ``{stream_status_prefix}:{id}``), in one round trip; returns how many events.
        ``expire`` (stream id -> seconds, or None) then sets each named hash to expire, or
        keeps it for good (a removed stream's status goes after a while; one added again
        stays).  SinkUnavailable if Redis does not answer (then the caller retries the
        whole call: a repeated entry has the same event id)."""
        import redis

        events = list(events)
        if not events and not status:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        keys = {}
        for event in events:
            fields = {"id": event["id"], "type": event["type"],
                      "event": json.dumps(event, separators=(",", ":"), ensure_ascii=False)}
            stream_id = event["data"]["stream_id"]
            for key in (self._key, f"{self._key}:{stream_id}"):
                pipe.xadd(key, fields, maxlen=self._maxlen, approximate=True)
                keys[key] = None
        if self._retention_ms and keys:
            # Entry ids are the Redis server's milliseconds: this clock's skew from it
            # shifts the cut by as much.
            oldest = f"{max(0, int(time.time() * 1000) - self._retention_ms)}-0"
            for key in keys:
                pipe.xtrim(key, minid=oldest, approximate=True)
        for stream_id, fields in (status or {}).items():
            pipe.hset(self.status_key(stream_id),
                      mapping={k: str(v) for k, v in fields.items()})
        for stream_id, ttl in (expire or {}).items():
            if ttl is None:
                pipe.persist(self.status_key(stream_id))
            else:
                pipe.expire(self.status_key(stream_id), ttl)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(self._settings, exc) from None
        return len(events)

    def status_key(self, stream_id: str) -> str:
        return f"{self._status}:{stream_id}"

    def read_status(self, stream_id: str) -> dict[str, str]:
        """A stream's status hash (empty if there is none); SinkUnavailable if Redis fails."""
        import redis

        try:
            raw = self._redis.hgetall(self.status_key(stream_id))
        except redis.RedisError as exc:
            raise _unavailable(self._settings, exc) from None
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}

    def snapshot(self, stream_id: str, jpeg: bytes, ttl_s: int) -> bool:
        """Store a stream's latest annotated frame at ``{stream_status_prefix}:{id}:snapshot``
        (expiring after ``ttl_s``).  One try, no retries: a snapshot is replaced within a
        second or so, so a failure is only logged by the caller.  True if Redis took it."""
        import redis

        try:
            self._probe.set(f"{self.status_key(stream_id)}:snapshot", jpeg, ex=ttl_s)
            return True
        except redis.RedisError:
            return False

    def ping(self) -> bool:
        """True if Redis answers now (one try, within a second)."""
        import redis

        try:
            return bool(self._probe.ping())
        except redis.RedisError:
            return False

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
            raise _unavailable(self._settings, exc) from None

    def load_checkpoint(self, key: str) -> bytes | None:
        import redis

        try:
            return self._redis.get(key)
        except redis.RedisError as exc:
            raise _unavailable(self._settings, exc) from None
