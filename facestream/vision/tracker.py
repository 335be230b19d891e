"""Multi-face tracking with stable ids: constant-velocity Kalman prediction + IoU/motion
association (Hungarian), and a tentative → confirmed → lost → ended lifecycle.

Time is media seconds, so a stream sampled at any rate (or with gaps) predicts correctly.
A track gets its id when it is confirmed, so short-lived false detections never consume ids
and the ids of a stream are reproducible run to run.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from facestream.vision.float32 import f32


class TrackState(enum.Enum):
    TENTATIVE = "tentative"
    CONFIRMED = "confirmed"
    LOST = "lost"
    ENDED = "ended"


class _Kalman:
    """State [cx, cy, side] and their velocities; measurement [cx, cy, side]; units pixels,
    seconds.

    In the textbook 6-state form F = [[I, dt·I], [0, I]], H = [I, 0], Q and R are diagonal
    and P starts diagonal, so P never couples two coordinates (its cross terms stay exactly
    0): the filter is three independent 2-state (position, velocity) filters, one per
    coordinate, kept here in Python floats.  Each step does the matrix form's operations on
    the nonzero entries, in the same order, so the values are the same; the matrix form's
    dozen NumPy calls on 3-vectors and 6×6 matrices, and its 3×3 ``inv``, cost more per
    frame than the rest of the tracker.  ``x`` and ``P`` give the textbook arrays."""

    __slots__ = ("pos", "vel", "cov")

    def __init__(self, z) -> None:
        self.pos = [float(v) for v in z]        # cx, cy, side
        self.vel = [0.0, 0.0, 0.0]
        side = max(self.pos[2], 1.0)
        # Squares as products: the 6×6 form squared an array (x * x), where ``** 2`` on a
        # float calls pow(), which may round differently.
        p, v = 0.1 * side * (0.1 * side), side * side
        # Per coordinate: [P_pp, P_pv, P_vp, P_vv] (position/velocity covariance block).
        self.cov = [[p, 0.0, 0.0, v] for _ in range(3)]

    @property
    def x(self) -> np.ndarray:
        return np.array(self.pos + self.vel)

    @property
    def P(self) -> np.ndarray:
        P = np.zeros((6, 6))
        for a, (pp, pv, vp, vv) in enumerate(self.cov):
            P[a, a], P[a, a + 3], P[a + 3, a], P[a + 3, a + 3] = pp, pv, vp, vv
        return P

    def predict(self, dt: float) -> tuple[float, float, float]:
        """Advance by ``dt`` seconds (nothing if dt <= 0); the predicted [cx, cy, side]."""
        if dt > 0:
            side = max(self.pos[2], 1.0)
            q = (0.5 * side * dt) ** 2          # velocity uncertainty grows with face size
            noise = ((q * dt, q), (q * dt, q), (q * dt * 0.25, q * 0.25))    # Q: (pos, vel)
            pos, vel = self.pos, self.vel
            for a in range(3):
                pp, pv, vp, vv = self.cov[a]
                pos[a] += dt * vel[a]           # F x
                pp += dt * vp                   # F P (position row)
                pv += dt * vv
                pp += dt * pv                   # (F P) Fᵀ (position column)
                vp += dt * vv
                self.cov[a] = [pp + noise[a][0], pv, vp, vv + noise[a][1]]      # + Q
        return tuple(self.pos)

    def update(self, z) -> None:
        side = max(self.pos[2], 1.0)
        r = (0.05 * side) ** 2                  # R
        pos, vel = self.pos, self.vel
        for a in range(3):
            pp, pv, vp, vv = self.cov[a]
            s_inv = 1.0 / (pp + r)              # (H P Hᵀ + R)⁻¹
            k_pos, k_vel = pp * s_inv, vp * s_inv       # K = P Hᵀ S⁻¹
            innovation = z[a] - pos[a]
            pos[a] += k_pos * innovation
            vel[a] += k_vel * innovation
            self.cov[a] = [pp - k_pos * pp, pv - k_pos * pv, vp - k_vel * pp, vv - k_vel * pv]


class Detection(NamedTuple):
    """One detection box's geometry in Python floats, each value rounded as NumPy rounds it
    on the box's own dtype (FaceAnalyzer's boxes are float32)."""

    x1: float
    y1: float
    x2: float
    y2: float
    cx: float
    cy: float
    side: float            # sqrt(width · height), at least 1: the Kalman measurement's
    match_side: float      # the same for association: NaN, not 1, for an inverted box
    aspect: float          # height / width (width at least 1e-6)


def detections(boxes: np.ndarray) -> list[Detection]:
    """The :class:`Detection` of every box of ``boxes`` [N, 4]."""
    if boxes.dtype == np.float32:
        return [_detection_f32(*box) for box in boxes.tolist()]
    return [_detection_scalars(*box) for box in boxes]


def _detection_scalars(x1, y1, x2, y2) -> Detection:
    """On the box's NumPy scalars: any dtype, rounded as that dtype rounds."""
    area = (x2 - x1) * (y2 - y1)
    return Detection(float(x1), float(y1), float(x2), float(y2),
                     float((x1 + x2) / 2), float((y1 + y2) / 2),
                     float(np.sqrt(max(area, 1.0))), float(np.maximum(np.sqrt(area), 1.0)),
                     float((y2 - y1) / max(x2 - x1, 1e-6)))


