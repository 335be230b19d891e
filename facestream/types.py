"""The data that crosses a stage boundary, in the order the data flows.

decode → :class:`DecodedFrame` → faces → :class:`FaceDetections` (with :class:`FaceChips`)
→ tracker and windows → :class:`FaceSample`, :class:`FaceWindow` → encoder →
:class:`EncoderOutput` (a :class:`WindowEncoder`) → language stage (:class:`LanguageStage`) → :class:`Answer` → events.

Every type checks its own shape where it is made, so a stage that builds one wrongly fails
there, not three stages later.  Nothing here imports anything above :mod:`facestream.errors`;
every layer may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

# Sizes of the arrays below, fixed by the models that read them.
MESH_POINTS = 468          # MediaPipe face mesh
LANDMARKS = 68             # iBUG 68-point layout
AGE_CHIP = 64              # age net input side (RGB)
GENDER_CHIP = 32           # gender net input side (RGB)
EXPRESSION_CHIP = 64       # expression net input side (grey)
FACELLAVA_CROP = 256       # Face-LLaVA's square crop side (RGB)


def _shape(owner: str, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    # An array's own .shape first: np.shape's dispatch costs more than the check, per face.
    got = array.shape if isinstance(array, np.ndarray) else np.shape(array)
    if got != shape:
        raise ValueError(f"{owner}.{name}: expected shape {shape}, got {got}")


@dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One picked frame.  ``image`` is [H, W, 3] uint8 RGB in source pixels."""

    stream_id: str
    index: int           # position among picked frames of this stream, from 0
    pts: int | None      # presentation timestamp in the stream's time base
    time_s: float        # media seconds since the stream's first frame
    image: np.ndarray
    arrival: float       # time.time() when the frame came out of the decoder
    captured: float | None = None   # wall clock (unix s) when the source produced it, if known
    # A keyframe was decoded since the stream's previous picked frame (or this is its
    # first): the face stage starts afresh here, so a stream resumed at a GOP gets the
    # same faces as when it ran through.
    gop_start: bool = True

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"frame image must be [H, W, 3] uint8, got "
                             f"{self.image.shape} {self.image.dtype}")

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


