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


def _random_boxes(rng, n, dtype=np.float32):
    centre = rng.uniform(0, 600, (n, 2))
    size = rng.uniform(15, 150, (n, 2))
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(dtype)


def _textbook_kalman(z, steps):
    """The 6-state filter with its matrices, as a reference: x, P after ``steps``, a list of
    ("predict", dt) and ("update", z)."""
    x = np.concatenate([z, np.zeros(3)])
    side = max(z[2], 1.0)
    P = np.diag([0.1 * side] * 3 + [side] * 3) ** 2
    H = np.hstack([np.eye(3), np.zeros((3, 3))])
    for kind, value in steps:
        if kind == "predict" and value > 0:
            dt, side = value, max(x[2], 1.0)
            q = (0.5 * side * dt) ** 2
            F = np.eye(6)
            F[:3, 3:] = dt * np.eye(3)
            x, P = F @ x, F @ P @ F.T + np.diag([q * dt, q * dt, q * dt / 4, q, q, q / 4])
        elif kind == "update":
            R = (0.05 * max(x[2], 1.0)) ** 2 * np.eye(3)
            K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
            x, P = x + K @ (np.asarray(value) - H @ x), (np.eye(6) - K @ H) @ P
    return x, P


def test_kalman_is_the_textbook_six_state_filter():
    from facestream.vision.tracker import _Kalman

    rng = np.random.default_rng(1)
    for _ in range(20):
        z = rng.uniform(20, 400, 3)
        steps = []
        for _ in range(30):
            steps.append(("predict", float(rng.choice([0.0, 0.05, 0.1, 0.4]))))
            if rng.random() < 0.8:
                steps.append(("update", tuple(z + rng.normal(0, 5, 3))))
        kalman = _Kalman(tuple(z))
        for kind, value in steps:
            kalman.predict(value) if kind == "predict" else kalman.update(value)
        x, P = _textbook_kalman(z, steps)
        np.testing.assert_allclose(kalman.x, x, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(kalman.P, P, rtol=1e-9, atol=1e-9)


def test_float32_detection_geometry_is_numpys():
    """The float32 fast path of the detection geometry against the same formulas on
    NumPy's float32 scalars, odd boxes included (thin, tiny, inverted)."""
    from facestream.vision.tracker import _detection_f32, _detection_scalars, detections

    rng = np.random.default_rng(2)
    boxes = np.concatenate([
        _random_boxes(rng, 500),
        np.array([[10, 10, 10 + 1e-7, 50], [10, 10, 10.5, 10.5], [10, 10, 11, 11],
                  [50, 50, 40, 80], [50, 50, 80, 40], [0, 0, 0, 0]], np.float32)])
    fast = [_detection_f32(*box) for box in boxes.tolist()]
    with np.errstate(invalid="ignore"):
        reference = [_detection_scalars(*box) for box in boxes]
    np.testing.assert_array_equal(np.array(fast), np.array(reference))
    assert detections(boxes) == fast
    with np.errstate(invalid="ignore"):
        assert detections(boxes.astype(np.float64))[0] == _detection_scalars(
            *boxes.astype(np.float64)[0])


def test_few_pair_costs_are_the_array_costs():
    """Association costs pair by pair in Python (few pairs) and as arrays (many): the same
    values, gated pairs and tentative tracks included."""
    from facestream.vision.tracker import association_costs, association_costs_few, detections

    rng = np.random.default_rng(3)
    for _ in range(200):
        n, m = rng.integers(1, 6, 2)
        predicted = _random_boxes(rng, n, np.float64)
        boxes = _random_boxes(rng, m)
        if rng.random() < 0.5:                    # detections near the predictions
            near = predicted[rng.integers(0, n, m)] + rng.normal(0, 8, (m, 4))
            boxes = near.astype(np.float32)
        tentative = rng.random(n) < 0.5
        min_iou = float(rng.uniform(0.05, 0.3))
        with np.errstate(invalid="ignore"):          # noise may invert a small box
            few = association_costs_few([tuple(p) for p in predicted.tolist()],
                                        tentative.tolist(), detections(boxes), min_iou)
            many = association_costs(predicted, tentative, boxes, min_iou)
        np.testing.assert_array_equal(np.array(few), many)


def test_single_row_or_column_assignment_is_scipys():
    from scipy.optimize import linear_sum_assignment

    from facestream.vision.tracker import GATED, _assign

    rng = np.random.default_rng(4)
    for _ in range(500):
        n, m = rng.integers(1, 5, 2)
        if rng.random() < 0.4:
            n = 1
        elif rng.random() < 0.6:
            m = 1
        cost = rng.choice([0.4, 0.7, 0.7, 1.3, GATED], (n, m))     # ties on purpose
        rows, cols = linear_sum_assignment(cost)
        assert _assign(cost.tolist()) == list(zip(rows.tolist(), cols.tolist()))


def test_many_pairs_take_the_array_path_with_the_same_tracks():
    """A crowd (more pairs than FEW_PAIRS) runs the array costs and scipy's assignment; the
    tracks are the ones the few-pairs path gives, frame after frame."""
    from facestream.vision import tracker as tracking

    rng = np.random.default_rng(5)
    centres = rng.uniform(50, 1800, (6, 2))
    results = []
    for few_pairs in (0, 10_000):                   # every frame array / every frame Python
        tracking_few, tracking.FEW_PAIRS = tracking.FEW_PAIRS, few_pairs
        try:
            tracker = Tracker(confirm_hits=2, max_lost_s=1.0)
            ids = []
            for i in range(30):
                shown = [c + (5 * i, 2 * i) for k, c in enumerate(centres) if (i + k) % 7]
                update = tracker.update(np.stack([_box(x, y) for x, y in shown]), i * 0.1)
                ids.append([(t.track_id, t.state.value, j) for t, j in update.matches])
            results.append(ids)
        finally:
            tracking.FEW_PAIRS = tracking_few
    assert results[0] == results[1]
    assert {tid for frame in results[0] for tid, _, _ in frame} >= {f"t{k}" for k in range(1, 7)}
