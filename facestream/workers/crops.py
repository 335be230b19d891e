"""Aligned face crops ("chips") cut from a frame, one set per detected face.

* age / gender chips: dlib's face-chip alignment (5 points, padding 0.2), the alignment
  the age and gender nets were trained with, at 64² and 32² RGB;
* expression chip: 64² grey, eyes levelled, a square around the face as FER2013 crops are.

All chips are made once, where the frame still exists, so windows only carry small arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facestream.workers.landmarks import DLIB5_TEMPLATE, IBUG68_TO_DLIB5

AGE_CHIP = 64
GENDER_CHIP = 32
EXPRESSION_CHIP = 64
CHIP_PADDING = 0.2


@dataclass(frozen=True, eq=False)
class FaceChips:
    """Chips for N faces.  Arrays are uint8; N may be 0."""

    expression: np.ndarray   # [N, 64, 64] grey
    age: np.ndarray          # [N, 64, 64, 3] RGB
    gender: np.ndarray       # [N, 32, 32, 3] RGB

    def __post_init__(self) -> None:
        n = len(self.expression)
        if len(self.age) != n or len(self.gender) != n:
            raise ValueError(f"chip counts differ: {n}, {len(self.age)}, {len(self.gender)}")

    @classmethod
    def empty(cls) -> "FaceChips":
        return cls(np.zeros((0, EXPRESSION_CHIP, EXPRESSION_CHIP), np.uint8),
                   np.zeros((0, AGE_CHIP, AGE_CHIP, 3), np.uint8),
                   np.zeros((0, GENDER_CHIP, GENDER_CHIP, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.expression)

    def take(self, index: int) -> "FaceChips":
        sl = slice(index, index + 1)
        return FaceChips(self.expression[sl], self.age[sl], self.gender[sl])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src [K,2] to dst [K,2].

    Returns the 2×3 matrix (Umeyama's method, no reflection).
    """
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / s.var(0).sum()
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def dlib_chips(image: np.ndarray, ibug68: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """The chips dlib's ``get_face_chip_details(shape5, size, 0.2)`` would cut, one per size.

    The alignment is solved once: the template scales with the chip size, so the transform
    for size s is the unit-size transform scaled by s."""
    points = ibug68[IBUG68_TO_DLIB5].astype(np.float64)
    unit = similarity_transform(points, (DLIB5_TEMPLATE + CHIP_PADDING) / (1 + 2 * CHIP_PADDING))
    return [cv2.warpAffine(image, unit * size, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT) for size in sizes]


def expression_chip(image: np.ndarray, ibug68: np.ndarray) -> np.ndarray:
    """64² grey crop: eyes level, square from brows to chin with a small margin.

    Resampled in colour, then made grey: the same result as the other way round, without
    converting the whole frame."""
    left_eye, right_eye = ibug68[36:42].mean(0), ibug68[42:48].mean(0)
    angle = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    centre = ibug68.mean(0)
    rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), 1.0)
    pts = ibug68 @ rot[:, :2].T + rot[:, 2]
    lo, hi = pts.min(0), pts.max(0)
    side = max(hi - lo) * 1.15
    mid = (lo + hi) / 2
    scale = EXPRESSION_CHIP / side
    rot[:, :] *= scale
    rot[:, 2] += EXPRESSION_CHIP / 2 - mid * scale
    chip = cv2.warpAffine(image, rot, (EXPRESSION_CHIP, EXPRESSION_CHIP), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)


def make_chips(image: np.ndarray, landmarks68: np.ndarray) -> FaceChips:
    """Chips for every face: ``image`` [H, W, 3] RGB, ``landmarks68`` [N, 68, 2] pixels."""
    if len(landmarks68) == 0:
        return FaceChips.empty()
    aligned = [dlib_chips(image, lm, (AGE_CHIP, GENDER_CHIP)) for lm in landmarks68]
    return FaceChips(
        expression=np.stack([expression_chip(image, lm) for lm in landmarks68]),
        age=np.stack([age for age, _ in aligned]),
        gender=np.stack([gender for _, gender in aligned]),
    )
