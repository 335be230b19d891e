"""The tracker on synthetic boxes: confirmation, misses, occlusion."""

from __future__ import annotations

import numpy as np
import pytest

from facestream.vision.tracker import Tracker, TrackState, iou_matrix


def _box(cx, cy, side=60.0):
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


def test_tentative_track_needs_confirmation_and_noise_leaves_no_id():
    tracker = Tracker(confirm_hits=2, max_lost_s=1.0)
    first = tracker.update(np.stack([_box(100, 100)]), 0.0)
    assert not first.started and first.matches[0][0].state is TrackState.TENTATIVE
    tracker.update(np.zeros((0, 4), np.float32), 0.1)          # vanished: it was noise
    tracker.update(np.stack([_box(400, 300)]), 0.2)
    update = tracker.update(np.stack([_box(402, 301)]), 0.3)
    assert [t.track_id for t in update.started] == ["t1"]


def test_track_survives_a_short_miss_and_ends_after_a_long_one():
    tracker = Tracker(confirm_hits=2, max_lost_s=0.5)
    for i in range(3):
        tracker.update(np.stack([_box(100 + 10 * i, 100)]), i * 0.1)
    tracker.update(np.zeros((0, 4), np.float32), 0.3)
    tracker.update(np.zeros((0, 4), np.float32), 0.4)
    update = tracker.update(np.stack([_box(150, 100)]), 0.5)    # where motion predicts
    assert update.matches[0][0].track_id == "t1" and not update.started
    tracker.update(np.zeros((0, 4), np.float32), 0.8)
    ended = tracker.update(np.zeros((0, 4), np.float32), 1.1).ended
    assert [t.track_id for t in ended] == ["t1"]


def test_crossing_tracks_keep_identity_through_occlusion():
    tracker = Tracker(confirm_hits=2, max_lost_s=1.0)
    ids_at_start, ids_at_end = {}, {}
    for i in range(41):
        t = i * 0.1
        a, b = (50 + 10 * i, 100), (450 - 10 * i, 110)
        boxes = [_box(*a), _box(*b)]
        if 18 <= i <= 22:                  # b hides a while they overlap
            boxes = [_box(*b)]
        update = tracker.update(np.stack(boxes), t)
        for track, j in update.matches:
            cx = (boxes[j][0] + boxes[j][2]) / 2
            owner = "a" if len(boxes) == 2 and j == 0 else "b"
            if i == 5:
                ids_at_start[owner] = track.track_id
            if i == 40:
                ids_at_end[owner] = track.track_id
            assert cx == pytest.approx(a[0] if owner == "a" else b[0], abs=31)
    assert ids_at_start == ids_at_end and len(set(ids_at_start.values())) == 2


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    assert iou_matrix(a, b) == pytest.approx(np.array([[1.0, 1 / 3, 0.0]]))
