"""What every part of the API shares: its one error shape, credential redaction, the bearer
token check, the Redis clients and the Prometheus metrics of one app.

Errors leave the API as JSON ``{"error": "<one line>", "field": "<name>" | null}`` with the
status code that says what kind they are (docs/API.md lists them); :class:`ApiError` is how
a route says so.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from facestream.config import Settings, loopback
from facestream.errors import ConfigError, bounded, redact

# The cookie and the query parameter that carry the token where a header cannot be set (an
# EventSource, an <img>); docs/API.md says what each costs.
TOKEN_COOKIE = "facestream_token"
TOKEN_QUERY = "access_token"

# user:password@ in any URL inside a text: the password goes, the user name stays.
class ApiError(Exception):
    """A request the API answers with ``status`` and ``{"error": message, "field": field}``."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = bounded(" ".join(message.splitlines()), 400)
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field}


def check_exposure(settings: Settings) -> None:
    """ConfigError unless the API is either loopback-only or needs a token."""
    if not settings.api_token and not loopback(settings.api_host):
        raise ConfigError(f"api_host {settings.api_host} is not a loopback address and no "
                          "api_token is set: set FACESTREAM_API_TOKEN, or listen on 127.0.0.1")


def presented_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer``, else the cookie, else the query
    parameter; None when it carries none."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE) or request.query_params.get(TOKEN_QUERY) or None


def require_token(request: Request) -> None:
    """FastAPI dependency of every /api route: ApiError 401 unless the settings have no token
    or the request presents it (compared in constant time)."""
    expected = request.app.state.settings.api_token
    if not expected:
        return
    given = presented_token(request)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "missing or wrong API token: send Authorization: Bearer <token> "
                            "(the value of FACESTREAM_API_TOKEN)")


def sync_redis(settings: Settings):
    """A redis-py client for the API's short commands (pooled; safe to share between
    threads): 2 s timeouts, a couple of retries."""
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def redis_failure(settings: Settings, exc: Exception) -> ApiError:
    """503 for a Redis that did not answer (its URL without the password)."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ApiError(503, f"Redis at {redact(settings.redis_url)}: {bounded(reason, 200)}")


class ApiMetrics:
    """The Prometheus metrics of one app, in a registry of its own (several apps in one
    process, as in the tests, never share counters)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.requests = Counter("facestream_api_requests", "HTTP requests answered, by route "
                                "template and status code", ["route", "status"],
                                registry=self.registry)
        self.sse_clients = Gauge("facestream_api_sse_clients", "Server-Sent Events "
                                 "connections open now", registry=self.registry)
        self.registry_streams = Gauge("facestream_api_registry_streams", "Streams in the "
                                      "registry, as the API's view of it holds them",
                                      registry=self.registry)
        self.registry_loaded = Gauge("facestream_api_registry_loaded", "1 once the API has "
                                     "read the whole registry topic", registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
