"""Event ids and the JSON Schema."""

from __future__ import annotations

import pytest

from facestream import events


def test_event_ids_are_deterministic_and_distinct():
    a = events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "compact")
    assert a == events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "compact")
    others = {events.event_id("cam1", "t1", 3000, events.TRACK_STARTED, "compact"),
              events.event_id("cam1", "t2", 3000, events.FACE_ANALYSIS, "compact"),
              events.event_id("cam1", "t1", 3001, events.FACE_ANALYSIS, "compact"),
              events.event_id("cam1", "t1", 3000, events.FACE_ANALYSIS, "facellava")}
    assert a not in others and len(others) == 4


def _track_event():
    return events.track_event(events.TRACK_STARTED, stream_id="cam1", track_id="t1",
                              time_s=1.5, pts=1500, profile="compact", time_epoch=0.0)


@pytest.mark.parametrize("mutate", [
    lambda e: e.pop("id"),
    lambda e: e.update(specversion="0.3"),
    lambda e: e.update(time="yesterday"),
    lambda e: e.update(type="facestream.face.other"),
    lambda e: e["data"].pop("track_id"),
    lambda e: e.update(source="camera://cam1"),
])
def test_schema_rejects_broken_events(mutate):
    event = _track_event()
    assert events.validator().is_valid(event)
    mutate(event)
    assert not events.validator().is_valid(event)
