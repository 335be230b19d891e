"""Face-LLaVA's video clips (``facellava_video_window_s``): each closed window of a track
carries its last seconds of samples, thinned, from a history the stream's state keeps (and
checkpoints) only when the facellava profile asks a video task."""

from __future__ import annotations

import numpy as np
import pytest

from facestream import events
from facestream.config import Settings
from facestream.types import DecodedFrame, FaceChips, FaceDetections
from facestream.workers import checkpoint
from facestream.workers.pipeline import StreamState
from facestream.workers.windows import CLIP_SLOTS

FPS = 10.0
SPAN = 3.0
IMAGE = np.zeros((360, 640, 3), np.uint8)


def _settings(**overrides) -> Settings:
    return Settings.load({"profile": "facellava", "facellava_checkpoint": "unused",
                          "facellava_video_window_s": SPAN, **overrides}, environ={})


def _faces(t: float, n: int = 1) -> FaceDetections:
    """``n`` faces side by side, at fixed places; their Face-LLaVA crops are filled with a
    value of the time, so a crop tells which frame it came from."""
    level = int(round(t * FPS)) % 256
    chips = FaceChips(np.zeros((n, 64, 64), np.uint8), np.zeros((n, 64, 64, 3), np.uint8),
                      np.zeros((n, 32, 32, 3), np.uint8),
                      np.full((n, 256, 256, 3), level, np.uint8),
                      np.full((n, 136), level / 256, np.float32))
    boxes = np.array([[100 + 200 * i, 100, 160 + 200 * i, 160] for i in range(n)], np.float32)
    return FaceDetections(boxes, np.ones(n, np.float32), np.zeros((n, 468, 3), np.float32),
                          np.zeros((n, 68, 2), np.float32), chips)


def _frames(times, faces: int = 1, *, missed=lambda t: False):
    """Frames at ``times`` with ``faces`` faces, none in those ``missed``."""
    return [(DecodedFrame("s", i, int(round(t * 1000)), t, IMAGE, 0.0),
             FaceDetections.empty() if missed(t) else _faces(t, faces))
            for i, t in enumerate(times)]


def _windows(state: StreamState, frames, *, clock: bool = False, finish: bool = True):
    """The windows ``state`` closes over ``frames``; ``clock``: the media clock is advanced
    to every frame too (a window closes once it passes the window's end, not only at the
    track's next sample)."""
    windows = []
    for frame, faces in frames:
        windows += state.observe(frame, faces)[1]
        if clock:
            windows += state.advance(frame.time_s)
        if state.clips is not None:         # at most a clip per live track
            assert state.clips.kept <= (CLIP_SLOTS + 1) * len(state.tracker.active)
    if finish:
        windows += state.finish()[0]
    return windows


def _clip(window) -> list[tuple[float, int]]:
    """The clip's (time, crop level) pairs."""
    return [(round(s.time_s, 6), int(s.chips.square[0, 0, 0, 0])) for s in window.clip]


TIMES = [round(i / FPS, 6) for i in range(65)]       # 6.5 s of one face at 10 fps


