"""The stream registry: which streams exist, from where, at what rate — the compacted topic
``facestream.streams`` (key: stream id; value: the spec as JSON; a tombstone removes it).

Specs are validated where they are written (``facestream streams add``) and again where they
are read (``facestream ingest --from-registry``, the camera supervisor:
:mod:`facestream.workers.supervisor`): an invalid one read from the topic goes to
the dead-letter topic with the reason and is never applied.  Sources pass an allow-list, so
the control topic cannot make publishers read local files or probe internal hosts: only the
configured URL schemes, only public addresses, and ``file://`` not at all — unless the
operator enables them (``registry_allow_files``, ``registry_allow_private``).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Iterator
from urllib.parse import urlparse

from facestream.config import Settings
from facestream.errors import FacestreamError, InputError, bounded
from facestream.ingest.broker import connect
from facestream.ingest.sources import SourceSpec, is_stream_id, parse_source
from facestream.vocabulary import PROFILES


class SpecError(FacestreamError):
    """A stream spec that must not be applied; the message says which field and why, and
    ``field`` names it (``stream_id``, ``source``, ``fps``, ``profile``; None for the spec
    as a whole)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class StreamSpec:
    stream_id: str
    source: str
    fps: float = 10.0
    profile: str = "compact"

    def to_json(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "stream_id"},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, stream_id: str, value: bytes) -> "StreamSpec":
        name = _name(stream_id)
        try:
            raw = json.loads(value)
        except (ValueError, RecursionError) as exc:
            # ValueError: JSONDecodeError, UnicodeDecodeError, an integer of more digits
            # than Python converts; RecursionError: arrays or objects nested too deep.
            raise SpecError(f"stream {name}: spec is not JSON ({bounded(str(exc), 100)})") \
                from None
        if not isinstance(raw, dict):
            raise SpecError(f"stream {name}: spec must be a JSON object")
        unknown = set(raw) - {"source", "fps", "profile"}
        if unknown:
            raise SpecError(f"stream {name}: unknown fields {_show(sorted(unknown))}",
                            field=sorted(unknown)[0])
        if not isinstance(raw.get("source"), str):
            raise SpecError(f"stream {name}: 'source' must be a string", field="source")
        fps = raw.get("fps", 10.0)
        if not isinstance(fps, (int, float)) or isinstance(fps, bool):
            raise SpecError(f"stream {name}: 'fps' must be a number", field="fps")
        try:
            fps = float(fps)
        except OverflowError:       # an integer beyond any float
            raise SpecError(f"stream {name}: fps {_show(fps)} is outside 0.1..120",
                            field="fps") from None
        return cls(stream_id, raw["source"], fps, raw.get("profile", "compact"))


def validate(spec: StreamSpec, settings: Settings) -> SourceSpec:
    """The parsed source if ``spec`` may be applied; SpecError saying why not otherwise."""
    if not is_stream_id(spec.stream_id):
        raise SpecError(f"stream id {_show(spec.stream_id)}: use letters, digits, '.', '_' "
                        "and '-'", field="stream_id")
    if not 0.1 <= spec.fps <= 120:
        raise SpecError(f"stream {spec.stream_id}: fps {spec.fps} is outside 0.1..120",
                        field="fps")
    if spec.profile not in PROFILES:
        raise SpecError(f"stream {spec.stream_id}: profile {_show(spec.profile)} is not one of "
                        f"{', '.join(PROFILES)}", field="profile")
    try:
        # As parse_source sees it (stripped): the allow-list judges what will be opened.
        url = urlparse(spec.source.strip())
    except ValueError as exc:       # "Invalid IPv6 URL", a netloc that NFKC changes
        raise SpecError(f"stream {spec.stream_id}: source {_show(spec.source)} is not a "
                        f"usable URL ({bounded(str(exc), 60)})", field="source") from None
    scheme = url.scheme.lower()
    if scheme in ("", "file"):
        if not settings.registry_allow_files:
            raise SpecError(f"stream {spec.stream_id}: local files are not allowed as registry "
                            "sources (enable registry_allow_files on the publishers)",
                            field="source")
    else:
        allowed = {s.strip() for s in settings.registry_schemes.split(",") if s.strip()}
        if scheme not in allowed:
            raise SpecError(f"stream {spec.stream_id}: scheme {_show(scheme)} is not allowed "
                            f"(registry_schemes: {', '.join(sorted(allowed))})", field="source")
        hosts = {h.strip().lower() for h in settings.registry_hosts.split(",") if h.strip()}
        host = (url.hostname or "").lower()
        if hosts and host not in hosts:
            raise SpecError(f"stream {spec.stream_id}: host {_show(host)} is not in "
                            "registry_hosts", field="source")
        if not settings.registry_allow_private and _private(host):
            raise SpecError(f"stream {spec.stream_id}: {_show(host)} is a private, loopback or "
                            "link-local address (enable registry_allow_private to use it)",
                            field="source")
    try:
        return parse_source(spec.source)
    except InputError as exc:
        raise SpecError(f"stream {spec.stream_id}: {bounded(str(exc), 150)}",
                        field="source") from None


