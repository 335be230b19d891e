"""The dead-letter topic: every video-topic message a worker did not process, and why.

A dead letter is the original message (key, value, headers) plus:

* ``fs-error`` — why, one line of at most :data:`MAX_REASON` characters;
* ``fs-source-topic``, ``fs-source-partition``, ``fs-source-offset`` — where it was read;
* ``fs-source-size`` — the original value's size in bytes;
* ``fs-truncated`` — ``1`` when something was cut to fit the topic's message limit: the
  value (to what room is left), header values over :data:`MAX_COPIED_HEADER` bytes, headers
  past the first :data:`MAX_COPIED_HEADERS` or (the last first) past what fits in the limit
  beside the ``fs-*`` ones, or a key over :data:`MAX_KEY` bytes.

So a message of any size or shape can be dead-lettered: nothing about it can make the
dead-letter send fail, only the broker being away can (:class:`BrokerUnavailable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facestream.config import Settings
from facestream.errors import FacestreamError, bounded

MAX_REASON = 300              # characters of fs-error
MAX_COPIED_HEADER = 1024      # bytes of each original header value copied
MAX_COPIED_HEADERS = 32       # original headers copied
MAX_KEY = 256                 # bytes of the original key copied
_FRAMING_BYTES = 16_384       # Kafka's record and batch framing, as the publisher reserves it


class BrokerUnavailable(FacestreamError):
    """The broker did not acknowledge a dead letter (it is away or refused the send)."""


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def dead_letter(record: Any, reason: str, *, limit: int) -> DeadLetter:
    """The dead letter of a consumer ``record`` (topic, partition, offset, key, value,
    headers): at most ``limit`` bytes of key, value and headers together."""
    value = record.value or b""
    key = record.key
    cut = False
    if key is not None and len(key) > MAX_KEY:
        key, cut = key[:MAX_KEY], True
    headers: list[tuple[str, bytes]] = []
    original = list(record.headers or ())
    if len(original) > MAX_COPIED_HEADERS:
        original, cut = original[:MAX_COPIED_HEADERS], True
    for name, raw in original:
        name = bounded(str(name), 64)
        raw = bytes(raw or b"")
        if len(raw) > MAX_COPIED_HEADER:
            raw, cut = raw[:MAX_COPIED_HEADER], True
        headers.append((name, raw))
    added = [("fs-error", one_line(reason).encode()),
             ("fs-source-topic", str(record.topic).encode()),
             ("fs-source-partition", str(record.partition).encode()),
             ("fs-source-offset", str(record.offset).encode()),
             ("fs-source-size", str(len(value)).encode())]
    room = limit - len(key or b"") - sum(_size(n, v) for n, v in headers + added) - 32
    while room < 0 and headers:         # the original headers do not fit: the last go first
        room += _size(*headers.pop())
        cut = True
    headers += added
    if len(value) > max(0, room):
        value, cut = value[:max(0, room)], True
    if cut:
        headers.append(("fs-truncated", b"1"))
    return DeadLetter(key, value, headers)


def _size(name: str, raw: bytes) -> int:
    """Bytes a header takes in a record: name (UTF-8), value, and room for their framing."""
    return len(name.encode()) + len(raw) + 8


def one_line(reason: str) -> str:
    """A reason as the one line fs-error and error events carry (UTF-8: a lone surrogate,
    as in OS text decoded with surrogateescape, is written \\udcxx)."""
    text = str(reason).encode("utf-8", "backslashreplace").decode("utf-8")
    return bounded(" ".join(text.split()), MAX_REASON)


class DeadLetterSender:
    """Sends dead letters and waits for the broker's acknowledgement.  Blocking; not
    thread-safe.  The producer is made on first use (a worker that never dead-letters
    never opens it)."""

    def __init__(self, settings: Settings, producer=None, *, timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._producer = producer
        self._timeout_s = timeout_s
        self._limit = settings.max_message_bytes

    def send(self, record: Any, reason: str) -> None:
        """Dead-letter ``record``; BrokerUnavailable if the broker does not acknowledge it
        (retrying is the caller's choice: a repeated dead letter is the same message)."""
        from kafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

        letter = dead_letter(record, reason, limit=self._limit)
        try:
            try:
                self._send(letter)
            except (MessageSizeTooLargeError, RecordListTooLargeError):
                # The broker's limit is below the configured one: keep the headers only.
                self._send(dead_letter(record, reason, limit=0))
        except KafkaError as exc:
            raise BrokerUnavailable(f"dead-letter topic {self._settings.dlq_topic} at "
                                    f"{self._settings.kafka_bootstrap}: "
                                    f"{bounded(str(exc) or type(exc).__name__, 200)}") from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)

    def _send(self, letter: DeadLetter) -> None:
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(**self._settings.kafka_client_options(), acks="all",
                                           max_request_size=self._limit + _FRAMING_BYTES)
        future = self._producer.send(self._settings.dlq_topic, key=letter.key,
                                     value=letter.value, headers=letter.headers)
        future.get(timeout=self._timeout_s)