@dataclass(frozen=True, eq=False)
class FaceChips:
    """Chips for N faces.  Arrays are uint8; N may be 0."""

    expression: np.ndarray   # [N, 64, 64] grey
    age: np.ndarray          # [N, 64, 64, 3] RGB
    gender: np.ndarray       # [N, 32, 32, 3] RGB
    square: np.ndarray | None = None            # [N, 256, 256, 3] RGB (facellava profile)
    square_landmarks: np.ndarray | None = None  # [N, 136] x0, y0, x1, ... in the crop / 256

    def __post_init__(self) -> None:
        n = len(self.expression)
        if len(self.age) != n or len(self.gender) != n:
            raise ValueError(f"chip counts differ: {n}, {len(self.age)}, {len(self.gender)}")
        if (self.square is None) != (self.square_landmarks is None):
            raise ValueError("square crops and their landmarks come together")
        if self.square is not None and (self.square.shape != (n, FACELLAVA_CROP, FACELLAVA_CROP, 3)
                                        or self.square_landmarks.shape != (n, 136)):
            raise ValueError(f"square crops {self.square.shape} / landmarks "
                             f"{self.square_landmarks.shape} do not fit {n} faces")

    @classmethod
    def empty(cls) -> "FaceChips":
        return cls(np.zeros((0, EXPRESSION_CHIP, EXPRESSION_CHIP), np.uint8),
                   np.zeros((0, AGE_CHIP, AGE_CHIP, 3), np.uint8),
                   np.zeros((0, GENDER_CHIP, GENDER_CHIP, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.expression)

    def take(self, index: int) -> "FaceChips":
        sl = slice(index, index + 1)
        if self.square is None:
            return FaceChips(self.expression[sl], self.age[sl], self.gender[sl])
        return FaceChips(self.expression[sl], self.age[sl], self.gender[sl],
                         self.square[sl], self.square_landmarks[sl])


@dataclass(frozen=True, eq=False)
class FaceDetections:
    """The faces of one frame, all in source pixels.  N may be 0 (see :meth:`empty`)."""

    boxes: np.ndarray       # [N, 4] float32 x1, y1, x2, y2 (from the mesh's extent)
    scores: np.ndarray      # [N] float32 detector confidence
    mesh: np.ndarray        # [N, 468, 3] float32 x, y pixels; z in pixel-like units
    landmarks: np.ndarray   # [N, 68, 2] float32 iBUG order
    chips: FaceChips

    def __post_init__(self) -> None:
        n = len(self.boxes)
        shapes = {"boxes": (n, 4), "scores": (n,), "mesh": (n, MESH_POINTS, 3),
                  "landmarks": (n, LANDMARKS, 2)}
        for name, shape in shapes.items():
            _shape("FaceDetections", name, getattr(self, name), shape)
        if len(self.chips) != n:
            raise ValueError(f"FaceDetections: {n} faces but {len(self.chips)} chips")

    @classmethod
    def empty(cls) -> "FaceDetections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                   np.zeros((0, MESH_POINTS, 3), np.float32), np.zeros((0, LANDMARKS, 2), np.float32),
                   FaceChips.empty())

    def __len__(self) -> int:
        return len(self.boxes)


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One face in one picked frame, source pixels."""

    time_s: float
    pts: int | None
    arrival: float           # time.time() when the frame left the decoder
    box: np.ndarray          # [4] x1, y1, x2, y2
    landmarks: np.ndarray    # [68, 2] iBUG
    mesh: np.ndarray         # [468, 3]
    chips: FaceChips         # one face
    captured: float | None = None   # wall clock (unix s) when the source produced the frame

    def __post_init__(self) -> None:
        _shape("FaceSample", "box", self.box, (4,))
        _shape("FaceSample", "landmarks", self.landmarks, (LANDMARKS, 2))
        _shape("FaceSample", "mesh", self.mesh, (MESH_POINTS, 3))
        if len(self.chips) != 1:
            raise ValueError(f"FaceSample.chips: expected one face, got {len(self.chips)}")


@dataclass(frozen=True, eq=False)
class FaceWindow:
    """A track's samples over one window.  ``samples`` is never empty and is time-ordered.

    ``clip``: what Face-LLaVA's video tasks look at when it reaches back past the window
    (``facellava_video_window_s``): the track's samples over that many seconds up to the
    window's last sample, thinned, time-ordered, ending with that sample; empty when the
    window's own samples are the clip."""

    stream_id: str
    track_id: str
    samples: tuple[FaceSample, ...]
    frame_size: tuple[int, int]        # (width, height) of the source frames
    final: bool = False                # the track ended with this window
    clip: tuple[FaceSample, ...] = ()

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError(f"window of track {self.track_id} has no samples")
        times = [s.time_s for s in self.samples]
        if times != sorted(times):
            raise ValueError(f"window of track {self.track_id}: samples out of time order")
        clip_times = [s.time_s for s in self.clip]
        if clip_times and (clip_times != sorted(clip_times) or clip_times[-1] != times[-1]):
            raise ValueError(f"window of track {self.track_id}: its clip is out of time order "
                             "or does not end with the window")
        width, height = self.frame_size
        if width <= 0 or height <= 0:
            raise ValueError(f"window of track {self.track_id}: frame size {self.frame_size}")

    @property
    def start_s(self) -> float:
        return self.samples[0].time_s

    @property
    def end_s(self) -> float:
        return self.samples[-1].time_s

    @property
    def start_pts(self) -> int | None:
        return self.samples[0].pts

    @property
    def end_pts(self) -> int | None:
        return self.samples[-1].pts

    def median_box(self) -> np.ndarray:
        return np.median(np.stack([s.box for s in self.samples]), axis=0)


@dataclass(frozen=True)
class EncoderOutput:
    """Structured results for one window."""

    expression: dict[str, float]       # the 7 contract labels -> probability
    age_years: float
    age_low: float
    age_high: float
    gender: str
    gender_score: float
    action_units: dict[str, float | None]

    def __post_init__(self) -> None:
        if not self.expression:
            raise ValueError("EncoderOutput.expression: no labels")
        if not self.age_low <= self.age_years <= self.age_high:
            raise ValueError(f"EncoderOutput: age {self.age_years} outside its range "
                             f"[{self.age_low}, {self.age_high}]")

    @property
    def expression_label(self) -> str:
        return max(self.expression, key=self.expression.get)


@dataclass(frozen=True)
class Answer:
    """What the language stage says about one window: the text events show as their
    description, and the event data fields it sets (empty for a description-only stage)."""

    description: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.description, str):
            raise ValueError(f"Answer.description: expected text, got "
                             f"{type(self.description).__name__}")


class WindowEncoder(Protocol):
    """What the analyzer asks of a profile's visual encoder: structured results for a batch
    of windows (all their faces in one call)."""

    components: Mapping[str, str]      # event model.components entries it adds

    def encode(self, windows: list[FaceWindow]) -> list[EncoderOutput]:
        """One output per window, in order.  Blocking."""


class LanguageStage(Protocol):
    """What the analyzer asks of a profile's language stage (SmolLM2's descriptions or
    Face-LLaVA's task answers)."""

    components: Mapping[str, str]      # event model.components entries it adds

    def answer(self, items: Sequence[tuple[FaceWindow, EncoderOutput]]) -> list[Answer | None]:
        """One answer per (window, cheap results), in order; None for a window the LLM did
        not answer (its request was shed under load).  Blocking."""

    @property
    def stats(self) -> Mapping[str, int]:
        """Its engine's counters (at least queued and running).  Thread-safe."""
