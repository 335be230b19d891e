"""A small downstream service: alert when a face stays angry.

Reads facestream's events from Redis with :class:`facestream.client.EventSubscriber` and
prints one JSON line per alert when a face's expression label stays ``anger`` (or
``--label``) for at least ``--seconds`` (5) seconds of *media* time, once per episode.
Optionally each alert is also added to a Redis stream (``--alerts-key``).

    python examples/anger_alert.py                       # every stream, from the oldest entry
    python examples/anger_alert.py --stream lobby --seconds 3 --alerts-key alerts:anger

The logic is :class:`SustainedExpression`, a plain class with no I/O: feed it events in
order, it returns the alerts they complete.  It keeps, per (stream id, track id):

* the current run of consecutive analysis windows whose ``expression.label`` is the label:
  where it began (``window.start_s``) and whether it already alerted;
* the last window applied (``window.start_s``): an older or equal window is a redelivery
  or a replay that comes after later entries, and is ignored.

A window covers media time from ``window.start_s`` to one frame interval after
``window.end_s`` (its last analysed frame lasts until the next one): with the default
1 s windows at 10 fps, five angry windows in a row are 5.0 s of anger.  A run ends at a
window with another label (or none), or when more than ``--max-gap`` (1 s) of media time
passes between two windows of the track.  ``facestream.track.ended`` forgets the track.
Event ids seen before are dropped (a :class:`facestream.client.Deduplicator`).

Everything is computed from the events' media times, never the wall clock, so the same
events always give the same alerts, with the same alert ids.

Imports only ``facestream.client`` and ``facestream.config`` (no model runtime).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from facestream.client import (FACE_ANALYSIS, TRACK_ENDED, Deduplicator, Event, EventSubscriber,
                               SubscriberError)
from facestream.config import Settings

# The seven labels of ``expression.label`` (docs/EVENTS.md, the event schema).
LABELS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")


@dataclass
class _Run:
    """One track's state."""

    last_start_s: float | None = None   # start_s of the last window applied
    last_end_s: float | None = None     # where that window's coverage ends
    since_s: float | None = None        # start of the current run of the label (None: none)
    first_event: str | None = None      # id of the run's first window's event
    windows: int = 0                    # windows in the current run
    alerted: bool = False               # the current run has alerted


def window_span(window: Mapping[str, Any]) -> tuple[float, float]:
    """Media seconds a window covers: its first frame to one frame interval after its last."""
    start, end, frames = window["start_s"], window["end_s"], window["frames"]
    step = (end - start) / (frames - 1) if frames > 1 else 0.0
    return start, end + step