def test_a_window_clip_holds_the_tracks_last_video_window_seconds():
    state = StreamState("s", _settings())
    windows = _windows(state, _frames(TIMES))
    assert [len(w.samples) for w in windows] == [10] * 6 + [5]
    assert windows[0].clip == ()                  # a track's first window: its own samples
    slot = SPAN / CLIP_SLOTS
    for w in windows[1:]:
        times = [s.time_s for s in w.clip]
        assert times[-1] == w.end_s and times == sorted(times)
        # from the span's start (or the track's), give or take a slot
        assert w.end_s - SPAN < times[0] <= max(w.end_s - SPAN, 0.0) + slot + 1 / FPS
        assert times[0] < w.start_s                      # reaches back past the window
        assert len(times) <= CLIP_SLOTS + 1
        assert max(np.diff(times)) <= slot + 1 / FPS     # evenly thinned: no hole
        # crops are the frames' own
        assert [level for _, level in _clip(w)] == [round(t * FPS) for t in times]
        # events say where the clip starts
        assert events.window_data(w)["clip_start_s"] == round(times[0], 3)
    assert "clip_start_s" not in events.window_data(windows[0])
    # 5.0 … 5.9 s: after 2.9 s, the last sample of each slot of 3 / 16 s (3.0 and 3.1 s
    # share one), up to 5.9 s
    assert [t for t, _ in _clip(windows[5])] == [3.1, 3.3, 3.5, 3.7, 3.9, 4.1, 4.3, 4.4, 4.6,
                                                  4.8, 5.0, 5.2, 5.4, 5.6, 5.8, 5.9]
    assert state.clips.kept == 0, "ended tracks leave no history"


def test_clips_do_not_depend_on_when_windows_close():
    """The media clock closing windows earlier (other chunk boundaries) gives the same
    windows with the same clips.  The face is missed from 1.6 to 2.3 s and 3.5 to 4.2 s:
    the clock closes its windows [1, 2) and [3, 4) before its next sample does."""
    frames = _frames(TIMES, missed=lambda t: 1.55 < t < 2.35 or 3.45 < t < 4.25)
    state, by_clock = StreamState("s", _settings()), []
    for frame, faces in frames:
        state.observe(frame, faces)
        by_clock += state.advance(frame.time_s)
    assert [w.start_s for w in by_clock] == [1.0, 3.0]
    early = _windows(StreamState("s", _settings()), frames, clock=True)
    late = _windows(StreamState("s", _settings()), frames)
    assert [w.end_s for w in early] == [w.end_s for w in late]
    assert all(w.clip for w in early[1:])
    assert [_clip(w) for w in early] == [_clip(w) for w in late]


@pytest.mark.parametrize("cut", [13, 25, 38])
def test_a_restart_from_checkpoint_gives_the_same_clips(cut):
    frames = _frames(TIMES)
    state = StreamState("s", _settings())
    before = _windows(state, frames[:cut], finish=False)
    blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, "s", 7, state))
    restored = checkpoint.loads(blob).stream
    assert restored.clips.kept == state.clips.kept > 0
    went_on = _windows(state, frames[cut:])
    resumed = _windows(restored, frames[cut:])
    assert [_clip(w) for w in resumed] == [_clip(w) for w in went_on]
    whole = _windows(StreamState("s", _settings()), frames)
    assert [_clip(w) for w in before + resumed] == [_clip(w) for w in whole]


def test_kept_samples_hold_only_their_own_chips():
    """A kept sample's crops are its face's, not a view of its frame's crops of every face."""
    state = StreamState("s", _settings())
    windows = _windows(state, _frames(TIMES[:35], faces=3), finish=False)
    assert len({w.track_id for w in windows}) == 3
    kept = [s for w in windows for s in w.clip if s.time_s < w.start_s]   # earlier windows'
    assert len(kept) >= 30
    for sample in kept:
        chips = sample.chips
        for array in (chips.expression, chips.age, chips.gender, chips.square,
                      chips.square_landmarks):
            held = array.base if isinstance(array.base, np.ndarray) else array
            assert held.nbytes == array.nbytes


@pytest.mark.parametrize("settings", [
    Settings.load(environ={}),                                    # compact
    _settings(facellava_video_window_s=0),
    _settings(facellava_video_window_s=1.0),                      # = window_s
    _settings(facellava_tasks="age,attributes,action_units"),     # no video task
], ids=["compact", "zero", "window-long", "image-tasks"])
def test_no_history_is_kept_unless_a_video_task_reaches_back(settings):
    state = StreamState("s", settings)
    assert state.clips is None
    windows = _windows(state, _frames(TIMES))
    assert len(windows) == 7 and all(w.clip == () for w in windows)
