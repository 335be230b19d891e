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


def _track_windows(times, *, clock_at=()):
    """Windows of one face seen at ``times`` (10 fps grid), with the media clock advanced
    to each of ``clock_at`` (time, after which sample index) too; returns [(closed after
    sample i, start, n samples)]."""
    tracker = Tracker(confirm_hits=2)
    windower = Windower("s", window_s=1.0)
    ticks = dict(clock_at)
    closed = []
    for i, t in enumerate(times):
        track = tracker.update(np.stack([_box(100, 100)]), t).matches[0][0]
        closed += [(i, w) for w in windower.add(track, _sample(t), (640, 360))]
        if i in ticks:
            closed += [(i, w) for w in windower.advance(ticks[i], (640, 360))]
    closed += [(len(times), w) for w in windower.close(tracker.finish()[0], (640, 360))]
    return [(i, round(w.start_s, 2), len(w.samples), w.final) for i, w in closed]


def test_a_window_closes_when_the_media_clock_passes_its_end():
    times = [0.3 + i * 0.1 for i in range(12)]           # 0.3 … 1.4 s
    # Samples every 0.1 s; a chunk's last frame at 1.32 s was decoded after sample 9
    # (1.2 s): the window [0.3, 1.3) closes then, not at the next sample (1.3 s).
    early = _track_windows(times, clock_at=[(9, 1.32)])
    assert early == [(9, 0.3, 10, False), (12, 1.3, 2, True)]
    late = _track_windows(times)
    assert late == [(10, 0.3, 10, False), (12, 1.3, 2, True)]
    # The chunk ends with the window's last frame (1.2 s, lasting 0.1 s): the clock is its
    # end, 1.3 s, which is the window's end, so the window closes with that chunk.
    at_end = _track_windows(times, clock_at=[(9, times[9] + 0.1)])
    assert at_end == early


@pytest.mark.parametrize("gap_choices", [(0.1, 0.1, 0.1, 0.7, 1.6, 2.3),
                                         (0.033, 0.1, 0.27, 0.7, 1.6, 2.3)])  # off the 0.1 s grid
def test_the_media_clock_never_closes_an_empty_window_nor_changes_which_samples_go_where(
        gap_choices):
    rng = np.random.default_rng(7)
    for _ in range(200):
        gaps = rng.choice(gap_choices, size=30)
        times = list(np.round(0.2 + np.cumsum(gaps), 6))
        clock_at = [(i, times[i] + float(rng.uniform(0, 2.5))) for i in range(len(times) - 1)
                    if rng.random() < 0.4]
        # A clock never passes a frame not yet decoded: at most the next frame's time.  Half
        # the time it is exactly that: the end of frame i, its time plus its duration
        # (ChunkDecoder.clock_s), when no frame lies between (often a window's end here).
        clock_at = [(i, times[i + 1] if rng.random() < 0.5 else min(t, times[i + 1] - 1e-3))
                    for i, t in clock_at]
        with_clock = _track_windows(times, clock_at=clock_at)
        without = _track_windows(times)
        assert [w[1:3] for w in with_clock] == [w[1:3] for w in without]
        assert all(n > 0 for _, _, n, _ in with_clock)
        assert all(a[0] <= b[0] for a, b in zip(with_clock, without))   # never later
