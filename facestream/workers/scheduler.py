"""Change-triggered scheduling of the LLM: which windows get a fresh description.

A track's window goes to the language model when

* the track is new (``new_track``);
* one of its cheap signals moved beyond its threshold since the track's last *answered*
  window — the expression label or scores (``expression``), the geometric AU intensities
  (``action_units``), the head pose (``head_pose``), or the landmarks' positions relative to
  the eyes (``motion``: the face's shape, free of where the face is, its size and roll);
* or ``max_interval_s`` of media time passed since that answered window (``max_interval``).

Otherwise the window reuses the last answer.  The reference is the last answered window,
not the previous one, so a slow drift adds up until it triggers.

Everything here is pure and per-process; the per-track state is the :class:`Answered`
record the caller keeps (the workers keep it in ``TrackMemory``, which is checkpointed:
it holds only numbers, numpy arrays and these frozen dataclasses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facestream.config import Settings
from facestream.encoder.action_units import GEOMETRIC_AUS
from facestream.encoder.expression import CONTRACT_LABELS
from facestream.encoder.head_pose import HeadPose, window_pose
from facestream.types import EncoderOutput, FaceWindow

NEW_TRACK = "new_track"
EXPRESSION = "expression"
ACTION_UNITS = "action_units"
HEAD_POSE = "head_pose"
MOTION = "motion"
MAX_INTERVAL = "max_interval"
TRIGGERS = (NEW_TRACK, EXPRESSION, ACTION_UNITS, HEAD_POSE, MOTION, MAX_INTERVAL)
_EPS_S = 1e-6      # window times are sample times; this absorbs float rounding
_RIGHT_EYE, _LEFT_EYE = slice(36, 42), slice(42, 48)      # iBUG, image-left eye first


@dataclass(frozen=True, eq=False)
class CheapSignals:
    """What one window's cheap stages say about a face, for comparing windows."""

    expression: np.ndarray        # [7] probabilities, CONTRACT_LABELS order
    label: str                    # the expression head's label (argmax)
    action_units: np.ndarray      # [A] geometric AU intensities 0..5, GEOMETRIC_AUS order
    head_pose: HeadPose           # median over the window, degrees
    shape: np.ndarray             # [68, 2] mean iBUG points, eyes level, unit = eye distance

    def __post_init__(self) -> None:
        shapes = {"expression": (len(CONTRACT_LABELS),), "action_units": (len(GEOMETRIC_AUS),),
                  "shape": (68, 2)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"CheapSignals.{name}: expected {shape}, "
                                 f"got {getattr(self, name).shape}")
        if self.label not in CONTRACT_LABELS:
            raise ValueError(f"CheapSignals.label {self.label!r}: expected one of "
                             f"{', '.join(CONTRACT_LABELS)}")

    @classmethod
    def from_window(cls, window: FaceWindow, out: EncoderOutput) -> "CheapSignals":
        """The signals of ``window`` given its encoder output.  Pure; a few microseconds per
        sample."""
        points = np.stack([s.landmarks for s in window.samples])                     # [T, 68, 2]
        return cls(
            expression=np.array([out.expression[k] for k in CONTRACT_LABELS], np.float64),
            label=out.expression_label,
            action_units=np.array([out.action_units[k] for k in GEOMETRIC_AUS], np.float64),
            head_pose=window_pose(np.stack([s.mesh for s in window.samples])),
            shape=np.mean([face_shape(p) for p in points], axis=0),
        )


def face_shape(points: np.ndarray) -> np.ndarray:
    """iBUG points [68, 2] (pixels) -> [68, 2] with the eyes level, the origin between them
    and the inter-ocular distance as unit: what is left is the face's shape and its turn
    out of the image plane, free of its position, size and roll."""
    p = np.asarray(points, np.float64)
    right, left = p[_RIGHT_EYE].mean(0), p[_LEFT_EYE].mean(0)      # image-left, image-right
    axis = left - right
    iod = float(np.linalg.norm(axis))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the eyes coincide")
    ux = axis / iod
    basis = np.stack([ux, np.array([-ux[1], ux[0]])], axis=1)       # [2, 2] columns x, y
    return (p - (right + left) / 2) @ basis / iod


