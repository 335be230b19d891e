"""``/api/v1/events``, ``/api/v1/events/stream`` and ``/api/v1/tracks``: what the workers
wrote to the Redis streams ``events_stream`` (every event) and ``events_stream:{id}`` (one
stream's), read without a consumer group, so any number of clients can watch and none
acknowledges anything for the others.

An entry is ``{id, type, event}`` (``event``: the CloudEvents JSON; docs/EVENTS.md).  A
position in a stream is an *entry id* (``1718000000000-0``, Redis's); ``after`` also takes
an *event id* (the CloudEvent's 32 hex digits), found by reading back from the newest entry.
Every event leaves here with the passwords of URLs in it redacted.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Iterable

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from facestream.config import Settings
from facestream.events import FACE_ANALYSIS, FACE_DESCRIPTION, TRACK_ENDED, TRACK_STARTED
from facestream.ingest.sources import is_stream_id

from facestream.api.shared import ApiError, redis_failure
from facestream.errors import redact

ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
EVENT_ID = re.compile(r"[0-9a-f]{32}")
# Events a track list is built from: the newest this many entries of the stream.
TRACK_WINDOW_ENTRIES = 3000
TIMELINE_POINTS = 600                  # the newest windows kept per track
_SCAN_PAGE = 1000                      # entries per read while looking for an event id

router = APIRouter(prefix="/api/v1", tags=["events"])


def _key(settings: Settings, stream: str | None) -> str:
    if stream is None:
        return settings.events_stream
    if not is_stream_id(stream):
        raise ApiError(422, f"stream {stream[:60]!r}: not a stream id (letters, digits, '.', "
                            "'_' and '-')", field="stream")
    return f"{settings.events_stream}:{stream}"


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _event(fields: dict) -> dict[str, Any] | None:
    """The CloudEvent of an entry, redacted; None for an entry that holds none."""
    raw = fields.get(b"event") or fields.get("event")
    if not raw:
        return None
    try:
        return json.loads(redact(_text(raw)))
    except ValueError:
        return None


def _start_after(client, key: str, after: str) -> str:
    """The entry id ``after`` names (itself, or the entry holding that event id)."""
    if ENTRY_ID.fullmatch(after):
        return after
    if not EVENT_ID.fullmatch(after):
        raise ApiError(422, f"after {after[:60]!r}: expected an entry id (1718000000000-0) or "
                            "an event id (32 hex digits)", field="after")
    upper = "+"
    while True:
        page = client.xrevrange(key, max=upper, min="-", count=_SCAN_PAGE)
        for entry_id, fields in page:
            if _text(fields.get(b"id", b"")) == after:
                return _text(entry_id)
        if len(page) < _SCAN_PAGE:
            raise ApiError(404, f"event {after} is not in {key} (never written, or trimmed "
                                "away): read again without 'after'", field="after")
        upper = "(" + _text(page[-1][0])


@router.get("/events", summary="Events, newest last",
            description="Without `after`: the newest `limit` events.  With `after` (an entry "
                        "id or an event id): the `limit` events written after it, oldest "
                        "first.  The header X-Last-Entry-ID is the last entry returned.")
def list_events(request: Request, response: Response,
                stream: str | None = Query(None, description="one stream's events only"),
                after: str | None = Query(None, description="entry id or event id"),
                limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    import redis

    settings: Settings = request.app.state.settings
    client = request.app.state.redis
    key = _key(settings, stream)
    try:
        if after is None:
            entries = list(reversed(client.xrevrange(key, count=limit)))
        else:
            entries = client.xrange(key, min="(" + _start_after(client, key, after),
                                    count=limit)
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None
    if entries:
        response.headers["X-Last-Entry-ID"] = _text(entries[-1][0])
    return [e for e in (_event(fields) for _, fields in entries) if e is not None]


@router.get("/events/stream", summary="New events as Server-Sent Events",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}},
            description="Each message: `id:` the entry id, `data:` the CloudEvent JSON.  "
                        "Starts after `Last-Event-ID` (an entry id: a resuming EventSource "
                        "sends it), else after `after` (an entry id, e.g. X-Last-Entry-ID of a "
                        "GET /api/v1/events), else at the newest entry; a comment line every "
                        "heartbeat when idle.")
async def event_stream(request: Request,
                       stream: str | None = Query(None, description="one stream's events only"),
                       after: str | None = Query(None, description="entry id to start after"),
                       last_event_id: str | None = Header(None, alias="Last-Event-ID"),
                       ) -> StreamingResponse:
    import redis

    state = request.app.state
    settings: Settings = state.settings
    key = _key(settings, stream)
    client = state.aredis
    for name, value in (("Last-Event-ID", last_event_id), ("after", after)):
        if value is not None and not ENTRY_ID.fullmatch(value.strip()):
            raise ApiError(422, f"{name}: expected an entry id (1718000000000-0)", field=name)
    try:
        if last_event_id is not None or after is not None:
            start = (last_event_id or after).strip()
        else:
            newest = await client.xrevrange(key, count=1)
            start = _text(newest[0][0]) if newest else "0-0"
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None

    async def messages():
        state.metrics.sse_clients.inc()
        last, quiet_since = start, time.monotonic()
        try:
            yield "retry: 2000\n: connected\n\n"
            while not state.stopping.is_set():
                try:
                    reply = await client.xread({key: last}, count=100, block=state.poll_ms)
                except redis.RedisError:
                    yield ": redis unavailable, retrying\n\n"
                    await asyncio.sleep(1.0)
                    continue
                for entry_id, fields in (reply[0][1] if reply else []):
                    last = _text(entry_id)
                    event = _event(fields)
                    if event is not None:
                        yield f"id: {last}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"
                        quiet_since = time.monotonic()
                if time.monotonic() - quiet_since >= state.heartbeat_s:
                    yield ": heartbeat\n\n"
                    quiet_since = time.monotonic()
        finally:
            state.metrics.sse_clients.dec()

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/tracks", summary="Current and recent tracks with their timelines",
            description="Built from the stream's newest events: per track whether it is "
                        "current (no track.ended yet), its latest expression, age, gender and "
                        "description, and a timeline with one point per analysed window.")
def list_tracks(request: Request,
                stream: str | None = Query(None, description="one stream's tracks only"),
                recent: int = Query(10, ge=0, le=100,
                                    description="ended tracks kept, newest first")
                ) -> list[dict[str, Any]]:
    import redis

    settings: Settings = request.app.state.settings
    key = _key(settings, stream)
    try:
        entries = request.app.state.redis.xrevrange(key, count=TRACK_WINDOW_ENTRIES)
    except redis.RedisError as exc:
        raise redis_failure(settings, exc) from None
    events = (e for e in (_event(fields) for _, fields in reversed(entries)) if e is not None)
    return build_tracks(events, recent=recent)


def build_tracks(events: Iterable[dict[str, Any]], *, recent: int = 10) -> list[dict[str, Any]]:
    """Tracks from events in the order they were written: the current ones (started or
    analysed, not ended), then the ``recent`` ended ones last seen latest.  Each has
    ``stream_id``, ``track_id``, ``current``, ``started_s`` / ``ended_s`` (media seconds,
    null when not seen), ``last_seen`` (the newest event's time), the latest ``expression``
    label and its ``scores``, ``age`` (years, low, high), ``gender`` (label, score),
    ``description``, ``bbox``, and ``timeline``: one point per analysed window, oldest first
    (``start_s``, ``end_s``, ``label``, ``scores``, ``age``, ``gender``, ``description``),
    the newest TIMELINE_POINTS kept.  A description event fills its window's point."""
    tracks: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[tuple[str, str]] = []
    for event in events:
        data = event.get("data") or {}
        kind, track_id = event.get("type"), data.get("track_id")
        if not track_id or kind not in (FACE_ANALYSIS, FACE_DESCRIPTION, TRACK_STARTED,
                                        TRACK_ENDED):
            continue
        key = (data.get("stream_id", ""), track_id)
        track = tracks.get(key)
        if track is None:
            track = tracks[key] = {
                "stream_id": key[0], "track_id": track_id, "current": True,
                "started_s": None, "ended_s": None, "last_seen": None, "expression": None,
                "scores": None, "age": None, "gender": None, "description": None,
                "bbox": None, "timeline": []}
        if key in order:
            order.remove(key)
        order.append(key)
        track["last_seen"] = event.get("time")
        if kind == TRACK_STARTED:
            track["started_s"] = data.get("time_s")
        elif kind == TRACK_ENDED:
            track["current"], track["ended_s"] = False, data.get("time_s")
        elif kind == FACE_ANALYSIS:
            _add_window(track, data)
        else:
            _add_description(track, data)
    ended = [k for k in reversed(order) if not tracks[k]["current"]][:recent]
    current = [k for k in reversed(order) if tracks[k]["current"]]
    return [tracks[k] for k in current + ended]


def _add_window(track: dict[str, Any], data: dict[str, Any]) -> None:
    window = data.get("window") or {}
    expression = data.get("expression") or {}
    attributes = data.get("attributes") or {}
    point = {"start_s": window.get("start_s"), "end_s": window.get("end_s"),
             "start_pts": window.get("start_pts"), "label": expression.get("label"),
             "scores": expression.get("scores"), "age": attributes.get("age"),
             "gender": attributes.get("gender"), "description": data.get("description")}
    track["timeline"].append(point)
    del track["timeline"][:-TIMELINE_POINTS]
    track.update(expression=point["label"], scores=point["scores"], age=point["age"],
                 gender=point["gender"], bbox=data.get("bbox"))
    if point["description"]:
        track["description"] = point["description"]


def _add_description(track: dict[str, Any], data: dict[str, Any]) -> None:
    window = data.get("window") or {}
    for point in reversed(track["timeline"]):
        if (point["start_pts"], point["start_s"]) == (window.get("start_pts"),
                                                      window.get("start_s")):
            point["description"] = data.get("description")
            break
    if data.get("description"):
        track["description"] = data["description"]
