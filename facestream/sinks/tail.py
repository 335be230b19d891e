"""``facestream events tail``: follow the events in Redis with a consumer group (the client's
subscriber), one human line or one JSON object per event."""

from __future__ import annotations

import sys
from typing import Any

from facestream import events
from facestream.config import Settings


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
    if kind == events.STREAM_STATUS:
        attempt = f" (attempt {d['attempt']})" if d.get("attempt") else ""
        reason = f": {d['reason']}" if d.get("reason") else ""
        return f"{head} {str(d.get('state')).upper()}{attempt}{reason}"
    return f"{head} {d.get('track_id')} {kind.rsplit('.', 1)[-1]}"


def tail(settings: Settings, *, stream_id: str | None, group: str, as_json: bool,
         count: int | None, consumer: str | None = None, block_ms: int = 1000) -> int:
    """Print events as they arrive, each acknowledged once printed, through
    :class:`facestream.client.EventSubscriber` (so a tail that dies leaves what it had not
    printed to the group's other tails, which claim it).  Blocking; stops after ``count``
    events, on SIGTERM or on Ctrl-C."""
    from facestream.client import EventSubscriber

    def show(event) -> None:
        try:
            print(event.to_json() if as_json else format_event(dict(event.raw)), flush=True)
        except BrokenPipeError:     # the reader went away (`| head`): not the event's fault
            raise _ReaderGone from None

    subscriber = EventSubscriber(settings, group=group, consumer=consumer, stream=stream_id,
                                 handler=show, block_ms=block_ms)
    try:
        subscriber.run(count=count)
    except _ReaderGone:
        sys.stderr.close()
    return 0


class _ReaderGone(BaseException):
    """Stops the subscriber at once, the event unprinted left pending (the subscriber turns
    an ``Exception`` of its handler into a retry, and lets other exceptions through)."""
