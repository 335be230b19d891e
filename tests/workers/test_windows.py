"""Per-track analysis windows."""

from __future__ import annotations

import numpy as np
import pytest

from facestream.types import FaceChips, FaceSample
from facestream.vision.tracker import Tracker
from facestream.workers.windows import Windower


def _box(cx, cy, side=60.0):
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


ONE_FACE = FaceChips(np.zeros((1, 64, 64), np.uint8), np.zeros((1, 64, 64, 3), np.uint8),
                     np.zeros((1, 32, 32, 3), np.uint8))


def _sample(t):
    return FaceSample(t, int(t * 1000), 0.0, _box(100, 100), np.zeros((68, 2)),
                      np.zeros((468, 3)), ONE_FACE)


def test_windows_follow_each_tracks_own_grid():
    tracker = Tracker(confirm_hits=2)
    windower = Windower("s", window_s=1.0)
    closed = []
    for i in range(25):                         # 2.5 s at 10 fps
        t = 0.3 + i * 0.1
        track = tracker.update(np.stack([_box(100, 100)]), t).matches[0][0]
        closed += windower.add(track, _sample(t), (640, 360))
    closed += windower.close(tracker.finish()[0], (640, 360))
    assert [len(w.samples) for w in closed] == [10, 10, 5]
    assert [round(w.start_s, 2) for w in closed] == [0.3, 1.3, 2.3]
    assert closed[0].samples[0].time_s == pytest.approx(0.3), "tentative samples kept"
