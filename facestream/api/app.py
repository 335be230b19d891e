"""The ``facestream serve`` process: the HTTP API (docs/API.md; OpenAPI at /openapi.json) and
the web console at ``/``, one FastAPI app served by uvicorn.

:func:`create_app` builds the app for given settings (the tests start it in process);
:func:`serve` checks that it may listen where it is told, binds, and runs it until SIGINT or
SIGTERM, then closes open event streams within a poll and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from importlib import resources
from typing import Any, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from facestream import __version__
from facestream.config import Settings
from facestream.errors import ConfigError, redact

from facestream.api import feed, streams
from facestream.api.shared import (ApiError, ApiMetrics, check_exposure, require_token,
                                   sync_redis)

CONSOLE = resources.files("facestream.api") / "console"
# Body field names as StreamIn spells them, for validation errors (the loc of a body error).
_BODY_NAMES = set(streams.StreamIn.model_fields)


def create_app(settings: Settings, *, heartbeat_s: float = 15.0,
               poll_ms: int = 1000) -> FastAPI:
    """The app.  Nothing connects until it starts (its lifespan): then a background consumer
    reads the registry topic and the Redis clients are made.  ``heartbeat_s``: an idle event
    stream gets a comment line this often; ``poll_ms``: how long one XREAD of an event stream
    blocks, which bounds how long a closing server waits for its event streams."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        import redis.asyncio

        app.state.redis = sync_redis(settings)
        app.state.aredis = redis.asyncio.Redis.from_url(
            settings.redis_url, socket_connect_timeout=2.0,
            socket_timeout=poll_ms / 1000 + 5.0)
        app.state.view.start()
        try:
            yield
        finally:
            app.state.stopping.set()
            await asyncio.to_thread(app.state.view.close)
            await app.state.aredis.aclose()
            app.state.redis.close()

    app = FastAPI(title="facestream", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,          # their pages load scripts from a CDN
                  description="Cameras, faces and events of a facestream deployment.  "
                              "docs/API.md is the contract in words.")
    metrics = ApiMetrics()
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.stopping = threading.Event()
    app.state.heartbeat_s = heartbeat_s
    app.state.poll_ms = poll_ms
    app.state.view = streams.StreamView(settings, on_change=metrics.registry_streams.set)

    for router in (streams.router, feed.router):
        app.include_router(router, dependencies=[Depends(require_token)])
    _health_routes(app)
    _console_routes(app)
    _error_handlers(app)
    app.add_middleware(_CountRequests, metrics=metrics)
    return app


def _health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], summary="The process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Kafka and Redis answer, the registry is read",
             responses={503: {"description": "not ready; checks says which part"}})
    async def readyz(request: Request) -> JSONResponse:
        state = request.app.state
        checks = {"registry": state.view.loaded.is_set() and state.view.alive,
                  "kafka": await asyncio.to_thread(_kafka_answers, state.settings),
                  "redis": await _redis_answers(state.aredis)}
        ready = all(checks.values())
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if state.view.error:
            body["registry_error"] = redact(state.view.error)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics",
             response_class=Response)
    def prometheus(request: Request) -> Response:
        metrics: ApiMetrics = request.app.state.metrics
        metrics.registry_loaded.set(1 if request.app.state.view.loaded.is_set() else 0)
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def _kafka_answers(settings: Settings) -> bool:
    """True if a bootstrap server accepts a TCP connection within a second."""
    for address in settings.kafka_bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return True
        except (OSError, ValueError):
            continue
    return False


async def _redis_answers(client) -> bool:
    import redis

    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=2.0))
    except (redis.RedisError, asyncio.TimeoutError, OSError):
        return False


def _console_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(str(CONSOLE / "index.html"), headers={"Cache-Control": "no-cache"})

    app.mount("/console", StaticFiles(directory=str(CONSOLE)), name="console")


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}: see /openapi.json"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(ApiError(exc.status_code, message).body(),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in error.get("loc", ())]
        kind = error.get("type")
        field = loc[1] if len(loc) > 1 and kind != "json_invalid" else None
        if kind == "json_invalid":
            message = "the body is not valid JSON"
        elif "json" not in request.headers.get("content-type", "") and loc[:1] == ["body"]:
            message = "the body must be a JSON object sent as Content-Type: application/json"
        elif field is not None and kind == "extra_forbidden":
            message = f"{field}: unknown field (expected {', '.join(sorted(_BODY_NAMES))})"
        elif field is not None:
            message = f"{field}: {error.get('msg', 'invalid')}"
        else:
            message = "the body must be a JSON object: {\"id\", \"url\", \"fps\"?, \"profile\"?}"
        return JSONResponse(ApiError(422, message, field=field).body(), status_code=422)


class _CountRequests:
    """ASGI middleware: counts every HTTP answer by route template and status code (a path
    that matched no route counts as ``unmatched``, so probing cannot grow the label set)."""

    def __init__(self, app, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, str(status["code"])).inc()


def serve(settings: Settings, *, announce: Callable[[str], None] = print) -> None:
    """Run the API and console until SIGINT or SIGTERM.  ConfigError (exit 2) before anything
    starts when a non-loopback ``api_host`` has no ``api_token``, or the address cannot be
    bound.  ``announce`` gets one line with the URL once it listens."""
    import uvicorn

    check_exposure(settings)
    family = socket.AF_INET6 if ":" in settings.api_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.api_host.strip("[]"), settings.api_port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {settings.api_host}:{settings.api_port} "
                          f"({exc.strerror or exc}); set FACESTREAM_API_HOST / "
                          "FACESTREAM_API_PORT") from None
    app = create_app(settings)
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stopping.set()            # event streams end within one poll
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            announce(f"serve: console and API at http://{shown}:{port}/ (OpenAPI at "
                     f"/openapi.json); registry {settings.registry_topic} at "
                     f"{settings.kafka_bootstrap}, events and status from "
                     f"{redact(settings.redis_url)}"
                     + ("; API token required" if settings.api_token else ""))

    Server(config).run(sockets=[sock])
