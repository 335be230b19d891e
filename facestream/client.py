"""For downstream services: typed events, and a Redis consumer-group subscriber that loses none.

:class:`Event` is one event as docs/EVENTS.md defines it, checked against the JSON Schema the
package ships (:func:`facestream.events.validator`: the one source of truth, no second model
of the fields).  :class:`EventSubscriber` reads ``facestream:events`` (or one stream's
``facestream:events:{stream id}``) with a Redis consumer group:

* a consumer name unique to the process by default (``host-pid-random``), so two processes
  never share one pending-entries list by accident;
* an entry is acknowledged (``XACK``) only after the handler returned: a process that dies
  mid-handler leaves it pending, and another consumer of the group claims it (``XAUTOCLAIM``)
  once it has been idle ``subscriber_claim_idle_s``;
* an entry delivered ``subscriber_max_deliveries`` times without being handled (the handler
  keeps raising, or keeps killing its process) goes to a dead-letter stream with the reason,
  and is acknowledged, so one poison event never blocks the group;
* :class:`Deduplicator` drops an event id handled before (a redelivery, or the same event
  written twice by a worker that replayed a Kafka message).

Delivery is at least once.  This module imports only the standard library, ``redis``,
``jsonschema`` (through ``events``) and facestream's ground floor: no torch, MediaPipe,
PyAV, OpenCV, ONNX Runtime or llama.cpp, so a service can install facestream and use it
without loading any model.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Protocol

from facestream import events
from facestream.config import Settings
from facestream.errors import FacestreamError, bounded, redact
from facestream.events import (FACE_ANALYSIS, FACE_DESCRIPTION, STREAM_ERROR, STREAM_STATUS,
                               TRACK_ENDED, TRACK_STARTED)

__all__ = ["Event", "EventError", "EventSubscriber", "Deduplicator", "Seen",
           "SubscriberError", "SubscriberStats", "FACE_ANALYSIS", "FACE_DESCRIPTION",
           "TRACK_STARTED", "TRACK_ENDED", "STREAM_ERROR", "STREAM_STATUS"]

log = logging.getLogger(__name__)


class EventError(FacestreamError):
    """Text that is not a valid facestream event (not JSON, or not as the schema says)."""


class SubscriberError(FacestreamError):
    """Redis did not answer, or refused a command, after the client's own retries."""


# --- events -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Event:
    """One event, valid against the shipped schema.  ``data`` is the event's ``data`` object as
    docs/EVENTS.md lists its fields; ``raw`` is the whole CloudEvents object."""

    id: str
    type: str
    source: str
    time: datetime
    subject: str | None
    data: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Event":
        """Parse and validate one event; EventError (one line) if it is not JSON or breaks
        the schema."""
        try:
            obj = json.loads(text)
        except ValueError as exc:                       # UnicodeDecodeError included
            raise EventError(f"not an event: not JSON ({bounded(str(exc), 120)})") from None
        except RecursionError:
            raise EventError("not an event: JSON nested too deeply") from None
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: Any) -> "Event":
        """Validate an already parsed event (EventError if it breaks the schema)."""
        import jsonschema.exceptions

        try:
            error = jsonschema.exceptions.best_match(events.validator().iter_errors(obj))
        except RecursionError:
            raise EventError("invalid event: nested too deeply") from None
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(the event)"
            ident = obj.get("id") if isinstance(obj, dict) else None
            text = f"invalid event {ident or '(no id)'}: {where}: {error.message}"
            raise EventError(bounded(" ".join(text.splitlines()), 300))
        try:
            when = datetime.fromisoformat(obj["time"])
        except ValueError as exc:          # the schema's pattern lets 2024-13-40 through
            raise EventError(f"invalid event {obj['id']}: time: {exc}") from None
        return cls(id=obj["id"], type=obj["type"], source=obj["source"], time=when,
                   subject=obj.get("subject"), data=obj["data"], raw=obj)

    @property
    def stream_id(self) -> str:
        return self.data["stream_id"]

    @property
    def track_id(self) -> str | None:
        """The track, or None for ``facestream.stream.error``."""
        return self.data.get("track_id")

    @property
    def window_key(self) -> tuple[str, str, int | float | None] | None:
        """``(stream_id, track_id, window.start_pts)``: the same for a window's analysis event
        and its description event, so a service joins the two on it; None for other types."""
        window = self.data.get("window")
        return None if window is None else (self.stream_id, self.data["track_id"],
                                            window["start_pts"])

    def to_json(self) -> str:
        """The event as compact JSON (as the Redis sink writes it)."""
        return json.dumps(dict(self.raw), separators=(",", ":"), ensure_ascii=False)


