"""``facestream ingest --from-registry``: the camera supervisor.

One publisher thread per stream in the registry (:mod:`facestream.ingest.registry`), kept
in step with the compacted registry topic: a new stream starts, a changed spec restarts its
publisher with the new spec, a tombstone stops it (state ``removed``).  On start the topic is
read to its end and folded before anything starts, so a stream added then removed long ago
does not flicker up.

Each publisher:

* opens its camera, retrying a first open that fails as it would a drop, and reconnects with
  capped exponential backoff and jitter (``reconnect_backoff_s`` doubling up to
  ``supervisor_backoff_max_s``) for as long as the stream is registered, or
  ``supervisor_reconnect_attempts`` times when the operator sets a limit (then ``failed``);
* sends its chunks, stamped with the stream's registered ``fps`` and ``profile``
  (``fs-fps``, ``fs-profile``), to the topic of that profile
  (:func:`facestream.ingest.supervision.chunk_topic`);
* is restarted with the same backoff when its thread dies of an exception (state ``failed``
  with the reason, then ``connecting``).

A camera's failure stays in its own thread: the others go on.  Each stream's state and
counters go to the Redis hash ``{stream_status_prefix}:{id}`` and every state change to a
``facestream.stream.status`` event in the events streams (docs/EVENTS.md, "Stream status"),
from a writer thread of their own, so a Redis outage never holds a publisher up (changes
wait in memory, up to 10,000, and are written when Redis is back).  ``/metrics``, ``/healthz``
and ``/readyz`` are served on ``supervisor_metrics_port``.  :meth:`Supervisor.stop` (SIGTERM)
stops every publisher (each ends its stream for the workers), writes the last states and
returns.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client import generate_latest

from facestream import events
from facestream.config import Settings
from facestream.errors import FacestreamError, InputError, SourceDropped, bounded
from facestream.ingest.chunks import count_packets
from facestream.ingest.registry import Registry, SpecError, StreamSpec, validate
from facestream.ingest.sources import SourceSpec
from facestream.ingest.supervision import STATES, StreamStatus, Transition, chunk_topic
from facestream.retry import Backoff
from facestream.sinks.redis_stream import RedisSink, SinkUnavailable

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 10_000


class SupervisorMetrics:
    """The supervisor's Prometheus metrics; every method is cheap and thread-safe."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter("facestream_ingest_frames", "Frames (video packets) published",
                              ["stream"], registry=r)
        self.bytes = Counter("facestream_ingest_bytes", "Bytes of video published",
                             ["stream"], registry=r)
        self.chunks = Counter("facestream_ingest_chunks", "Chunks published", ["stream"],
                              registry=r)
        self.reconnects = Counter("facestream_ingest_reconnects",
                                  "Reconnects tried (a failed first open included)",
                                  ["stream"], registry=r)
        self.restarts = Counter("facestream_ingest_publisher_restarts",
                                "Publishers restarted after their thread died", ["stream"],
                                registry=r)
        self.state = Gauge("facestream_ingest_stream_state",
                           "1 for the stream's current state, 0 for the others",
                           ["stream", "state"], registry=r)
        self.publishers = Gauge("facestream_ingest_publishers", "Publisher threads running",
                                registry=r)
        self.streams = Gauge("facestream_ingest_streams", "Streams registered and valid",
                             registry=r)
        self.ready = False             # the registry has been read to its end
        self.redis_ok = True           # the last status write went through

    @property
    def readiness(self) -> bool:
        return self.ready and self.redis_ok

    def set_state(self, stream_id: str, state: str) -> None:
        for s in STATES:
            self.state.labels(stream_id, s).set(1 if s == state else 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(eq=False)
class _Publisher:
    """A registered stream and the thread publishing it."""

    spec: StreamSpec
    source: SourceSpec
    status: StreamStatus
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    outcome: str = "running"           # running | ended | failed (final) | crashed
    crashes: int = 0                   # deaths in a row, with no chunk since
    restart_at: float | None = None    # monotonic time of the next restart


class Supervisor:
    """Blocking :meth:`run`; :meth:`stop` from a signal handler or another thread.

    ``sink`` is where status goes (a :class:`RedisSink` of ``settings`` when None);
    ``clock`` the wall clock of the status, ``monotonic`` the restarts' and rates' clock.
    """

    def __init__(self, settings: Settings, *, log: Callable[[str], None] = print, sink=None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._log = log
        self._sink = sink
        self._clock = clock
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._publishers: dict[str, _Publisher] = {}
        self._dlq = None
        self._chunks = None                                # the shared ChunkPublisher
        self.metrics = SupervisorMetrics()
        self.metrics_port: int | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # status writer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_PENDING_EVENTS)
        self._finals: dict[str, dict[str, str]] = {}       # removed streams' last fields
        self._expire: dict[str, int | None] = {}
        self._live: dict[str, StreamStatus] = {}           # statuses refreshed periodically
        self._writer: threading.Thread | None = None
        self._writer_stop = threading.Event()

    # -- the public surface -----------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    @property
    def streams(self) -> list[str]:
        """Streams whose publisher thread is running."""
        return sorted(s for s, p in self._publishers.items()
                      if p.thread is not None and p.thread.is_alive())

    def status(self, stream_id: str) -> StreamStatus | None:
        publisher = self._publishers.get(stream_id)
        return publisher.status if publisher else None

    def run(self, *, registry: Registry | None = None) -> None:
        """Follow the registry until :meth:`stop`.  Raises BrokerUnreachable when Kafka does
        not answer at start."""
        from facestream.ingest.publisher import ChunkPublisher
        from facestream.workers.metrics import serve

        server = None
        if self.settings.supervisor_metrics_port >= 0:
            server = serve(self.metrics, self.settings.supervisor_metrics_port)
            self.metrics_port = server.server_address[1]
            self._log(f"supervisor: /metrics on port {self.metrics_port}")
        if self._sink is None:
            self._sink = RedisSink(self.settings)
        self._writer = threading.Thread(target=self._write_loop, name="supervisor-status",
                                        daemon=True)
        self._writer.start()
        self._chunks = ChunkPublisher(self.settings)
        folded: dict[str, tuple[bytes | None, Any]] | None = {}   # until caught up
        try:
            for stream_id, value, record in (registry or Registry(self.settings)).follow():
                if self._stop.is_set():
                    break
                if record is not None:
                    if folded is not None:
                        folded.pop(stream_id, None)        # keep the log order of the latest
                        folded[stream_id] = (value, record)
                    else:
                        self._apply(stream_id, value, record)
                elif folded is not None:                   # caught up with the topic
                    for sid, (v, r) in folded.items():
                        self._apply(sid, v, r, replay=True)
                    folded = None
                    self.metrics.ready = True
                    self._log(f"supervisor: {len(self._publishers)} streams registered")
                if folded is None:
                    self._supervise()
        finally:
            self._shutdown()
            if server is not None:
                server.shutdown()
                server.server_close()

    # -- the registry -----------------------------------------------------------------------

    def _apply(self, stream_id: str, value: bytes | None, record, *, replay: bool = False) -> None:
        if value is None:
            if stream_id in self._publishers:
                self._remove(stream_id)
            elif replay:
                self._forget(stream_id)
            return
        try:
            spec = StreamSpec.from_json(stream_id, value)
            source = validate(spec, self.settings)
        except SpecError as exc:
            self._reject(record, str(exc))
            return
        current = self._publishers.get(stream_id)
        if current is not None and current.spec == spec:
            return
        if current is not None:
            self._halt(current, "spec changed")
        self._start(spec, source)

    def _start(self, spec: StreamSpec, source: SourceSpec) -> None:
        status = StreamStatus(spec.stream_id, url=spec.source, fps=spec.fps, profile=spec.profile,
                              publisher=self.name, clock=self._clock, monotonic=self._monotonic)
        publisher = _Publisher(spec, source, status)
        self._publishers[spec.stream_id] = publisher
        with self._lock:
            self._live[spec.stream_id] = status
            self._finals.pop(spec.stream_id, None)
            self._expire[spec.stream_id] = None            # keep the hash (added again)
        self.metrics.streams.set(len(self._publishers))
        self._launch(publisher, "")
        self._log(f"{spec.stream_id}: publishing {status.url} at {spec.fps:g} fps "
                  f"({spec.profile}) to {chunk_topic(self.settings.video_topic, spec.profile)}")

    def _launch(self, publisher: _Publisher, reason: str) -> None:
        publisher.stop = threading.Event()
        publisher.outcome = "running"
        publisher.restart_at = None
        self._announce(publisher.status.connecting(reason))
        publisher.thread = threading.Thread(target=self._publish, args=(publisher,),
                                            name=f"ingest-{publisher.spec.stream_id}",
                                            daemon=True)
        publisher.thread.start()

    def _halt(self, publisher: _Publisher, why: str) -> None:
        publisher.stop.set()
        if publisher.thread is not None:
            publisher.thread.join(timeout=self.settings.open_timeout_s + 5)
            if publisher.thread.is_alive():
                self._log(f"{publisher.spec.stream_id}: publisher did not stop within "
                          f"{self.settings.open_timeout_s + 5:g} s; left to finish")
        self._log(f"{publisher.spec.stream_id}: stopped ({why})")

    def _remove(self, stream_id: str) -> None:
        publisher = self._publishers.pop(stream_id)
        self._halt(publisher, "removed from the registry")
        transition = publisher.status.removed()
        with self._lock:
            self._live.pop(stream_id, None)
            self._finals[stream_id] = publisher.status.fields()
            self._expire[stream_id] = self.settings.stream_removed_ttl_s
        self.metrics.streams.set(len(self._publishers))
        self._announce(transition, publisher.status)

    def _forget(self, stream_id: str) -> None:
        """A stream removed while no supervisor ran: its status hash says ``removed`` and
        expires (when there is one)."""
        read = getattr(self._sink, "read_status", None)
        try:
            fields = read(stream_id) if read else {}
        except SinkUnavailable:
            return
        if fields and fields.get("state") != "removed":
            with self._lock:
                self._finals[stream_id] = {"state": "removed",
                                           "updated_at": f"{self._clock():.3f}"}
                self._expire[stream_id] = self.settings.stream_removed_ttl_s
            self._wake.set()

    def _reject(self, record, reason: str) -> None:
        from kafka import KafkaProducer

        if self._dlq is None:
            self._dlq = KafkaProducer(**self.settings.kafka_client_options(), acks="all")
        headers = list(record.headers or []) + [("fs-error", reason.encode())]
        self._dlq.send(self.settings.dlq_topic, key=record.key, value=record.value,
                       headers=headers)
        self._dlq.flush(timeout=30)
        self._log(f"rejected registry entry: {reason}")

    # -- publishers ---------------------------------------------------------------------------

    def _backoff(self) -> Backoff:
        attempts = self.settings.supervisor_reconnect_attempts or None
        return Backoff(attempts, self.settings.reconnect_backoff_s,
                       self.settings.supervisor_backoff_max_s)

    def _publish(self, publisher: _Publisher) -> None:
        """A publisher thread: the stream until it ends, its reconnects give up, its thread
        fails, or it is stopped."""
        from facestream.ingest.publisher import ingest

        spec, status = publisher.spec, publisher.status
        sid = spec.stream_id

        def on_retry(attempt: int, reason: str, delay_s: float) -> None:
            self.metrics.reconnects.labels(sid).inc()
            self._announce(status.retrying(attempt, bounded(reason, 300)))
            self._log(f"{sid}: reconnecting in {delay_s:.1f} s (attempt {attempt}): "
                      f"{bounded(reason, 200)}")

        def on_chunk(chunk) -> None:
            frames = count_packets(chunk.payload)
            self.metrics.frames.labels(sid).inc(frames)
            self.metrics.bytes.labels(sid).inc(len(chunk.payload))
            self.metrics.chunks.labels(sid).inc()
            publisher.crashes = 0
            transition = status.chunk(frames, len(chunk.payload))
            if transition is not None:
                self._announce(transition)
                self._log(f"{sid}: live")

        try:
            report = ingest(publisher.source, self.settings, stream_id=sid, realtime=True,
                            publisher=self._chunks, stop=publisher.stop,
                            topic=chunk_topic(self.settings.video_topic, spec.profile),
                            fps=spec.fps, profile=spec.profile, backoff=self._backoff(),
                            retry_open=True, on_retry=on_retry, on_chunk=on_chunk)
            if publisher.stop.is_set():
                return
            publisher.outcome = "ended"
            self._announce(status.ended(f"the source ended after {report.chunks} chunks"))
            self._log(f"{sid}: ended after {report.chunks} chunks")
        except SourceDropped as exc:
            publisher.outcome = "failed"
            self._announce(status.failed(bounded(str(exc), 300)))
            self._log(f"{sid}: failed: {exc}")
        except InputError as exc:          # a file that cannot be read: restarting won't help
            publisher.outcome = "failed"
            self._announce(status.failed(bounded(str(exc), 300)))
            self._log(f"{sid}: failed: {exc}")
        except Exception as exc:           # noqa: BLE001 - the thread's death, restarted
            text = str(exc) if isinstance(exc, FacestreamError) else \
                f"{type(exc).__name__}: {exc}"
            publisher.outcome = "crashed"
            publisher.crashes += 1
            self._announce(status.failed(bounded(f"publisher died: {text}", 300)))
            self._log(f"{sid}: publisher died: {bounded(text, 300)}")
            log.debug("publisher traceback", exc_info=True)

    def _supervise(self) -> None:
        """Restart, after their backoff, the publishers whose thread died."""
        now = self._monotonic()
        alive = 0
        for publisher in list(self._publishers.values()):
            thread = publisher.thread
            if thread is not None and thread.is_alive():
                alive += 1
                continue
            if publisher.outcome != "crashed" or self._stop.is_set():
                continue
            if publisher.restart_at is None:
                delays = self.restart_delay(publisher.crashes)
                publisher.restart_at = now + delays
                self._log(f"{publisher.spec.stream_id}: restarting the publisher in "
                          f"{delays:.1f} s")
            elif now >= publisher.restart_at:
                publisher.status.restarts += 1
                self.metrics.restarts.labels(publisher.spec.stream_id).inc()
                self._launch(publisher, "publisher restarted")
                alive += 1
        self.metrics.publishers.set(alive)

    def restart_delay(self, crashes: int) -> float:
        """The delay before restarting a publisher that died ``crashes`` times in a row."""
        delay = 0.0
        for k, delay in enumerate(Backoff(None, self.settings.reconnect_backoff_s,
                                          self.settings.supervisor_backoff_max_s).delays()):
            if k + 1 >= crashes:
                break
        return delay

    def _shutdown(self) -> None:
        publishers = list(self._publishers.values())
        for publisher in publishers:
            publisher.stop.set()
        for publisher in publishers:
            if publisher.thread is not None:
                publisher.thread.join(timeout=self.settings.open_timeout_s + 5)
            if publisher.outcome in ("ended", "failed"):
                continue                    # its final state stands (a failure stays visible)
            self._announce(publisher.status.ended("supervisor stopped"), publisher.status)
        self._publishers.clear()
        self.metrics.publishers.set(0)
        if self._chunks is not None:
            try:
                self._chunks.close()
            except Exception as exc:       # noqa: BLE001 - closing: say it, go on
                self._log(f"supervisor: closing the producer: {exc}")
        if self._dlq is not None:
            self._dlq.close()
        self._writer_stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout=15)

    # -- status ---------------------------------------------------------------------------------

    def _announce(self, transition: Transition | None, status: StreamStatus | None = None) -> None:
        """Queue the event of a state change and wake the writer."""
        if transition is None:
            return
        if status is None:
            publisher = self._publishers.get(transition.stream_id)
            status = publisher.status if publisher else None
        self.metrics.set_state(transition.stream_id, transition.state)
        event = events.stream_status(
            stream_id=transition.stream_id, state=transition.state,
            previous=transition.previous, reason=transition.reason,
            attempt=transition.attempt, seq=transition.seq,
            url=status.url if status else "",
            fps=status.fps if status else self.settings.fps,
            profile=status.profile if status else self.settings.profile,
            publisher=self.name, time_epoch=transition.at)
        with self._lock:
            if len(self._events) == self._events.maxlen:
                log.warning("status events waiting for Redis: the oldest is dropped")
            self._events.append(event)
        self._wake.set()

    def _write_loop(self) -> None:
        """Write pending events and every stream's status every
        ``stream_status_interval_s`` (at once after a change); retried with backoff while
        Redis is away, until stopped (then one last try)."""
        failures = 0
        while True:
            stopping = self._writer_stop.is_set()
            try:
                self._flush()
                failures = 0
                self.metrics.redis_ok = True
            except SinkUnavailable as exc:
                failures += 1
                self.metrics.redis_ok = False
                if failures == 1:
                    self._log(f"supervisor: status not written: {exc}; retrying")
            if stopping:
                return
            delay = self.settings.stream_status_interval_s if not failures else \
                min(8.0, 0.25 * 2 ** min(failures, 6))
            self._wake.wait(delay)
            self._wake.clear()

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._events)
            status = {sid: s.fields() for sid, s in self._live.items()}
            status.update(self._finals)
            expire = dict(self._expire)
        self._sink.write(batch, status, expire=expire)
        sent = {id(event) for event in batch}
        with self._lock:
            while self._events and id(self._events[0]) in sent:
                self._events.popleft()
            for sid, fields in list(self._finals.items()):
                if status.get(sid) is fields:
                    del self._finals[sid]
            for sid, ttl in expire.items():
                if self._expire.get(sid, "gone") == ttl:
                    del self._expire[sid]
