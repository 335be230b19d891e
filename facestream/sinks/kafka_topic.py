"""Events to a Kafka topic (setting ``events_topic``), in the CloudEvents Kafka protocol
binding's binary content mode.

Each event is one record:

* key: the event's stream id (UTF-8), so one stream's events land on one partition, in order;
* value: the event's ``data`` as compact UTF-8 JSON;
* headers: ``ce_specversion``, ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``,
  ``ce_subject`` (only when the event has a subject), ``ce_dataschema``, and
  ``content-type: application/json`` (the event's ``datacontenttype``); every value UTF-8.

The producer is idempotent with ``acks=all``, and :meth:`KafkaEventSink.write` returns only
once the broker has acknowledged every record; a broker that does not is
:class:`EventsTopicUnavailable` (a :class:`SinkUnavailable`: the worker retries the whole
write with backoff, so a retried round can repeat records, with the same ``ce_id``).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from facestream.config import Settings
from facestream.errors import bounded
from facestream.sinks.redis_stream import SinkUnavailable

# CloudEvents attribute -> Kafka header (the binding prefixes attributes with "ce_";
# datacontenttype maps to the plain "content-type" header).
_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject", "dataschema")


class EventsTopicUnavailable(SinkUnavailable):
    """The broker did not acknowledge the events written to ``events_topic``."""


def kafka_headers(event: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """The binary-mode headers of ``event``: ``ce_<attribute>`` for each attribute it has
    (none for a missing subject), then ``content-type``."""
    headers = [(f"ce_{name}", str(event[name]).encode("utf-8"))
               for name in _ATTRIBUTES if event.get(name) is not None]
    headers.append(("content-type",
                    str(event.get("datacontenttype") or "application/json").encode("utf-8")))
    return headers


def kafka_record(event: Mapping[str, Any]) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of ``event`` as the topic holds it."""
    key = str(event["data"]["stream_id"]).encode("utf-8")
    value = json.dumps(event["data"], separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return key, value, kafka_headers(event)


class KafkaEventSink:
    """Produces events to ``settings.events_topic``.  Blocking; not thread-safe.  The
    producer is made on the first write (and again after a failed start)."""

    def __init__(self, settings: Settings, producer=None, *, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._topic = settings.events_topic
        self._producer = producer
        self._timeout_s = timeout_s

    def write(self, events: Iterable[dict[str, Any]],
              status: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Produce ``events`` (``status`` is Redis's alone) and wait for every ack; returns
        how many.  EventsTopicUnavailable if the broker does not acknowledge them all."""
        from kafka.errors import KafkaError

        events = list(events)
        if not events:
            return 0
        try:
            producer = self._producer_now()
            futures = []
            for event in events:
                key, value, headers = kafka_record(event)
                futures.append(producer.send(self._topic, key=key, value=value,
                                             headers=headers))
            producer.flush(timeout=self._timeout_s)
            for future in futures:
                future.get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise self._unavailable(str(exc) or type(exc).__name__) from None
        return len(events)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)

    def _producer_now(self):
        if self._producer is None:
            from kafka import KafkaProducer

            from facestream.ingest.broker import BrokerUnreachable, connect

            try:
                self._producer = connect(KafkaProducer, self._settings, acks="all",
                                         enable_idempotence=True)
            except BrokerUnreachable as exc:
                raise self._unavailable(str(exc)) from None
        return self._producer

    def _unavailable(self, reason: str) -> EventsTopicUnavailable:
        return EventsTopicUnavailable(f"events topic {self._topic} at "
                                      f"{self._settings.kafka_bootstrap}: {bounded(reason, 200)}")