# --- duplicates -------------------------------------------------------------------------------

class Seen(Protocol):
    """What :class:`EventSubscriber` needs of a dedupe store."""

    def __contains__(self, event_id: object) -> bool: ...

    def add(self, event_id: str) -> None: ...


class Deduplicator:
    """The ids of the last ``capacity`` events handled, in this process.  Event ids are
    deterministic, so a redelivered entry, or the same event written again by a worker that
    replayed a Kafka message, has an id seen before.  For dedupe across processes keep the
    ids in a shared store instead (e.g. ``SET facestream:seen:{id} 1 NX EX 86400``): any
    object with ``in`` and ``add`` will do."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"Deduplicator capacity {capacity}: expected >= 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        """Remember ``event_id``, forgetting the oldest one beyond the capacity."""
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


# --- the subscriber ---------------------------------------------------------------------------

@dataclass
class SubscriberStats:
    """What a subscriber did since it was made (entries, not distinct events)."""

    handled: int = 0          # handler returned, entry acknowledged
    duplicates: int = 0       # an id seen before: acknowledged without calling the handler
    failures: int = 0         # handler raised (the entry stays pending, or is dead-lettered)
    claimed: int = 0          # taken over from a consumer that held them too long
    dead_letters: int = 0     # moved to the dead-letter stream and acknowledged


def default_consumer() -> str:
    """``host-pid-random``: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class EventSubscriber:
    """Hand every event of ``facestream:events`` (``stream=None``) or of one stream to
    ``handler``, as consumer ``consumer`` of the Redis consumer group ``group``.

    ``start`` is where a *new* group begins: ``"0"`` (the default) with every entry still in
    the stream, ``"$"`` with entries added from now on; an existing group keeps its place.
    ``dedupe`` (a :class:`Deduplicator` or any store with ``in`` / ``add``) drops events
    handled before.  ``dead_letters`` is the dead-letter stream, by default
    ``{events_stream}:dead:{group}`` (a stream id cannot contain ':', so it never collides
    with a stream's own key).  Nothing talks to Redis until :meth:`run`.

    Settings used: ``redis_url``, ``events_stream``, ``events_maxlen`` (cap of the
    dead-letter stream), ``subscriber_claim_idle_s``, ``subscriber_max_deliveries``.
    """

    def __init__(self, settings: Settings, *, group: str, handler: Callable[[Event], Any],
                 consumer: str | None = None, stream: str | None = None, start: str = "0",
                 dedupe: Seen | None = None, dead_letters: str | None = None,
                 batch: int = 10, block_ms: int = 1000, client=None) -> None:
        if not group:
            raise ValueError("EventSubscriber needs a group name")
        if stream is not None and (not stream or ":" in stream):
            raise ValueError(f"stream {stream!r}: expected a stream id (no ':')")
        self.settings = settings
        self.group = group
        self.consumer = consumer or default_consumer()
        self.key = f"{settings.events_stream}:{stream}" if stream else settings.events_stream
        self.dead_letters = dead_letters or f"{settings.events_stream}:dead:{group}"
        self.stats = SubscriberStats()
        self._handler = handler
        self._start = start
        self._dedupe = dedupe
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = max(1, int(settings.subscriber_claim_idle_s * 1000))
        self._max_deliveries = settings.subscriber_max_deliveries
        self._client = client
        self._stopping = threading.Event()
        self._claim_cursor = "0-0"

    # -- lifecycle

    def stop(self) -> None:
        """Stop after the entry being handled (at the latest ``block_ms`` later when idle).
        Safe from another thread and from a signal handler."""
        self._stopping.set()

    def __enter__(self) -> "EventSubscriber":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def run(self, *, count: int | None = None,
            signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> SubscriberStats:
        """Handle events until :meth:`stop`, one of ``signals`` (a second one acts as it
        did before), or ``count`` events handled.  Blocking.  First the entries this
        consumer name still holds (a restart under a fixed ``consumer``), then entries other
        consumers held too long, then new ones.  SubscriberError (one line, naming the
        Redis URL) if Redis fails.  An ``Exception`` the handler raises is its entry's
        failure (retried, then dead-lettered) and never leaves here; anything else
        (``KeyboardInterrupt``, ``SystemExit``) goes through, its entry left pending."""
        import redis

        restore = self._install(signals)
        try:
            self._ensure_group()
            self._deliver_own_pending(count)
            while not self._done(count):
                try:
                    self._deliver_all(self._claim(), count)
                    if not self._done(count):
                        self._deliver_all(self._read_new(count), count)
                except redis.ResponseError as exc:
                    # The stream was deleted, and its groups with it (a blocked read says
                    # UNBLOCKED ... no longer exists, the next command NOGROUP).
                    if "NOGROUP" not in str(exc) and "no longer exists" not in str(exc):
                        raise
                    self._ensure_group()
            self._leave()
        except redis.RedisError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SubscriberError(f"Redis at {redact(self.settings.redis_url)}: "
                                  f"{bounded(reason, 200)}") from None
        finally:
            restore()
        return self.stats

    def _install(self, signals: Iterable[int]) -> Callable[[], None]:
        """Make each signal stop the subscriber once; returns what puts the previous
        handlers back.  Only the main thread may set handlers (Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous: dict[int, Any] = {}

        def on_signal(signum, frame):
            signal.signal(signum, previous[signum])      # a second one acts as before
            self.stop()

        for signum in signals:
            previous[signum] = signal.signal(signum, on_signal) or signal.SIG_DFL

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return restore

    def _done(self, count: int | None) -> bool:
        return self._stopping.is_set() or (count is not None and self.stats.handled >= count)

    # -- Redis

    @property
    def redis(self):
        """The redis-py client (made on first use)."""
        if self._client is None:
            import redis
            from redis.backoff import ExponentialWithJitterBackoff
            from redis.retry import Retry

            timeout = self._block_ms / 1000 + 5      # a blocked read must not time out
            self._client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=timeout, socket_connect_timeout=5,
                retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), retries=3),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        return self._client

    def _ensure_group(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.key, self.group, id=self._start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _deliver_own_pending(self, count: int | None) -> None:
        """Entries delivered to this consumer name before and never acknowledged (a
        restart under a fixed ``consumer``), oldest first."""
        after = "0"
        while not self._done(count):
            reply = self.redis.xreadgroup(self.group, self.consumer, {self.key: after},
                                          count=self._batch)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self._deliver_all(self._with_deliveries(entries), count)
            after = entries[-1][0]

    def _claim(self) -> list[tuple[bytes, dict | None, int]]:
        """Take over entries pending longer than the claim idle time, whoever holds them
        (this consumer's own failed entries included: their retry).  One step of a cursor
        over the group's pending entries per call."""
        nxt, entries, *_ = self.redis.xautoclaim(self.key, self.group, self.consumer,
                                                 self._claim_idle_ms, self._claim_cursor,
                                                 count=self._batch)
        self._claim_cursor = nxt.decode() if isinstance(nxt, bytes) else nxt
        self.stats.claimed += len(entries)
        return self._with_deliveries(entries)

    def _read_new(self, count: int | None) -> list[tuple[bytes, dict | None, int]]:
        want = self._batch if count is None else max(1, min(self._batch,
                                                            count - self.stats.handled))
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=want,
                                      block=self._block_ms)
        return [(entry_id, fields, 1) for entry_id, fields in (reply[0][1] if reply else [])]

    def _with_deliveries(self, entries) -> list[tuple[bytes, dict | None, int]]:
        """``(id, fields, times delivered)``; the count comes from ``XPENDING`` (it counts
        deliveries to every consumer, the processes that died included)."""
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(self.key, self.group, entry_id, entry_id, 1,
                                consumername=self.consumer)
        counts = [rows[0]["times_delivered"] if rows else 1 for rows in pipe.execute()]
        return [(entry_id, fields, n) for (entry_id, fields), n in zip(entries, counts)]

    def _leave(self) -> None:
        """On a clean stop, delete this consumer from the group if it holds nothing (a
        consumer that still holds entries stays, so that they can be claimed)."""
        import redis

        try:
            consumers = self.redis.xinfo_consumers(self.key, self.group)
        except redis.ResponseError:            # the stream or the group is gone: so are we
            return
        for info in consumers:
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == self.consumer and info["pending"] == 0:
                self.redis.xgroup_delconsumer(self.key, self.group, self.consumer)

    # -- one entry

    def _deliver_all(self, entries, count: int | None) -> None:
        for entry_id, fields, deliveries in entries:
            if self._done(count):
                return      # the rest stay pending: claimed later, by us or another consumer
            self._deliver(entry_id, fields, deliveries)

    def _deliver(self, entry_id: bytes, fields: dict | None, deliveries: int) -> None:
        if not fields:                 # trimmed away while pending: nothing to hand over
            self.redis.xack(self.key, self.group, entry_id)
            return
        try:
            event = Event.from_json(fields.get(b"event", b""))
        except EventError as exc:
            self._dead_letter(entry_id, fields, str(exc), deliveries)
            return
        if self._dedupe is not None and event.id in self._dedupe:
            self.redis.xack(self.key, self.group, entry_id)
            self.stats.duplicates += 1
            return
        if deliveries > self._max_deliveries:
            self._dead_letter(entry_id, fields, f"delivered {deliveries} times and never "
                              "acknowledged (its handlers failed or their processes died)",
                              deliveries)
            return
        try:
            self._handler(event)
        except Exception as exc:       # the handler's failure is the entry's, not ours
            self.stats.failures += 1
            reason = bounded(f"{type(exc).__name__}: {exc}".splitlines()[0], 300)
            if deliveries >= self._max_deliveries:
                self._dead_letter(entry_id, fields, reason, deliveries)
            else:
                log.warning("event %s (entry %s of %s), delivery %d of %d: %s; retried after "
                            "%.1f s", event.id, entry_id.decode(), self.key, deliveries,
                            self._max_deliveries, reason, self._claim_idle_ms / 1000)
            return
        if self._dedupe is not None:
            self._dedupe.add(event.id)
        self.redis.xack(self.key, self.group, entry_id)
        self.stats.handled += 1

    def _dead_letter(self, entry_id: bytes, fields: dict, reason: str, deliveries: int) -> None:
        """Add the entry to the dead-letter stream with why, and acknowledge it, atomically."""
        record = {**fields, b"entry": entry_id, b"stream": self.key, b"group": self.group,
                  b"consumer": self.consumer, b"error": reason,
                  b"deliveries": str(deliveries)}
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.dead_letters, record, maxlen=self.settings.events_maxlen,
                  approximate=True)
        pipe.xack(self.key, self.group, entry_id)
        pipe.execute()
        self.stats.dead_letters += 1
        log.warning("entry %s of %s dead-lettered to %s after %d deliveries: %s",
                    entry_id.decode(), self.key, self.dead_letters, deliveries, reason)
