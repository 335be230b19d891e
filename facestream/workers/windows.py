"""Per-track analysis windows: every ``window_s`` seconds of media time a track's samples
since the last window become one :class:`FaceWindow`.

Windows are laid on each track's own grid, starting at its first detection, so the same
stream always yields the same windows.  A window closes as soon as the stream's media clock
reaches its end (:meth:`Windower.advance`: the end of the last frame decoded, picked or not,
so with the chunk that holds the window's last frame), or at the latest when the track's
next sample lands past it; either way it holds the same samples, since every later frame
lies at or after the clock, hence at or after the window's end, in the next window.  A tentative track's samples are kept and go into its
first window once it is confirmed; a track that never confirms leaves nothing behind.

Face-LLaVA's video tasks may look further back than the window (``facellava_video_window_s``):
a :class:`ClipHistory`, fed the closed windows, gives each its ``clip`` from a thinned copy of
the track's recent samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facestream.types import FaceChips, FaceSample, FaceWindow
from facestream.vision.tracker import Track

# Samples a clip keeps over its span: one per slot of span / CLIP_SLOTS seconds, twice the 8
# frames Face-LLaVA's video tower takes, so that 8 picked uniformly from them fall within a
# slot of evenly spaced times, and a slot the face missed costs no repeated frame.
CLIP_SLOTS = 16


class Windower:
    """Collects samples per track and closes windows.  Not thread-safe."""

    def __init__(self, stream_id: str, *, window_s: float) -> None:
        self._stream_id = stream_id
        self._window_s = window_s
        self._open: dict[int, tuple[Track, list[FaceSample], float]] = {}

    def add(self, track: Track, sample: FaceSample, frame_size: tuple[int, int]) -> list[FaceWindow]:
        """Add a sample; returns the window it closed, if any (at most one)."""
        closed: list[FaceWindow] = []
        entry = self._open.get(track.key)
        if entry is None:
            self._open[track.key] = (track, [sample], sample.time_s)
            return closed
        _, samples, grid_start = entry
        if track.track_id is not None and sample.time_s >= grid_start + self._window_s - 1e-9:
            if samples:
                closed.append(self._make(track, samples, frame_size))
            self._open[track.key] = (track, [sample], self._grid(grid_start, sample.time_s))
        else:
            samples.append(sample)
        return closed

    def advance(self, media_s: float, frame_size: tuple[int, int]) -> list[FaceWindow]:
        """The stream's media clock reached ``media_s`` (every frame decoded from now on lies
        at or after it: ``ChunkDecoder.clock_s``): close every confirmed track's window that
        ends at or before it.  The track's grid goes on, with no samples until its next one."""
        closed: list[FaceWindow] = []
        for key, (track, samples, grid_start) in list(self._open.items()):
            if (track.track_id is None or not samples
                    or media_s < grid_start + self._window_s - 1e-9):
                continue
            closed.append(self._make(track, samples, frame_size))
            self._open[key] = (track, [], self._grid(grid_start, media_s))
        return closed

    def _grid(self, grid_start: float, time_s: float) -> float:
        """The start of the window of the track's grid that ``time_s`` falls in."""
        steps = int((time_s - grid_start + 1e-9) // self._window_s)
        return grid_start + steps * self._window_s

    def close(self, track: Track, frame_size: tuple[int, int]) -> list[FaceWindow]:
        """The track ended: its open window, if it has one and the track was confirmed."""
        entry = self._open.pop(track.key, None)
        if entry is None or track.track_id is None or not entry[1]:
            return []
        return [self._make(track, entry[1], frame_size, final=True)]

    @property
    def open_count(self) -> int:
        """Tracks with samples waiting for their window to close."""
        return sum(1 for _, samples, _ in self._open.values() if samples)

    def discard_missing(self, alive: set[int]) -> None:
        """Forget tentative tracks the tracker dropped."""
        for key in [k for k in self._open if k not in alive]:
            track = self._open[key][0]
            if track.track_id is None:
                del self._open[key]

    def _make(self, track: Track, samples: list[FaceSample], frame_size: tuple[int, int], *,
              final: bool = False) -> FaceWindow:
        assert track.track_id is not None
        return FaceWindow(self._stream_id, track.track_id, tuple(samples), frame_size, final)


class ClipHistory:
    """Each track's clip for Face-LLaVA's video tasks: its samples over the last ``span_s``
    seconds, fed the track's closed windows in order.  Not thread-safe.

    The rule, so that a clip depends only on the track's samples (not on when windows closed,
    nor on a worker restarting from a checkpoint, which carries this object): media time is
    cut into slots of ``span_s / CLIP_SLOTS`` seconds from 0; a window's clip is the last
    sample of each slot, over the samples kept from the track's earlier windows and the
    window's own, later than ``span_s`` before the window's last sample.  That clip is what
    the track keeps for its next window (at most ``CLIP_SLOTS + 1`` samples, their chips
    copied out of their frames' arrays); a track's last window takes it away.  A window
    whose clip holds none of the track's earlier samples (the track's first window) gets no
    ``clip``: its own samples, unthinned, are what the video tasks see, as with no history."""

    def __init__(self, span_s: float) -> None:
        self._span_s = span_s
        self._slot_s = span_s / CLIP_SLOTS
        self._kept: dict[str, tuple[FaceSample, ...]] = {}

    def attach(self, window: FaceWindow) -> FaceWindow:
        """``window`` with its clip; the clip is kept for the track's next window."""
        earlier = (self._kept.pop(window.track_id, ()) if window.final
                   else self._kept.get(window.track_id, ()))
        slots: dict[int, FaceSample] = {}
        for sample in (*earlier, *window.samples):       # time order: slots only grow
            slots[int((sample.time_s + 1e-9) // self._slot_s)] = sample
        start = window.end_s - self._span_s + 1e-6
        clip = tuple(s for s in slots.values() if s.time_s > start)
        if not window.final:
            self._kept[window.track_id] = tuple(_own(s) for s in clip)
        reaches_back = clip[0].time_s < window.start_s
        return dataclasses.replace(window, clip=clip) if reaches_back else window

    def forget(self, track_id: str) -> None:
        """The track ended with no window left open."""
        self._kept.pop(track_id, None)

    @property
    def kept(self) -> int:
        """Samples held for the tracks' next windows."""
        return sum(len(clip) for clip in self._kept.values())


def _own(sample: FaceSample) -> FaceSample:
    """``sample`` with chips of its own: a kept sample must not hold its frame's chips of
    every face alive (``FaceChips.take`` gives views of them)."""
    chips = sample.chips
    arrays = (chips.expression, chips.age, chips.gender, chips.square, chips.square_landmarks)
    if not any(a is not None and isinstance(a.base, np.ndarray) and a.base.size > a.size
               for a in arrays):
        return sample
    return dataclasses.replace(sample, chips=FaceChips(
        *(None if a is None else a.copy() for a in arrays)))
