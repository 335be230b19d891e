"""Per-track analysis windows: every ``window_s`` seconds of media time a track's samples
since the last window become one :class:`FaceWindow`.

Windows are laid on each track's own grid, starting at its first detection, so the same
stream always yields the same windows.  A window closes as soon as the stream's media clock
passes its end (:meth:`Windower.advance`, from the last frame decoded, picked or not), or at
the latest when the track's next sample lands past it; either way it holds the same samples,
since every later frame lies after its end.  A tentative track's samples are kept and go into its
first window once it is confirmed; a track that never confirms leaves nothing behind.
"""

from __future__ import annotations

from facestream.types import FaceSample, FaceWindow
from facestream.vision.tracker import Track


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
        """The stream's media clock reached ``media_s`` (a frame at that time was decoded):
        close every confirmed track's window that ends at or before it.  The track's grid
        goes on, with no samples until its next one."""
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
