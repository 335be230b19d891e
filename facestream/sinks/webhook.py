"""Events POSTed to webhooks (setting ``webhook_urls``), in the CloudEvents HTTP binding's
batched content mode.

Each :meth:`WebhookSink.write` is one request per URL: the body is a JSON array of the
round's events, each the whole CloudEvents object (as in Redis), with
``Content-Type: application/cloudevents-batch+json``.  With ``webhook_secret`` set, header
``X-Facestream-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes under
that key (:func:`signature`, :func:`verify`).

A request is accepted by any 2xx answer.  A connection error, a timeout, a 5xx, 408 or 429 is
tried again after a capped exponential backoff (``webhook_backoff_s`` doubling up to
``webhook_backoff_max_s``), ``webhook_max_attempts`` tries in all; any other answer (a 3xx:
redirects are not followed; a 4xx) is final at once.  A request that is not accepted puts
each of its events in the Redis stream ``webhook_dead_stream`` (fields ``url``, ``id``,
``type``, ``reason``, ``attempts``, ``event``), and the write goes on: one receiver never
stops the pipeline.  After a dead letter the URL counts as down: later writes try it once,
without backoff, until it accepts a request again, so a dead receiver costs each round one
try (at most ``webhook_timeout_s``), not the whole backoff.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterable, Mapping

from facestream.config import Settings
from facestream.errors import bounded
from facestream.sinks.redis_stream import make_redis, _unavailable

CONTENT_TYPE = "application/cloudevents-batch+json"
SIGNATURE_HEADER = "X-Facestream-Signature"
_RETRYABLE_STATUS = frozenset({408, 429})

# post(url, body, headers, timeout_s) -> HTTP status; raises OSError when no answer came.
Post = Callable[[str, bytes, Mapping[str, str], float], int]


def signature(secret: str, body: bytes) -> str:
    """The ``X-Facestream-Signature`` value of ``body``: ``sha256=`` and the hex HMAC."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """True if ``header`` is the signature of ``body`` under ``secret`` (constant time)."""
    return header is not None and hmac.compare_digest(signature(secret, body), header)


def request_body(events: Iterable[Mapping[str, Any]]) -> bytes:
    """The batched-mode body: a JSON array of the events, compact UTF-8."""
    return json.dumps(list(events), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def request_headers(body: bytes, secret: str) -> dict[str, str]:
    headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "facestream"}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return headers


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUS


class WebhookSink:
    """POSTs events to each of ``settings.webhook_url_list``.  Blocking; not thread-safe.
    ``post`` and ``sleep`` are injectable (tests); ``redis`` is the client dead letters are
    written with (made on the first dead letter when not given)."""

    def __init__(self, settings: Settings, *, redis=None, post: Post | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._settings = settings
        self._urls = settings.webhook_url_list
        self._redis = redis
        self._post = post or _urllib_post
        self._sleep = sleep
        self._down: set[str] = set()
        self.dead_letters = 0

    def write(self, events: Iterable[dict[str, Any]],
              status: Mapping[str, Mapping[str, Any]] | None = None) -> int:
        """Deliver ``events`` to every URL (``status`` is Redis's alone); returns how many
        events, once every URL accepted them or they were dead-lettered.  SinkUnavailable
        only if a dead letter cannot be written to Redis (the caller retries the write)."""
        events = list(events)
        if not events:
            return 0
        body = request_body(events)
        headers = request_headers(body, self._settings.webhook_secret)
        for url in self._urls:
            reason, attempts = self._deliver(url, body, headers)
            if reason is None:
                self._down.discard(url)
            else:
                self._down.add(url)
                self._dead_letter(url, events, reason, attempts)
        return len(events)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()

    def _deliver(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[str | None, int]:
        """(None, tries) once ``url`` accepted the body; (why not, tries) otherwise."""
        s = self._settings
        tries = 1 if url in self._down else s.webhook_max_attempts
        reason = ""
        for attempt in range(tries):
            if attempt:
                self._sleep(min(s.webhook_backoff_max_s, s.webhook_backoff_s * 2 ** (attempt - 1)))
            try:
                code = self._post(url, body, headers, s.webhook_timeout_s)
            except OSError as exc:
                reason = bounded(f"{type(exc).__name__}: {exc}", 200)
                continue
            if 200 <= code < 300:
                return None, attempt + 1
            reason = f"HTTP {code}"
            if not _retryable(code):
                return reason, attempt + 1
        return reason, tries

    def _dead_letter(self, url: str, events: list[dict[str, Any]], reason: str,
                     attempts: int) -> None:
        import redis

        if self._redis is None:
            self._redis = make_redis(self._settings)
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self._settings.webhook_dead_stream,
                      {"url": url, "id": event["id"], "type": event["type"],
                       "reason": reason, "attempts": str(attempts),
                       "event": json.dumps(event, separators=(",", ":"), ensure_ascii=False)},
                      maxlen=self._settings.events_maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(self._settings, exc) from None
        self.dead_letters += len(events)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Answers a redirect with the 3xx itself: a POST is not replayed elsewhere."""

    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def _urllib_post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except http.client.HTTPException as exc:      # not an HTTP answer: no answer
        raise OSError(f"{type(exc).__name__}: {exc}") from None
