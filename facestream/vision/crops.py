"""Aligned face crops ("chips") cut from a frame, one set per detected face.

* age / gender chips: dlib's face-chip alignment (5 points, padding 0.2), the alignment
  the age and gender nets were trained with, at 64² and 32² RGB;
* expression chip: 64² grey, eyes levelled, a square around the face as FER2013 crops are;
* Face-LLaVA crop (only when asked for): the reference's square crop at 256² RGB, with the
  68 landmarks in that crop's pixel frame divided by 256 (what its landmark path reads).

All chips are made once, where the frame still exists, so windows only carry small arrays.
"""

from __future__ import annotations

import cv2
import numpy as np

from facestream.types import AGE_CHIP, EXPRESSION_CHIP, FACELLAVA_CROP, GENDER_CHIP, FaceChips
from facestream.vision.landmarks import DLIB5_TEMPLATE, IBUG68_TO_DLIB5

CHIP_PADDING = 0.2


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src [K,2] to dst [K,2].

    Returns the 2×3 matrix: the transform Umeyama's method gives (no reflection), by its
    closed form in two dimensions.  With centred points s, d the linear part is
    [[a, -b], [b, a]], a = Σ s·d / Σ|s|², b = Σ s×d / Σ|s|²: no SVD and determinants, whose
    NumPy overhead on five points cost more than both chips' warps.
    """
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    norm = (s * s).sum()
    a = (s * d).sum() / norm
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / norm
    matrix = np.empty((2, 3))
    matrix[:, :2] = ((a, -b), (b, a))
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


# dlib's 5-point template with the chips' padding, in a chip of unit size.
_DLIB5_UNIT = (DLIB5_TEMPLATE + CHIP_PADDING) / (1 + 2 * CHIP_PADDING)


def dlib_chips(image: np.ndarray, ibug68: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """The chips dlib's ``get_face_chip_details(shape5, size, 0.2)`` would cut, one per size.

    The alignment is solved once: the template scales with the chip size, so the transform
    for size s is the unit-size transform scaled by s."""
    unit = similarity_transform(ibug68[IBUG68_TO_DLIB5].astype(np.float64), _DLIB5_UNIT)
    return [cv2.warpAffine(image, unit * size, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT) for size in sizes]


def expression_chip(image: np.ndarray, ibug68: np.ndarray) -> np.ndarray:
    """64² grey crop: eyes level, square from brows to chin with a small margin.

    Resampled in colour, then made grey: the same result as the other way round, without
    converting the whole frame.  Means are ``np.add.reduce(...) / n`` (what ``mean`` computes,
    without its Python wrapper), and the extent is taken over contiguous x and y rows
    (numpy's min over a strided axis is several times slower): per face, this geometry
    cost more than the warp itself."""
    left_eye = np.add.reduce(ibug68[36:42], 0) / 6
    right_eye = np.add.reduce(ibug68[42:48], 0) / 6
    angle = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    centre = np.add.reduce(ibug68, 0) / len(ibug68)
    rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), 1.0)
    pts = np.ascontiguousarray((ibug68 @ rot[:, :2].T + rot[:, 2]).T)    # [2, 68]
    lo, hi = pts.min(1), pts.max(1)
    side = max(hi - lo) * 1.15
    mid = (lo + hi) / 2
    scale = EXPRESSION_CHIP / side
    rot[:, :] *= scale
    rot[:, 2] += EXPRESSION_CHIP / 2 - mid * scale
    chip = cv2.warpAffine(image, rot, (EXPRESSION_CHIP, EXPRESSION_CHIP), flags=cv2.INTER_AREA,
                          borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY)


def square_crop(image: np.ndarray, box: np.ndarray,
                ibug68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-LLaVA's face crop and the landmarks in it: ([256, 256, 3] RGB, [136]).

    As the reference's ``tools/crop_face.py`` cuts it (margin 0): a square of side
    (w + h) / 2 from the detector box's top-left corner, clipped to the frame (so a face at
    the border gives a non-square region, stretched to 256² as the reference stretches it).
    ``box`` is the detector's [x1, y1, x2, y2]; ``ibug68`` [68, 2] frame pixels.  The
    landmarks come back in the crop's pixel frame divided by 256, interleaved x0, y0, x1, ...
    """
    height, width = image.shape[:2]
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    x1, y1 = int(max(0.0, box[0])), int(max(0.0, box[1]))
    x2, y2 = int(min(box[0] + side, width - 1)), int(min(box[1] + side, height - 1))
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    crop = cv2.resize(np.ascontiguousarray(image[y1:y2, x1:x2]), (FACELLAVA_CROP, FACELLAVA_CROP))
    scale = np.array([FACELLAVA_CROP / (x2 - x1), FACELLAVA_CROP / (y2 - y1)])
    points = (ibug68 - np.array([x1, y1])) * scale / FACELLAVA_CROP     # [68, 2]
    return crop, points.reshape(-1).astype(np.float32)


def make_chips(image: np.ndarray, landmarks68: np.ndarray,
               square_boxes: np.ndarray | None = None) -> FaceChips:
    """Chips for every face: ``image`` [H, W, 3] RGB, ``landmarks68`` [N, 68, 2] pixels;
    with ``square_boxes`` ([N, 4] detector boxes) also Face-LLaVA's 256² crops."""
    if len(landmarks68) == 0:
        empty = FaceChips.empty()
        if square_boxes is None:
            return empty
        return FaceChips(empty.expression, empty.age, empty.gender,
                         np.zeros((0, FACELLAVA_CROP, FACELLAVA_CROP, 3), np.uint8),
                         np.zeros((0, 136), np.float32))
    aligned = [dlib_chips(image, lm, (AGE_CHIP, GENDER_CHIP)) for lm in landmarks68]
    square = square_lm = None
    if square_boxes is not None:
        pairs = [square_crop(image, box, lm) for box, lm in zip(square_boxes, landmarks68)]
        square = np.stack([c for c, _ in pairs])
        square_lm = np.stack([p for _, p in pairs])
    return FaceChips(
        expression=np.stack([expression_chip(image, lm) for lm in landmarks68]),
        age=np.stack([age for age, _ in aligned]),
        gender=np.stack([gender for _, gender in aligned]),
        square=square, square_landmarks=square_lm,
    )
