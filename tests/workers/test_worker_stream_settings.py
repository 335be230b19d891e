"""What a worker takes from a stream's chunks besides video (the camera supervisor stamps
them, tests/integration/test_supervisor.py): the stream's registered analysis rate
(``fs-fps``) and profile (``fs-profile``); and what it adds to the stream's status and
snapshot.  In-memory transports (tests/helpers.py), real clip, real models."""

from __future__ import annotations

from dataclasses import replace

import av
import cv2
import numpy as np
import pytest

from facestream import events
from facestream.ingest.chunks import EndOfStream, gop_chunks
from tests.helpers import MemorySink, one_poll_worker

TOPIC = "unit.video"


class SnapshotSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.snapshots: list[tuple[str, bytes, int]] = []

    def snapshot(self, stream_id: str, jpeg: bytes, ttl_s: int) -> bool:
        self.snapshots.append((stream_id, jpeg, ttl_s))
        return True


@pytest.fixture(scope="module")
def clip_chunks(sample):
    with av.open(str(sample("face_noface.mov"))) as container:
        return list(gop_chunks(container, stream_id="cam"))


def _run(chunks, models, sink=None, **settings):
    """The chunks of stream "cam" and its end through a worker at 10 fps; returns (report,
    events, dead letters, sink)."""
    report, written, dlq, _, sink = one_poll_worker(
        [*chunks, EndOfStream("cam", chunks[-1].seq)], models, sink=sink, topic=TOPIC,
        fps=10.0, **settings)
    return report, written, dlq, sink


def _windows(written):
    return [e["data"]["window"] for e in written if e["type"] == events.FACE_ANALYSIS]


def test_the_stream_is_analysed_at_its_registered_fps(clip_chunks, models):
    report, written, _, _ = _run([replace(c, fps=2.0) for c in clip_chunks], models)
    windows = _windows(written)
    assert windows and max(w["frames"] for w in windows) == 2
    for w in windows:
        if w["frames"] == 2:
            assert w["end_s"] - w["start_s"] == pytest.approx(0.5, abs=0.02)
    # Without fs-fps the worker's own 10 fps holds: the same clip gives fuller windows.
    _, plain, _, _ = _run(clip_chunks, models)
    assert max(w["frames"] for w in _windows(plain)) >= 8
    assert report.frames < sum(1 for _ in clip_chunks) * 30     # sampled, not every frame


def test_chunks_of_another_profile_are_dead_lettered_with_an_error_event(clip_chunks, models):
    report, written, dlq, _ = _run([replace(c, profile="facellava") for c in clip_chunks[:2]],
                                   models)
    reasons = [reason for _, reason in dlq.sent]
    assert len(reasons) == 2 and report.chunks == 0
    assert reasons[0] == ("stream cam is registered for profile facellava; this worker runs "
                          "compact (publish it to unit.video.facellava, which workers of "
                          "profile facellava read)")
    errors = [e["data"]["message"] for e in written if e["type"] == events.STREAM_ERROR]
    assert errors == reasons
    # the chunks of its own profile are analysed as usual
    report, _, dlq, _ = _run([replace(c, profile="compact") for c in clip_chunks[:2]], models)
    assert not dlq.sent and report.chunks == 2


def test_the_worker_writes_its_status_fields_and_an_annotated_snapshot(clip_chunks, models,
                                                                       monkeypatch):
    from facestream.workers import worker as worker_module

    drawn = []

    def spy(image, faces):
        drawn.append([label for _, _, label in faces])
        return worker_module.draw.__wrapped__(image, faces)

    spy.__wrapped__ = worker_module.draw
    monkeypatch.setattr(worker_module, "draw", spy)
    sink = SnapshotSink()
    _, written, _, _ = _run(clip_chunks, models, sink=sink, snapshot_interval_s=0.001)
    merged: dict = {}
    for status in sink.status:
        merged.update(status.get("cam", {}))
    assert merged["worker_state"] == "ended" and merged["worker"]
    assert {"events_per_s", "faces", "worker_at"} <= set(merged)
    assert "state" not in merged and "last_error" not in merged    # the supervisor's fields
    assert sink.snapshots and all(sid == "cam" and ttl == 300 for sid, _, ttl in sink.snapshots)
    image = cv2.imdecode(np.frombuffer(sink.snapshots[0][1], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (540, 960, 3)
    # Each snapshot is drawn once; after the track's first analysis its label says the
    # track id, the expression, the gender's initial and the age (as --annotate does).
    assert len(drawn) == len(sink.snapshots)
    analysed = [e["data"] for e in written if e["type"] == events.FACE_ANALYSIS]
    first = analysed[0]
    label = (f"{first['track_id']} {first['expression']['label']} "
             f"{first['attributes']['gender']['label'][0].upper()}")
    assert any(any(text.startswith(label) for text in labels) for labels in drawn), drawn


def test_snapshots_are_off_with_interval_0(clip_chunks, models):
    sink = SnapshotSink()
    _run(clip_chunks[:2], models, sink=sink, snapshot_interval_s=0)
    assert sink.snapshots == []
