"""``/api/v1/streams``: the registered cameras, with the live status the supervisor and the
workers keep in Redis, and their latest analysed frame.

The registry is the compacted topic ``registry_topic`` that ``facestream streams`` writes
too (one source of truth).  :class:`StreamView` keeps it folded in memory: a background
consumer applies every record as it comes, and the API's own writes are applied the moment
the broker has acknowledged them, so a GET right after a POST or DELETE sees it.  A record
of the topic older than the API's own last write of that stream is not applied over it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from facestream.config import Settings
from facestream.errors import FacestreamError
from facestream.ingest.registry import Registry, SpecError, StreamSpec, validate
from facestream.ingest.sources import is_stream_id
from facestream.retry import Backoff

from facestream.api.shared import ApiError, redis_failure
from facestream.errors import redact

log = logging.getLogger(__name__)

STATES = ("connecting", "live", "reconnecting", "failed", "ended", "removed")
# Status hash fields by type; the supervisor writes the first group, the workers the second.
_FLOATS = ("last_frame_at", "frames_per_s", "updated_at", "events_per_s", "worker_at")
_INTS = ("frames", "bytes", "reconnects", "attempt", "faces")
_TEXTS = ("last_error", "publisher", "worker")
# The registry's field names as the API's body names them.
_BODY_FIELDS = {"stream_id": "id", "source": "url"}


class StreamView:
    """The registry folded in memory, kept current by a daemon thread.  Thread-safe.

    ``loaded`` is set once every record that was in the topic when the view started has been
    applied; reads and writes before that are refused by the routes (503).  A lost broker
    makes the thread start again from the beginning of the topic after a backoff."""

    def __init__(self, settings: Settings, *, on_change: Callable[[int], None] = lambda n: None,
                 poll_ms: int = 200) -> None:
        self._registry = Registry(settings)
        self._specs: dict[str, StreamSpec] = {}
        self._own: dict[str, int] = {}         # stream id -> offset of the API's last write
        self._lock = threading.Lock()          # guards _specs and _own
        self._writing = threading.Lock()       # one write at a time: check-then-put is atomic
        self._stop = threading.Event()
        self._on_change = on_change
        self._poll_ms = poll_ms
        self._thread: threading.Thread | None = None
        self.loaded = threading.Event()
        self.error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="registry-view", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop following (within one poll) and close the producer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._registry.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _follow(self) -> None:
        delays = Backoff(attempts=1_000_000, base_s=0.5, maximum_s=10.0).delays()
        while not self._stop.is_set():
            try:
                for stream_id, value, record in self._registry.follow(
                        poll_ms=self._poll_ms, caught_up=self.loaded.set):
                    if self._stop.is_set():
                        return
                    if record is not None:
                        self._apply(stream_id, value, record.offset)
                    self.error = None
            except FacestreamError as exc:
                self.error = str(exc)
            except Exception as exc:    # kafka-python's own errors: the view must not die
                self.error = f"{type(exc).__name__}: {exc}"
            log.warning("registry view: %s; reading the topic again", self.error)
            self._stop.wait(next(delays))

    def _apply(self, stream_id: str, value: bytes | None, offset: int) -> None:
        spec = None
        if value is not None:
            try:
                spec = StreamSpec.from_json(stream_id, value)
            except SpecError as exc:
                log.warning("registry view: skipping %s", exc)
        self._set(stream_id, spec, offset, own=False)

    def specs(self) -> list[StreamSpec]:
        with self._lock:
            return sorted(self._specs.values(), key=lambda s: s.stream_id)

    def get(self, stream_id: str) -> StreamSpec | None:
        with self._lock:
            return self._specs.get(stream_id)

    def write(self, stream_id: str, spec: StreamSpec | None, *,
              unless: Callable[[StreamSpec | None], str | None]) -> None:
        """Put ``spec`` (None: remove) unless ``unless(current spec)`` returns a reason, then
        ApiError 409 (exists) or 404 (missing) — ``unless`` picks by returning
        ``"exists"`` or ``"missing"``.  Blocking until the broker acknowledged."""
        with self._writing:
            reason = unless(self.get(stream_id))
            if reason == "exists":
                raise ApiError(409, f"stream {stream_id} exists: DELETE it first, or pick "
                                    "another id", field="id")
            if reason == "missing":
                raise ApiError(404, f"no stream {stream_id}")
            offset = self._registry.put(spec, stream_id=stream_id)
            self._set(stream_id, spec, offset, own=True)

    def _set(self, stream_id: str, spec: StreamSpec | None, offset: int, *, own: bool) -> None:
        """The stream's spec (None: removed) as of record ``offset``: the API's own write
        (``own``) at once, the topic's unless the API wrote the stream since."""
        with self._lock:
            if own:
                self._own[stream_id] = offset
            elif offset < self._own.get(stream_id, -1):
                return
            if spec is None:
                self._specs.pop(stream_id, None)
            else:
                self._specs[stream_id] = spec
            size = len(self._specs)
        self._on_change(size)


