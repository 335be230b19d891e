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
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from facestream.types import EncoderOutput, FaceWindow

SPEC_VERSION = "1.0"
SCHEMA_VERSION = "1"
DATASCHEMA = f"facestream://schemas/event/v{SCHEMA_VERSION}"
FACE_ANALYSIS = "facestream.face.analysis"
FACE_DESCRIPTION = "facestream.face.description"
TRACK_STARTED = "facestream.track.started"
TRACK_ENDED = "facestream.track.ended"
STREAM_ERROR = "facestream.stream.error"
STREAM_STATUS = "facestream.stream.status"
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


def window_data(window: FaceWindow) -> dict[str, Any]:
    """The ``window`` object of a window's events (``clip_start_s`` where Face-LLaVA's
    video tasks looked back past the window: the time of its clip's first sample)."""
    data = {"start_s": round(window.start_s, 3), "end_s": round(window.end_s, 3),
            "start_pts": window.start_pts, "end_pts": window.end_pts,
            "frames": len(window.samples)}
    if window.clip:
        data["clip_start_s"] = round(window.clip[0].time_s, 3)
    return data


@dataclass(frozen=True)
class Described:
    """The language stage's latest answer for a track, as a window's event carries it."""

    description: str | None
    answered_s: float                  # start of the window the answer was made for
    reused: bool                       # an earlier window's answer, not this window's
    fields: Mapping[str, Any] = field(default_factory=dict)   # event data it sets


def _latencies(window: FaceWindow) -> dict[str, float]:
    """``latency_ms``: from the window's last frame leaving the decoder to now (the event
    being built); ``capture_latency_ms``, where the source's capture time is known (chunks
    with ``fs-capture``): from the source producing that frame to now."""
    now, last = time.time(), window.samples[-1]
    out = {"latency_ms": round(max(0.0, now - last.arrival) * 1000, 1)}
    if last.captured is not None:
        out["capture_latency_ms"] = round(max(0.0, now - last.captured) * 1000, 1)
    return out


def face_analysis(window: FaceWindow, out: EncoderOutput, *, head_pose: dict[str, Any],
                  profile: str, components: Mapping[str, str], trigger: str | None,
                  time_epoch: float, answer: Described | None,
                  follows: bool = False) -> dict[str, Any]:
    """``facestream.face.analysis`` for one window: the encoder's results, then the answer's
    fields over them (``answer`` None: no language stage, or none has answered yet).
    ``follows``: this window's own description is being written and comes as a
    :func:`face_description` event (``answer`` is then None)."""
    data = {
        "stream_id": window.stream_id,
        "track_id": window.track_id,
        "window": window_data(window),
        "bbox": [round(float(v), 1) for v in window.median_box()],
        "expression": {"label": out.expression_label, "scores": out.expression},
        "action_units": {**out.action_units, "method": "geometric"},
        "head_pose": head_pose,
        "attributes": {
            "gender": {"label": out.gender, "score": out.gender_score},
            "age": {"years": out.age_years, "low": out.age_low, "high": out.age_high},
        },
        "deepfake": None,
        "description": answer.description if answer else None,
        "description_reused": bool(answer and answer.reused),
        "description_age_s": round(window.start_s - answer.answered_s, 3) if answer else None,
        "description_trigger": trigger,
        "description_from_s": answer.answered_s if answer else None,
        "description_follows": follows,
        "model": {"profile": profile, "components": components},
        **_latencies(window),
    }
    if answer and answer.fields:
        _apply(data, answer.fields)
    start = window.start_pts if window.start_pts is not None else f"{window.start_s:.3f}"
    return envelope(FACE_ANALYSIS, stream_id=window.stream_id, subject=window.track_id,
                    event_id_=event_id(window.stream_id, window.track_id, start, FACE_ANALYSIS,
                                       profile),
                    time_epoch=time_epoch, data=data)


def face_description(window: FaceWindow, *, description: str, trigger: str | None,
                     profile: str, components: Mapping[str, str], time_epoch: float,
                     generation_ms: float) -> dict[str, Any]:
    """``facestream.face.description``: the sentence written for one window, published when
    it is ready, after that window's ``facestream.face.analysis`` (same stream, track and
    ``window``; the analysis event has ``description_follows: true``)."""
    data = {
        "stream_id": window.stream_id,
        "track_id": window.track_id,
        "window": window_data(window),
        "description": description,
        "description_trigger": trigger,
        "model": {"profile": profile, "components": dict(components)},
        "generation_ms": round(max(0.0, generation_ms), 1),
        **_latencies(window),
    }
    start = window.start_pts if window.start_pts is not None else f"{window.start_s:.3f}"
    return envelope(FACE_DESCRIPTION, stream_id=window.stream_id, subject=window.track_id,
                    event_id_=event_id(window.stream_id, window.track_id, start,
                                       FACE_DESCRIPTION, profile),
                    time_epoch=time_epoch, data=data)


def _apply(data: dict[str, Any], fields: Mapping[str, Any]) -> None:
    """Put an answer's fields into event data: ``expression.label`` replaces the cheap head's
    label (its scores stay: they are the cheap signal), ``attributes`` entries replace theirs
    one by one, any other field is replaced whole."""
    for key, value in fields.items():
        if key == "expression":
            data["expression"] = {**data["expression"], "label": value["label"]}
        elif key == "attributes":
            data["attributes"] = {**data["attributes"], **value}
        else:
            data[key] = value


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


def stream_status(*, stream_id: str, state: str, previous: str | None, reason: str,
                  attempt: int, seq: int, url: str, fps: float, profile: str, publisher: str,
                  time_epoch: float) -> dict[str, Any]:
    """``facestream.stream.status``: the camera supervisor saw a stream change state (or, in
    ``reconnecting``, try again).  The id hashes the stream, the publisher (host:pid), the
    change's number under it and its time to the millisecond: a restarted supervisor never
    repeats an id, and the same change written twice keeps its id."""
    reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
    return envelope(STREAM_STATUS, stream_id=stream_id, subject=None, time_epoch=time_epoch,
                    event_id_=event_id(stream_id, publisher, f"{seq}:{time_epoch:.3f}",
                                       STREAM_STATUS, state),
                    data={"stream_id": stream_id, "state": state, "previous": previous,
                          "reason": reason[:300], "attempt": attempt, "url": url,
                          "fps": fps, "profile": profile, "publisher": publisher})


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("facestream").joinpath("schemas/event-v1.schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def validator():
    """A jsonschema validator for every event type."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema())
