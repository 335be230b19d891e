"""Multi-face tracking with stable ids: constant-velocity Kalman prediction + IoU/motion
association (Hungarian), and a tentative → confirmed → lost → ended lifecycle.

Time is media seconds, so a stream sampled at any rate (or with gaps) predicts correctly.
A track gets its id when it is confirmed, so short-lived false detections never consume ids
and the ids of a stream are reproducible run to run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


class TrackState(enum.Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    LOST = "lost"
    ENDED = "ended"


class _Kalman:
    """State [cx, cy, side, vx, vy, vside]; measurement [cx, cy, side]; units pixels, seconds.

    The textbook matrices are sparse: F = [[I, dt·I], [0, I]], H = [I, 0], Q and R diagonal.
    The products are written out by 3×3 blocks: the same results up to rounding, without
    building and multiplying 6×6 matrices twice a frame."""

    _DIAG = (np.arange(6), np.arange(6))
    _DIAG3 = (np.arange(3), np.arange(3))

    def __init__(self, z: np.ndarray) -> None:
        self.x = np.concatenate([z, np.zeros(3)])
        side = max(z[2], 1.0)
        self.P = np.diag([0.1 * side, 0.1 * side, 0.1 * side, side, side, side]) ** 2

    def predict(self, dt: float) -> np.ndarray:
        if dt > 0:
            side = max(self.x[2], 1.0)
            q = (0.5 * side * dt) ** 2          # velocity uncertainty grows with face size
            x = self.x.copy()
            x[:3] += dt * x[3:]                 # F x
            P = self.P.copy()
            P[:3] += dt * P[3:]                 # F P
            P[:, :3] += dt * P[:, 3:]           # (F P) Fᵀ
            P[self._DIAG] += (q * dt, q * dt, q * dt * 0.25, q, q, q * 0.25)     # + Q
            self.x, self.P = x, P
        return self.x[:3]

    def update(self, z: np.ndarray) -> None:
        side = max(self.x[2], 1.0)
        S = self.P[:3, :3].copy()               # H P Hᵀ + R
        S[self._DIAG3] += (0.05 * side) ** 2
        K = self.P[:, :3] @ np.linalg.inv(S)    # P Hᵀ S⁻¹
        self.x = self.x + K @ (z - self.x[:3])
        self.P = self.P - K @ self.P[:3]        # (I - K H) P


def _measure(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2,
                     np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0))])


def _box(z: np.ndarray, aspect: float) -> np.ndarray:
    w = z[2] / np.sqrt(aspect)
    h = z[2] * np.sqrt(aspect)
    return np.array([z[0] - w / 2, z[1] - h / 2, z[0] + w / 2, z[1] + h / 2])


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] -> [N, M]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass(eq=False)
class Track:
    """One face over time.  Mutated only by :class:`Tracker`; read it, do not write it."""

    key: int                         # internal, unique per tracker
    first_time_s: float
    last_time_s: float
    box: np.ndarray                  # last measured box [4]
    aspect: float                    # height / width of the last box
    state: TrackState = TrackState.TENTATIVE
    track_id: str | None = None      # set on confirmation
    hits: int = 1
    kalman: _Kalman = field(default=None, repr=False)  # type: ignore[assignment]

    def predicted_box(self, time_s: float) -> np.ndarray:
        dt = time_s - self.last_time_s
        x = self.kalman.x
        z = x[:3] + x[3:] * max(dt, 0.0)
        return _box(z, self.aspect)


@dataclass
class TrackUpdate:
    """What one frame did: (track, detection index) pairs for every detection that joined
    a track (tentative ones included), and the tracks that started and ended."""

    matches: list[tuple[Track, int]]
    started: list[Track]
    ended: list[Track]


class Tracker:
    """Tracks of one stream.  Not thread-safe."""

    def __init__(self, *, confirm_hits: int = 2, max_lost_s: float = 1.0,
                 min_iou: float = 0.1) -> None:
        self._confirm_hits = confirm_hits
        self._max_lost_s = max_lost_s
        self._min_iou = min_iou
        self._tracks: list[Track] = []
        self._next_key = 0
        self._next_id = 1

    @property
    def active(self) -> list[Track]:
        """Tracks not yet ended (tentative, confirmed or lost)."""
        return list(self._tracks)

    def update(self, boxes: np.ndarray, time_s: float) -> TrackUpdate:
        """Associate one frame's detections ([N, 4] pixels) at media time ``time_s``."""
        started: list[Track] = []
        ended: list[Track] = []
        pairs = self._associate(boxes, time_s)
        matched_tracks = {id(t) for t, _ in pairs}
        matched_dets = {j for _, j in pairs}
        for track, j in pairs:
            dt = time_s - track.last_time_s
            track.kalman.predict(dt)
            track.kalman.update(_measure(boxes[j]))
            track.box = boxes[j].astype(np.float64)
            track.aspect = float((boxes[j][3] - boxes[j][1]) / max(boxes[j][2] - boxes[j][0], 1e-6))
            track.last_time_s = time_s
            track.hits += 1
            if track.state is TrackState.LOST:
                track.state = TrackState.CONFIRMED
            if track.state is TrackState.TENTATIVE and track.hits >= self._confirm_hits:
                self._confirm(track)
                started.append(track)
        for track in list(self._tracks):
            if id(track) in matched_tracks:
                continue
            if track.state is TrackState.TENTATIVE:
                self._tracks.remove(track)       # never confirmed: it was noise
            elif time_s - track.last_time_s > self._max_lost_s:
                track.state = TrackState.ENDED
                self._tracks.remove(track)
                ended.append(track)
            else:
                track.state = TrackState.LOST
        for j in range(len(boxes)):
            if j in matched_dets:
                continue
            track = self._new_track(boxes[j], time_s)
            pairs.append((track, j))
            if self._confirm_hits <= 1:
                self._confirm(track)
                started.append(track)
        return TrackUpdate(pairs, started, ended)

    def finish(self) -> list[Track]:
        """End every confirmed or lost track (end of stream); drop tentative ones."""
        ended = [t for t in self._tracks if t.state is not TrackState.TENTATIVE]
        for track in ended:
            track.state = TrackState.ENDED
        self._tracks.clear()
        return ended

    def _confirm(self, track: Track) -> None:
        track.state = TrackState.CONFIRMED
        track.track_id = f"t{self._next_id}"
        self._next_id += 1

    def _new_track(self, box: np.ndarray, time_s: float) -> Track:
        track = Track(key=self._next_key, first_time_s=time_s, last_time_s=time_s,
                      box=box.astype(np.float64),
                      aspect=float((box[3] - box[1]) / max(box[2] - box[0], 1e-6)),
                      kalman=_Kalman(_measure(box)))
        self._next_key += 1
        self._tracks.append(track)
        return track

    def _associate(self, boxes: np.ndarray, time_s: float) -> list[tuple[Track, int]]:
        if not self._tracks or len(boxes) == 0:
            return []
        # Confirmed and lost tracks first: they have earned their identity.
        predicted = np.stack([t.predicted_box(time_s) for t in self._tracks])
        iou = iou_matrix(predicted, boxes.astype(np.float64))
        pc = (predicted[:, :2] + predicted[:, 2:]) / 2
        dc = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.sqrt((predicted[:, 2] - predicted[:, 0]) * (predicted[:, 3] - predicted[:, 1]))
        dist = np.linalg.norm(pc[:, None] - dc[None], axis=2) / np.maximum(side[:, None], 1.0)
        det_side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        scale = np.abs(np.log(np.maximum(det_side[None], 1.0) / np.maximum(side[:, None], 1.0)))
        cost = (1 - iou) + 0.5 * np.minimum(dist, 2.0) + scale
        tentative = np.array([t.state is TrackState.TENTATIVE for t in self._tracks])
        cost = cost + 0.05 * tentative[:, None]
        gate = (iou >= self._min_iou) | (dist < 0.6)
        cost = np.where(gate, cost, 1e6)
        rows, cols = linear_sum_assignment(cost)
        return [(self._tracks[r], int(c)) for r, c in zip(rows, cols) if cost[r, c] < 1e6]
