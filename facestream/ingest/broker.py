"""The Kafka clients facestream's commands start with, made in one place.

kafka-python's clients connect in their constructors and, when no broker answers, give up
after 30 s with a ``KafkaTimeoutError`` that says nothing about which setting is wrong.
:func:`connect` waits ``kafka_connect_timeout_s`` instead and turns that failure into one
line naming the address, why it failed (a plain TCP connect to it says: refused, timed out,
unknown host) and the setting to check.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, TypeVar

from facestream.config import Settings
from facestream.errors import FacestreamError, bounded

Client = TypeVar("Client")


class BrokerUnreachable(FacestreamError):
    """No Kafka broker answered at ``kafka_bootstrap``: the command cannot start."""

    exit_code = 2


def connect(make: Callable[..., Client], settings: Settings, **options: Any) -> Client:
    """``make`` (``KafkaProducer``, ``KafkaConsumer`` or ``KafkaAdminClient``) called with the
    connection settings and ``options``; BrokerUnreachable if no broker answers within
    ``settings.kafka_connect_timeout_s``."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    try:
        return make(**settings.kafka_client_options(),
                    bootstrap_timeout_ms=int(settings.kafka_connect_timeout_s * 1000), **options)
    except (KafkaTimeoutError, KafkaConnectionError):
        raise BrokerUnreachable(unreachable_message(settings)) from None


def unreachable_message(settings: Settings) -> str:
    """The one line for a broker that did not answer: where, why, and what to check."""
    waited = f"{settings.kafka_connect_timeout_s:g} s"
    address = settings.kafka_bootstrap.split(",")[0].strip()
    which = f"{address}: " if "," in settings.kafka_bootstrap else ""
    refused = _probe(address)
    why = (f"{which}{refused}; no answer within {waited}" if refused is not None else
           f"{which}the port accepts connections but no Kafka answer came within {waited}: "
           "is it a broker, and do the security settings match it?")
    return (f"Kafka at {settings.kafka_bootstrap} is unreachable ({why}); check "
            "FACESTREAM_KAFKA_BOOTSTRAP and that the broker is running "
            "(deploy/dev-services up)")


def _probe(address: str, timeout_s: float = 1.0) -> str | None:
    """Why ``address`` (host:port) refuses a plain TCP connection; None if it accepts one."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except ValueError:
        return "not host:port"
    except OSError as exc:
        return bounded(exc.strerror or str(exc) or type(exc).__name__, 100)
