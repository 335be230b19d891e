"""Events, as docs/EVENTS.md defines them (CloudEvents 1.0, structured JSON).

Ids are deterministic — a hash of (stream id, track id, window start pts, event type, model
profile) — so reprocessing the same media gives the same ids and consumers can drop
duplicates.  Builders return plain dicts ready for ``json.dumps``; :func:`validator` checks
them against the JSON Schema shipped in the package.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any

SPEC_VERSION = "1.0"
SCHEMA_VERSION = "1"
DATASCHEMA = f"facestream://schemas/event/v{SCHEMA_VERSION}"
FACE_ANALYSIS = "facestream.face.analysis"
TRACK_STARTED = "facestream.track.started"
TRACK_ENDED = "facestream.track.ended"
STREAM_ERROR = "facestream.stream.error"
# The stream id of errors about messages whose key is not a stream id: no stream can have it
# (a stream id cannot start with '.'), so a bad key never lands in a real stream's events;
# yet it is in the alphabet the schema allows in ``source`` (and, unlike '-', no command
# line takes it for an option: ``facestream tail --stream .unattributed``).
UNATTRIBUTED = ".unattributed"


def event_id(stream_id: str, track_id: str, start_pts: int | float | None, kind: str,
             profile: str) -> str:
    key = "\x1f".join([stream_id, track_id, "" if start_pts is None else str(start_pts),
                       kind, profile])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def rfc3339(epoch_s: float) -> str:
    try:
        stamp = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"time {epoch_s!r} is not a time in years 1..9999") from None
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def media_time(time_s: float) -> float:
    """``time_s`` as events carry it (to the millisecond); ValueError unless that is a finite
    number >= 0, as the schema requires (NaN and infinities are not even JSON)."""
    rounded = round(time_s, 3) if math.isfinite(time_s) else time_s
    if not math.isfinite(rounded) or rounded < 0:
        raise ValueError(f"media time {time_s!r} s: expected a finite number >= 0")
    return rounded


def envelope(kind: str, *, stream_id: str, event_id_: str, time_epoch: float,
             data: dict[str, Any], subject: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id_,
        "source": f"facestream://{stream_id}",
        "type": kind,
        "time": rfc3339(time_epoch),
        "datacontenttype": "application/json",
        "dataschema": DATASCHEMA,
    }
    if subject is not None:
        event["subject"] = subject
    event["data"] = data
    return event


def track_event(kind: str, *, stream_id: str, track_id: str, time_s: float,
                pts: int | None, profile: str, time_epoch: float) -> dict[str, Any]:
    """``facestream.track.started`` (at the first detection) or ``.ended`` (last one)."""
    return envelope(kind, stream_id=stream_id, subject=track_id, time_epoch=time_epoch,
                    event_id_=event_id(stream_id, track_id, pts, kind, profile),
                    data={"stream_id": stream_id, "track_id": track_id,
                          "time_s": media_time(time_s), "pts": pts})


def stream_error(*, stream_id: str, message: str, time_s: float, seq: int, profile: str,
                 time_epoch: float, fatal: bool) -> dict[str, Any]:
    """``seq`` numbers a stream's errors from 0: two identical failures (two reconnects
    refused alike) are two events with two ids."""
    # Lone surrogates (OS text decoded with surrogateescape) as \udcxx: events are UTF-8.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    digest = hashlib.sha256(message.encode()).hexdigest()[:8]
    return envelope(STREAM_ERROR, stream_id=stream_id, subject=None, time_epoch=time_epoch,
                    event_id_=event_id(stream_id, "", f"{time_s:.3f}:{seq}:{digest}",
                                       STREAM_ERROR, profile),
                    data={"stream_id": stream_id, "time_s": media_time(time_s),
                          "message": message, "fatal": fatal})


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("facestream").joinpath("schemas/event-v1.schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def validator():
    """A jsonschema validator for every event type."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema())
