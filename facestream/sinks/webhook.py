"""Events POSTed to webhooks (setting ``webhook_urls``), in the CloudEvents HTTP binding's
batched content mode.

Each :meth:`WebhookSink.write` is one request per URL: the body is a JSON array of the
round's events, each the whole CloudEvents object (as in Redis), with
``Content-Type: application/cloudevents-batch+json``.  With ``webhook_secret`` set, the
request carries ``X-Facestream-Timestamp: <unix seconds>`` (the time of that try) and
``X-Facestream-Signature: sha256=<hex>``, the HMAC-SHA256 under that key of the timestamp, a
dot and the exact body bytes (:func:`signature`, :func:`verify`): a receiver that refuses
timestamps older than a few minutes cannot be fed a captured request again later.

The URLs are served in parallel, one thread each, so a slow receiver delays the round by its
own time, not by the sum of all of theirs.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Mapping

from facestream.config import Settings
from facestream.errors import bounded
from facestream.sinks.redis_stream import make_redis, _unavailable

CONTENT_TYPE = "application/cloudevents-batch+json"
SIGNATURE_HEADER = "X-Facestream-Signature"
TIMESTAMP_HEADER = "X-Facestream-Timestamp"
REPLAY_TOLERANCE_S = 300
_RETRYABLE_STATUS = frozenset({408, 429})
_MAX_PARALLEL = 16

# post(url, body, headers, timeout_s) -> HTTP status; raises OSError when no answer came.
Post = Callable[[str, bytes, Mapping[str, str], float], int]


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Facestream-Signature`` value of ``body`` sent at ``timestamp`` (unix seconds):
    ``sha256=`` and the hex HMAC of ``b"<timestamp>." + body``."""
    signed = str(int(timestamp)).encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None, timestamp: str | None, *,
           tolerance_s: float = REPLAY_TOLERANCE_S, now: float | None = None) -> bool:
    """True if ``header`` is the signature of ``body`` at ``timestamp`` (the two headers as
    received) under ``secret``, compared in constant time, and ``timestamp`` is within
    ``tolerance_s`` of ``now`` (default: this machine's clock) either way."""
    if header is None or timestamp is None or not timestamp.isdigit():
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, int(timestamp)), header)


def request_body(events: Iterable[Mapping[str, Any]]) -> bytes:
    """The batched-mode body: a JSON array of the events, compact UTF-8."""
    return json.dumps(list(events), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def request_headers(body: bytes, secret: str, *, now: float) -> dict[str, str]:
    headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "facestream"}
    if secret:
        timestamp = int(now)
        headers[TIMESTAMP_HEADER] = str(timestamp)
        headers[SIGNATURE_HEADER] = signature(secret, body, timestamp)
    return headers


def _retryable(status: int) -> bool:
    return status >= 500 or status in _RETRYABLE_STATUS


class WebhookSink:
    """POSTs events to each of ``settings.webhook_url_list``, the URLs in parallel.
    Blocking; not thread-safe.  ``post``, ``sleep`` and ``clock`` (unix seconds, for the
    signature's timestamp) are injectable (tests); ``redis`` is the client dead letters are
    written with (made on the first dead letter when not given)."""

    def __init__(self, settings: Settings, *, redis=None, post: Post | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._urls = settings.webhook_url_list
        self._redis = redis
        self._post = post or _urllib_post
        self._sleep = sleep
        self._clock = clock
        self._down: set[str] = set()
        self._pool = (ThreadPoolExecutor(min(len(self._urls), _MAX_PARALLEL),
                                         thread_name_prefix="webhook")
                      if len(self._urls) > 1 else None)
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
        if self._pool is None:
            outcomes = [self._deliver(url, body) for url in self._urls]
        else:
            outcomes = list(self._pool.map(lambda url: self._deliver(url, body), self._urls))
        for url, (reason, attempts) in zip(self._urls, outcomes):
            if reason is None:
                self._down.discard(url)
            else:
                self._down.add(url)
                self._dead_letter(url, events, reason, attempts)
        return len(events)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._redis is not None:
            self._redis.close()

    def _deliver(self, url: str, body: bytes) -> tuple[str | None, int]:
        """(None, tries) once ``url`` accepted the body; (why not, tries) otherwise.  Each try
        is signed anew with its own timestamp."""
        s = self._settings
        tries = 1 if url in self._down else s.webhook_max_attempts
        reason = ""
        for attempt in range(tries):
            if attempt:
                self._sleep(min(s.webhook_backoff_max_s, s.webhook_backoff_s * 2 ** (attempt - 1)))
            headers = request_headers(body, s.webhook_secret, now=self._clock())
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