def _detection_f32(x1: float, y1: float, x2: float, y2: float) -> Detection:
    """:func:`_detection_scalars` for float32 boxes, in Python floats rounded to float32
    where NumPy's float32 scalars round (same values; NumPy's scalars cost ~20 µs a frame)."""
    width, height = f32(x2 - x1), f32(y2 - y1)
    area = f32(width * height)
    side = f32(math.sqrt(area)) if not area < 1.0 else 1.0
    return Detection(x1, y1, x2, y2, f32(x1 + x2) / 2, f32(y1 + y2) / 2,
                     side, side if area >= 0 else math.nan,
                     f32(height / width) if not width < 1e-6 else height / 1e-6)


def _box(z, aspect: float) -> tuple[float, float, float, float]:
    # NumPy's sqrt where the box is degenerate (aspect 0 or NaN): inf and NaN, not exceptions.
    root = math.sqrt(aspect) if aspect > 0 else np.sqrt(aspect)
    w = z[2] / root
    h = z[2] * root
    return (z[0] - w / 2, z[1] - h / 2, z[0] + w / 2, z[1] + h / 2)


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
        return np.array(self._predicted_box(time_s))

    def _predicted_box(self, time_s: float) -> tuple[float, float, float, float]:
        dt = max(time_s - self.last_time_s, 0.0)
        pos, vel = self.kalman.pos, self.kalman.vel
        return _box([p + v * dt for p, v in zip(pos, vel)], self.aspect)


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
        found = detections(boxes)
        pairs = self._associate(boxes, found, time_s)
        matched_tracks = {id(t) for t, _ in pairs}
        matched_dets = {j for _, j in pairs}
        for track, j in pairs:
            det = found[j]
            dt = time_s - track.last_time_s
            track.kalman.predict(dt)
            track.kalman.update((det.cx, det.cy, det.side))
            track.box = np.array(det[:4])
            track.aspect = det.aspect
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
        for j, det in enumerate(found):
            if j in matched_dets:
                continue
            track = self._new_track(det, time_s)
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

    def _new_track(self, det: Detection, time_s: float) -> Track:
        track = Track(key=self._next_key, first_time_s=time_s, last_time_s=time_s,
                      box=np.array(det[:4]), aspect=det.aspect,
                      kalman=_Kalman((det.cx, det.cy, det.side)))
        self._next_key += 1
        self._tracks.append(track)
        return track

    def _associate(self, boxes: np.ndarray, found: list[Detection],
                   time_s: float) -> list[tuple[Track, int]]:
        if not self._tracks or len(boxes) == 0:
            return []
        # Confirmed and lost tracks first: they have earned their identity.
        predicted = [t._predicted_box(time_s) for t in self._tracks]
        tentative = [t.state is TrackState.TENTATIVE for t in self._tracks]
        if len(predicted) * len(boxes) <= FEW_PAIRS:
            cost = association_costs_few(predicted, tentative, found, self._min_iou)
        else:
            cost = association_costs(np.array(predicted), np.array(tentative), boxes,
                                     self._min_iou).tolist()
        return [(self._tracks[r], c) for r, c in _assign(cost) if cost[r][c] < GATED]


