"""``facestream events tail``: follow the events in Redis with a consumer group."""

from __future__ import annotations

import json
import sys
from typing import Any

from facestream import events
from facestream.config import Settings
from facestream.errors import FacestreamError


def format_event(event: dict[str, Any]) -> str:
    """One human line per event."""
    d = event.get("data", {})
    head = f"{event.get('time', '?')} {d.get('stream_id', '?')}"
    kind = event.get("type", "")
    if kind == events.FACE_ANALYSIS:
        w, e, a = d["window"], d.get("expression") or {}, d.get("attributes") or {}
        g, age = a.get("gender") or {}, a.get("age") or {}
        text = (f"{head} {d['track_id']} {w['start_s']:.1f}-{w['end_s']:.1f}s "
                f"{e.get('label', '-')} {g.get('label', '-')} {age.get('years', '-')}")
        return text + (f" \u201c{d['description']}\u201d" if d.get("description") else "")
    if kind == events.FACE_DESCRIPTION:
        w = d["window"]
        return (f"{head} {d['track_id']} {w['start_s']:.1f}-{w['end_s']:.1f}s "
                f"\u201c{d['description']}\u201d")
    if kind == "facestream.stream.error":
        return f"{head} ERROR {d.get('message')}"
    return f"{head} {d.get('track_id')} {kind.rsplit('.', 1)[-1]}"


def tail(settings: Settings, *, stream_id: str | None, group: str, as_json: bool,
         count: int | None, block_ms: int = 1000) -> int:
    """Print events as they arrive; acknowledge each once printed.  Blocking."""
    import redis

    from facestream.sinks.redis_stream import make_redis

    client = make_redis(settings)
    key = f"{settings.events_stream}:{stream_id}" if stream_id else settings.events_stream
    try:
        try:
            client.xgroup_create(key, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        printed = 0
        while count is None or printed < count:
            reply = client.xreadgroup(group, "tail", {key: ">"}, count=100, block=block_ms)
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    raw = fields.get(b"event", b"{}")
                    print(raw.decode() if as_json else format_event(json.loads(raw)), flush=True)
                    client.xack(key, group, entry_id)
                    printed += 1
                    if count is not None and printed >= count:
                        return 0
    except redis.RedisError as exc:
        raise FacestreamError(f"Redis at {settings.redis_url}: {exc}") from None
    except BrokenPipeError:
        sys.stderr.close()
    return 0
