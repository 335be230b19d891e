"""Helpers of the API tests: an isolated registry and status prefix per test, the app served
by a real uvicorn server on an ephemeral loopback port in a thread, and a small HTTP client
(plain requests, and Server-Sent Events read line by line)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from tests.integration.helpers import wait


def api_settings(isolated, **overrides):
    """The test's isolated settings and env, plus its own registry topic and status prefix."""
    settings, env = isolated
    tag = uuid.uuid4().hex[:8]
    extra = {"registry_topic": f"it-{tag}.streams", "stream_status_prefix": f"it:{tag}:stream",
             **overrides}
    settings = dataclasses.replace(settings, **extra)
    env = {**env, **{f"FACESTREAM_{k.upper()}": str(int(v) if isinstance(v, bool) else v)
                     for k, v in extra.items()}}
    return settings, env


@dataclasses.dataclass
class Served:
    app: Any
    port: int

    def call(self, method: str, path: str, body: Any = None, *,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body | bytes | None) of one request."""
        return call(self.port, method, path, body, headers=headers, raw=raw)


def call(port: int, method: str, path: str, body: Any = None, *,
         headers: dict[str, str] | None = None, raw: bytes | None = None,
         ) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = dict(headers or {})
    payload = raw
    if body is not None:
        payload = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=payload, headers=headers)
        reply = connection.getresponse()
        data = reply.read()
        reply_headers = {k.lower(): v for k, v in reply.getheaders()}
    finally:
        connection.close()
    if reply_headers.get("content-type", "").startswith("application/json"):
        return reply.status, reply_headers, json.loads(data)
    return reply.status, reply_headers, data or None


def ready(port: int) -> bool:
    """True once a server on ``port`` answers /readyz with 200 (False while none listens)."""
    try:
        return call(port, "GET", "/readyz")[0] == 200
    except OSError:
        return False


@contextmanager
def served(settings, **options) -> Iterator[Served]:
    """``create_app(settings, **options)`` under uvicorn until the block ends; waits for the
    registry to be read before yielding."""
    import uvicorn

    from facestream.api.app import create_app

    app = create_app(settings, **options)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=5))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "uvicorn to start")
        assert thread.is_alive(), "the server stopped while starting"
        wait_for(lambda: ready(port), 90, "/readyz")
        yield Served(app, port)
    finally:
        app.state.stopping.set()
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


def wait_for(predicate, timeout_s: float, what: str) -> None:
    """:func:`tests.integration.helpers.wait`, checked every 0.1 s (API calls are quick)."""
    wait(predicate, timeout_s, what, every_s=0.1)


class EventStream:
    """One Server-Sent Events connection, read a line at a time (blocking reads with a
    timeout, so a test waits on what arrives, never on a fixed delay)."""

    def __init__(self, port: int, path: str, *, headers: dict[str, str] | None = None,
                 timeout_s: float = 60) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        self.connection.request("GET", path, headers=headers or {})
        self.reply = self.connection.getresponse()
        self.status = self.reply.status
        self.content_type = self.reply.getheader("content-type", "")

    def next_line(self) -> str:
        raw = self.reply.readline()
        if not raw:
            raise AssertionError("the event stream ended")
        return raw.decode().rstrip("\n")

    def until_comment(self, text: str) -> None:
        """Read up to a comment line ``: text``."""
        while self.next_line() != f": {text}":
            pass

    def next_message(self) -> dict[str, str]:
        """The next message's fields (``id``, ``data``); comments, and blocks without data
        (``retry:``), skipped as an EventSource skips them."""
        fields: dict[str, str] = {}
        while True:
            line = self.next_line()
            if line == "":
                if "data" in fields:
                    return fields
                fields = {}
                continue
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")

    def close(self) -> None:
        self.connection.close()