def changes(reference: CheapSignals, now: CheapSignals) -> dict[str, float]:
    """How far each signal moved from ``reference`` to ``now``, in the thresholds' units:
    expression — L1 distance of the 7 scores (0..2); action_units — the largest change of one
    AU intensity (0..5); head_pose — the largest change of yaw, pitch or roll (degrees,
    0..180); motion — mean displacement of the 68 points of :func:`face_shape`, in eye
    distances."""
    pose = np.abs(now.head_pose.as_array() - reference.head_pose.as_array())      # [3]
    pose = np.minimum(pose, 360.0 - pose)
    return {
        EXPRESSION: float(np.abs(now.expression - reference.expression).sum()),
        ACTION_UNITS: float(np.abs(now.action_units - reference.action_units).max()),
        HEAD_POSE: float(pose.max()),
        MOTION: float(np.linalg.norm(now.shape - reference.shape, axis=1).mean()),
    }


@dataclass(frozen=True)
class Thresholds:
    """Trigger levels; a change strictly above a level triggers.  Units as in :func:`changes`.
    ``max_interval_s`` is media seconds between window starts (0: every window is fresh).
    Defaults and limits live in :class:`~facestream.config.Settings` (``llm_trigger_*``)."""

    expression: float
    action_units: float
    head_pose_deg: float
    motion: float
    max_interval_s: float
    label_change: bool           # a new expression label triggers on its own

    @classmethod
    def from_settings(cls, settings: Settings) -> "Thresholds":
        return cls(expression=settings.llm_trigger_expression,
                   action_units=settings.llm_trigger_au,
                   head_pose_deg=settings.llm_trigger_pose_deg,
                   motion=settings.llm_trigger_motion,
                   max_interval_s=settings.llm_max_interval_s,
                   label_change=settings.llm_trigger_label)


@dataclass(frozen=True, eq=False)
class Answered:
    """A track's last window that got a fresh description: the scheduler's reference."""

    signals: CheapSignals
    start_s: float           # media seconds, the window's start


@dataclass(frozen=True)
class Decision:
    fresh: bool
    reason: str | None       # one of TRIGGERS when fresh, else None

    def __post_init__(self) -> None:
        if self.fresh != (self.reason is not None) or self.reason not in TRIGGERS + (None,):
            raise ValueError(f"Decision(fresh={self.fresh}, reason={self.reason!r}): a fresh "
                             f"decision needs one of {', '.join(TRIGGERS)}, a reuse none")


REUSE = Decision(False, None)


class ChangeScheduler:
    """Decides per window whether the LLM runs.  Pure and stateless (the caller keeps each
    track's :class:`Answered`), so thread-safe."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds

    def decide(self, answered: Answered | None, signals: CheapSignals, *,
               time_s: float) -> Decision:
        """Fresh or reused for a window starting at ``time_s`` (media seconds) with
        ``signals``, given the track's last answered window (None: the track is new).  When
        several triggers fire, the reason is the first in :data:`TRIGGERS` order."""
        if answered is None:
            return Decision(True, NEW_TRACK)
        t = self.thresholds
        moved = changes(answered.signals, signals)
        if (t.label_change and signals.label != answered.signals.label) \
                or moved[EXPRESSION] > t.expression:
            return Decision(True, EXPRESSION)
        for reason, level in ((ACTION_UNITS, t.action_units), (HEAD_POSE, t.head_pose_deg),
                              (MOTION, t.motion)):
            if moved[reason] > level:
                return Decision(True, reason)
        if time_s - answered.start_s >= t.max_interval_s - _EPS_S:
            return Decision(True, MAX_INTERVAL)
        return REUSE