class StreamIn(BaseModel):
    """The body of ``POST /api/v1/streams``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(description="letters, digits, '.', '_' and '-'; at most 128 characters")
    url: str = Field(description="the camera: rtsp://, rtsps://, http(s)://, rtmp:// or srt:// "
                                 "URL, as the registry's allow-list admits")
    fps: float = Field(10.0, description="analysis rate, frames per media second (0.1..120)")
    profile: str = Field("compact", description="analysis profile: compact or facellava")


class StreamOut(BaseModel):
    """A registered stream and its live status (null where nothing reported it yet)."""

    id: str
    url: str = Field(description="the source URL, its password replaced by ***")
    fps: float
    profile: str
    state: str = Field(description="connecting | live | reconnecting | failed | ended | "
                                   "removed (connecting until the supervisor reports)")
    last_error: str | None = None
    last_frame_at: float | None = Field(None, description="epoch seconds")
    frames: int | None = None
    bytes: int | None = None
    reconnects: int | None = None
    attempt: int | None = None
    frames_per_s: float | None = None
    events_per_s: float | None = None
    faces: int | None = None
    publisher: str | None = None
    worker: str | None = None
    updated_at: float | None = Field(None, description="epoch seconds")
    worker_at: float | None = Field(None, description="epoch seconds")
    snapshot: bool = Field(description="snapshot.jpg has a frame now")


def stream_json(spec: StreamSpec, status: dict[bytes, bytes], *,
                snapshot: bool) -> dict[str, Any]:
    """A stream as the API shows it: the registry's spec with the status hash's fields,
    typed (a field that does not parse is null), credentials redacted; ``snapshot``: whether
    snapshot.jpg has a frame now."""
    fields = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in status.items()}
    out: dict[str, Any] = {"id": spec.stream_id, "url": redact(spec.source), "fps": spec.fps,
                           "profile": spec.profile,
                           "state": fields.get("state") or "connecting"}
    for name in _FLOATS + _INTS:
        try:
            out[name] = (float if name in _FLOATS else int)(fields[name])
        except (KeyError, ValueError):
            out[name] = None
    for name in _TEXTS:
        out[name] = redact(fields[name]) if fields.get(name) else None
    out["snapshot"] = snapshot
    return out


def _view(request: Request) -> StreamView:
    view: StreamView = request.app.state.view
    if not view.loaded.is_set():
        raise ApiError(503, "the stream registry is still being read"
                       + (f" ({view.error})" if view.error else "") + "; retry shortly")
    return view


def _checked_id(stream_id: str) -> str:
    if not is_stream_id(stream_id):
        raise ApiError(422, f"stream id {stream_id[:60]!r}: use letters, digits, '.', '_' and "
                            "'-'", field="id")
    return stream_id


def _statuses(request: Request, specs: list[StreamSpec]) -> list[dict[str, Any]]:
    """``stream_json`` of each spec, its status and snapshot read in one round trip."""
    import redis

    settings: Settings = request.app.state.settings
    if not specs:
        return []
    pipe = request.app.state.redis.pipeline(transaction=False)
    for spec in specs:
        key = f"{settings.stream_status_prefix}:{spec.stream_id}"
        pipe.hgetall(key)
        pipe.exists(f"{key}:snapshot")
    try:
        replies = pipe.execute()
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None
    return [stream_json(spec, replies[2 * i], snapshot=bool(replies[2 * i + 1]))
            for i, spec in enumerate(specs)]


router = APIRouter(prefix="/api/v1/streams", tags=["streams"])


@router.get("", response_model=list[StreamOut], summary="Every registered stream")
def list_streams(request: Request) -> list[dict[str, Any]]:
    return _statuses(request, _view(request).specs())


@router.post("", status_code=201, response_model=StreamOut, summary="Register a stream",
             responses={409: {"description": "the id exists"},
                        422: {"description": "a bad body, id or URL (field names it)"}})
def add_stream(body: StreamIn, request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    spec = StreamSpec(body.id, body.url, body.fps, body.profile)
    try:
        validate(spec, settings)
    except SpecError as exc:
        raise ApiError(422, str(exc), field=_BODY_FIELDS.get(exc.field, exc.field)) from None
    _view(request).write(spec.stream_id, spec,
                         unless=lambda current: "exists" if current is not None else None)
    return _statuses(request, [spec])[0]


@router.get("/{stream_id}", response_model=StreamOut, summary="One stream",
            responses={404: {"description": "no such stream"}})
def get_stream(stream_id: str, request: Request) -> dict[str, Any]:
    spec = _view(request).get(_checked_id(stream_id))
    if spec is None:
        raise ApiError(404, f"no stream {stream_id}")
    return _statuses(request, [spec])[0]


@router.delete("/{stream_id}", status_code=204, summary="Unregister a stream",
               responses={404: {"description": "no such stream"}})
def delete_stream(stream_id: str, request: Request) -> Response:
    _view(request).write(_checked_id(stream_id), None,
                         unless=lambda current: "missing" if current is None else None)
    return Response(status_code=204)


@router.get("/{stream_id}/snapshot.jpg", summary="The latest analysed frame, annotated",
            response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}},
                       404: {"description": "no such stream, or no frame analysed yet"}})
def snapshot(stream_id: str, request: Request) -> Response:
    import redis

    settings: Settings = request.app.state.settings
    if _view(request).get(_checked_id(stream_id)) is None:
        raise ApiError(404, f"no stream {stream_id}")
    try:
        jpeg = request.app.state.redis.get(f"{settings.stream_status_prefix}:{stream_id}"
                                           ":snapshot")
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None
    if not jpeg:
        raise ApiError(404, f"stream {stream_id} has no analysed frame yet")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