def _show(value) -> str:
    """A value from the wire in an error message: its repr, at most 60 characters."""
    return bounded(repr(value), 60)


def _name(stream_id: str) -> str:
    """A stream id (the record's key, not yet checked) in an error message."""
    return stream_id if is_stream_id(stream_id) else _show(stream_id)


def _private(host: str) -> bool:
    """True if ``host`` is, or resolves to, a non-public address."""
    if not host:
        return True
    try:
        addresses = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addresses = {ipaddress.ip_address(info[4][0])
                         for info in socket.getaddrinfo(host, None)}
        except (socket.gaierror, UnicodeError):
            return False       # unresolvable here: the publisher will fail to open it
    return any(not a.is_global for a in addresses)


class Registry:
    """Reads and writes the registry topic.  Blocking; :meth:`put` is safe to call from
    several threads (one producer, made on first use, serves them; :meth:`close` ends it)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = None
        self._topic_ready = False
        self._lock = threading.Lock()

    def ensure_topic(self) -> None:
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        if self._topic_ready:
            return
        admin = connect(KafkaAdminClient, self.settings)
        try:
            admin.create_topics([NewTopic(self.settings.registry_topic, num_partitions=1,
                                          replication_factor=1,
                                          topic_configs={"cleanup.policy": "compact"})])
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
        self._topic_ready = True

    def put(self, spec: StreamSpec | None, *, stream_id: str) -> int:
        """Add or replace a stream (``spec``), or remove it (``None``: a tombstone); returns
        the record's offset once every in-sync replica has it (a stream id's records all go
        to one partition, so a later offset is a later write of that stream)."""
        from kafka import KafkaProducer

        with self._lock:
            self.ensure_topic()
            if self._producer is None:
                self._producer = connect(KafkaProducer, self.settings, acks="all")
            producer = self._producer
        future = producer.send(self.settings.registry_topic, key=stream_id.encode(),
                               value=None if spec is None else spec.to_json())
        return future.get(timeout=30).offset

    def close(self) -> None:
        """Flush and close the producer, if :meth:`put` made one."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=30)

    def follow(self, *, from_start: bool = True, stop_at_end: bool = False,
               poll_ms: int = 500, caught_up: Callable[[], None] | None = None,
               ) -> Iterator[tuple[str, bytes | None, object]]:
        """(stream id, value or None, raw record) in log order; with ``stop_at_end`` it
        ends once it has caught up with the topic, else it follows it for ever, yielding
        ``("", None, None)`` when a poll brought nothing (the caller may stop there).
        ``caught_up`` is called once, when every record that was in the topic as it began
        has been yielded."""
        from kafka import KafkaConsumer, TopicPartition

        self.ensure_topic()
        consumer = connect(KafkaConsumer, self.settings, enable_auto_commit=False)
        partitions = [TopicPartition(self.settings.registry_topic, p) for p in
                      consumer.partitions_for_topic(self.settings.registry_topic) or {0}]
        consumer.assign(partitions)
        if from_start:
            consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        try:
            while True:
                batch = consumer.poll(timeout_ms=poll_ms)
                for records in batch.values():
                    for record in records:
                        yield (record.key or b"").decode(errors="replace"), record.value, record
                at_end = all(consumer.position(tp) >= ends[tp] for tp in partitions)
                if at_end and caught_up is not None:
                    caught_up()
                    caught_up = None
                if stop_at_end and at_end:
                    return
                if not batch:
                    yield "", None, None        # idle tick: lets the caller check its state
        finally:
            consumer.close()

    def current(self) -> dict[str, bytes]:
        """The registry folded to its latest value per stream (removed streams left out)."""
        state: dict[str, bytes] = {}
        for stream_id, value, record in self.follow(stop_at_end=True):
            if record is None:
                continue
            if value is None:
                state.pop(stream_id, None)
            else:
                state[stream_id] = value
        return state