GATED = 1e6          # the cost of a pair the gate refuses
# Up to this many (track, detection) pairs, costs are computed in Python floats: NumPy's
# ~60 calls on [N, M] arrays cost ~0.1 ms a frame whatever N and M, Python ~2 µs a pair.
FEW_PAIRS = 16


def association_costs(predicted: np.ndarray, tentative: np.ndarray, boxes: np.ndarray,
                      min_iou: float) -> np.ndarray:
    """[N, M] costs of pairing N predicted boxes (float64 [N, 4]; ``tentative`` [N] bool: the
    track is not confirmed yet) with M detections ([M, 4], any dtype); ``GATED`` where
    neither the overlap nor the distance lets a pair through."""
    iou = iou_matrix(predicted, boxes.astype(np.float64))
    pc = (predicted[:, :2] + predicted[:, 2:]) / 2
    dc = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = np.sqrt((predicted[:, 2] - predicted[:, 0]) * (predicted[:, 3] - predicted[:, 1]))
    dist = np.linalg.norm(pc[:, None] - dc[None], axis=2) / np.maximum(side[:, None], 1.0)
    det_side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    scale = np.abs(np.log(np.maximum(det_side[None], 1.0) / np.maximum(side[:, None], 1.0)))
    cost = (1 - iou) + 0.5 * np.minimum(dist, 2.0) + scale
    cost = cost + 0.05 * tentative[:, None]
    gate = (iou >= min_iou) | (dist < 0.6)
    return np.where(gate, cost, GATED)


def association_costs_few(predicted: list[tuple[float, float, float, float]],
                          tentative: list[bool], found: list[Detection],
                          min_iou: float) -> list[list[float]]:
    """:func:`association_costs` pair by pair in Python floats, from the detections'
    :class:`Detection` values: the same operations in the same order, so the same values
    (the log is NumPy's, which may differ from ``math.log`` in the last bit)."""
    rows = []
    for (p1, q1, p2, q2), tent in zip(predicted, tentative):
        area = (p2 - p1) * (q2 - q1)
        side = max(math.sqrt(area), 1.0)
        pcx, pcy = (p1 + p2) / 2, (q1 + q2) / 2
        row = []
        for x1, y1, x2, y2, dcx, dcy, _, det_side, _ in found:
            inter = (max(min(p2, x2) - max(p1, x1), 0.0)
                     * max(min(q2, y2) - max(q1, y1), 0.0))
            iou = inter / max(area + (x2 - x1) * (y2 - y1) - inter, 1e-9)
            dx, dy = pcx - dcx, pcy - dcy
            dist = math.sqrt(dx * dx + dy * dy) / side
            scale = abs(float(np.log(det_side / side)))
            cost = (1 - iou) + 0.5 * min(dist, 2.0) + scale
            if tent:
                cost += 0.05
            row.append(cost if iou >= min_iou or dist < 0.6 else GATED)
        rows.append(row)
    return rows


def _assign(cost: list[list[float]]) -> list[tuple[int, int]]:
    """The (row, column) pairs of least total cost, as scipy's ``linear_sum_assignment``
    gives them.  One track or one detection (the usual case) needs no Hungarian algorithm:
    the pair is the first minimum of the only row or column, the one scipy picks among ties
    too, without scipy's call overhead."""
    if len(cost) == 1:
        row = cost[0]
        return [(0, min(range(len(row)), key=row.__getitem__))]
    if len(cost[0]) == 1:
        return [(min(range(len(cost)), key=lambda r: cost[r][0]), 0)]
    rows, cols = linear_sum_assignment(np.array(cost))
    return list(zip(rows.tolist(), cols.tolist()))