class SustainedExpression:
    """Alerts for faces whose expression label stays ``label`` for ``seconds`` of media time,
    one per episode.  :meth:`feed` takes events in the order they are read and returns the
    alerts (dicts, JSON-ready) that each completes."""

    def __init__(self, *, label: str = "anger", seconds: float = 5.0, max_gap_s: float = 1.0,
                 dedupe: Deduplicator | None = None) -> None:
        if label not in LABELS:
            raise ValueError(f"label {label!r}: expected one of {', '.join(LABELS)}")
        if seconds <= 0 or max_gap_s < 0:
            raise ValueError(f"seconds {seconds} must be > 0 and max_gap_s {max_gap_s} >= 0")
        self.label = label
        self.seconds = seconds
        self.max_gap_s = max_gap_s
        self._seen = dedupe if dedupe is not None else Deduplicator(100_000)
        self._tracks: dict[tuple[str, str], _Run] = {}

    def tracks(self) -> int:
        """Tracks with state (ended tracks are forgotten)."""
        return len(self._tracks)

    def feed(self, event: Event) -> list[dict[str, Any]]:
        if event.id in self._seen:
            return []
        self._seen.add(event.id)
        if event.type == TRACK_ENDED:
            self._tracks.pop((event.stream_id, event.track_id), None)
            return []
        if event.type != FACE_ANALYSIS:
            return []                   # descriptions, track starts, stream errors
        return self._window(event)

    def feed_all(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        return [alert for event in events for alert in self.feed(event)]

    def _window(self, event: Event) -> list[dict[str, Any]]:
        run = self._tracks.setdefault((event.stream_id, event.track_id), _Run())
        window = event.data["window"]
        start, end = window_span(window)
        if run.last_start_s is not None and start <= run.last_start_s:
            return []                   # an older window, met again after later ones
        gap = None if run.last_end_s is None else start - run.last_end_s
        run.last_start_s, run.last_end_s = start, end
        expression = event.data.get("expression") or {}
        if expression.get("label") != self.label or (gap is not None and gap > self.max_gap_s):
            run.since_s, run.first_event, run.windows, run.alerted = None, None, 0, False
            if expression.get("label") != self.label:
                return []
        if run.since_s is None:
            run.since_s, run.first_event = start, event.id
        run.windows += 1
        duration = round(end - run.since_s, 3)
        if run.alerted or duration < self.seconds:
            return []
        run.alerted = True
        return [self._alert(event, run, end, duration)]

    def _alert(self, event: Event, run: _Run, end: float, duration: float) -> dict[str, Any]:
        key = "\x1f".join([event.stream_id, event.track_id or "", self.label,
                           run.first_event or ""])
        return {"alert": "sustained_expression",
                "id": hashlib.sha256(key.encode()).hexdigest()[:32],
                "stream_id": event.stream_id, "track_id": event.track_id,
                "label": self.label, "since_s": round(run.since_s, 3),
                "at_s": round(end, 3), "duration_s": duration, "windows": run.windows,
                "threshold_s": self.seconds, "first_event": run.first_event,
                "event": event.id, "time": event.raw["time"]}


# --- the service ------------------------------------------------------------------------------

def alert_line(alert: dict[str, Any]) -> str:
    return json.dumps(alert, separators=(",", ":"), sort_keys=True)


class Service:
    """The subscriber's handler: feed the detector, then emit its alerts.  Alerts that could
    not be emitted (Redis refused the ``XADD``) are kept and emitted first next time: the
    handler raises, the subscriber retries the entry, the detector drops it as a duplicate,
    and the kept alerts go out then."""

    def __init__(self, detector: SustainedExpression, emit: Callable[[dict], None]) -> None:
        self.detector = detector
        self._emit = emit
        self._unsent: list[dict[str, Any]] = []

    def __call__(self, event: Event) -> None:
        self._unsent.extend(self.detector.feed(event))
        while self._unsent:
            self._emit(self._unsent[0])
            self._unsent.pop(0)


def make_emit(settings: Settings, alerts_key: str | None, out=None) -> Callable[[dict], None]:
    out = out or sys.stdout
    client = None
    if alerts_key:
        import redis

        client = redis.Redis.from_url(settings.redis_url, socket_timeout=10,
                                      socket_connect_timeout=5)

    def emit(alert: dict[str, Any]) -> None:
        line = alert_line(alert)
        if client is not None:
            client.xadd(alerts_key, {"id": alert["id"], "alert": line},
                        maxlen=settings.events_maxlen, approximate=True)
        print(line, file=out, flush=True)
    return emit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Alert (one JSON line on stdout) when a face's expression stays one label "
                    "for N seconds of media time. Redis and the events key come from "
                    "FACESTREAM_REDIS_URL and FACESTREAM_EVENTS_STREAM.")
    parser.add_argument("--label", default="anger", choices=LABELS,
                        help="expression label to watch (default anger)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="media seconds the label must last (default 5)")
    parser.add_argument("--max-gap", type=float, default=1.0,
                        help="media seconds between two windows that still continue an "
                             "episode (default 1)")
    parser.add_argument("--stream", default=None,
                        help="read one stream's key (facestream:events:ID); default every "
                             "stream's")
    parser.add_argument("--group", default="anger-alert",
                        help="Redis consumer group (default anger-alert)")
    parser.add_argument("--start", default="0", choices=("0", "$"),
                        help="where a new group begins: 0 every entry kept (default), $ new ones")
    parser.add_argument("--alerts-key", default=None,
                        help="also XADD each alert to this Redis stream (fields id, alert)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.max_gap < 0:
        parser.error("--seconds must be > 0 and --max-gap >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    settings = Settings.load()
    detector = SustainedExpression(label=args.label, seconds=args.seconds,
                                   max_gap_s=args.max_gap)
    handler = Service(detector, make_emit(settings, args.alerts_key))
    # No dedupe= here: the detector drops ids it has seen itself, and a retried entry must
    # reach the handler so that alerts it could not emit go out (see Service).
    subscriber = EventSubscriber(settings, group=args.group, stream=args.stream,
                                 start=args.start, handler=handler)
    try:
        subscriber.run()                # until SIGTERM / SIGINT
    except SubscriberError as exc:
        print(f"anger_alert: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
