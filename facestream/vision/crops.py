"""Aligned face crops ("chips") cut from a frame, one set per detected face.

* age / gender chips: dlib's face-chip alignment (5 points, padding 0.2), the alignment
  the age and gender nets were trained with, at 64² and 32² RGB;
* expression chip: 64² grey, eyes levelled, a square around the face as FER2013 crops are;
* Face-LLaVA crop (only when asked for): the reference's square crop at 256² RGB, with the
  68 landmarks in that crop's pixel frame divided by 256 (what its landmark path reads); its
  region comes from facestream's detector box (:func:`square_region`) or from the reference
  rule's integer box (:func:`reference_region`).

All chips are made once, where the frame still exists, so windows only carry small arrays.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facestream.types import AGE_CHIP, EXPRESSION_CHIP, FACELLAVA_CROP, GENDER_CHIP, FaceChips
from facestream.vision.float32 import f32
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
    mx, my = src_mean
    matrix = np.empty((2, 3))
    matrix[:, :2] = ((a, -b), (b, a))
    # the translation by scalar products, not ``@``: a matrix product may fuse the
    # multiply-adds (BLAS kernels do on some CPUs), which changes the last bit by machine
    matrix[:, 2] = dst_mean - (a * mx - b * my, b * mx + a * my)
    return matrix


# dlib's 5-point template with the chips' padding, in a chip of unit size; its centre and
# its points about the centre (the destination half of the alignment never changes).
_DLIB5_UNIT = (DLIB5_TEMPLATE + CHIP_PADDING) / (1 + 2 * CHIP_PADDING)
_DLIB5_UNIT_MEAN = tuple(_DLIB5_UNIT.mean(0).tolist())
_DLIB5_UNIT_CENTRED = (_DLIB5_UNIT - _DLIB5_UNIT.mean(0)).tolist()
_DLIB5_INDEX = IBUG68_TO_DLIB5.tolist()


def dlib5_alignment(points: list[list[float]]) -> tuple[float, float, float, float]:
    """``similarity_transform(points, _DLIB5_UNIT)`` for the five dlib points ([5][2] Python
    floats) as (a, b, tx, ty): the matrix [[a, -b, tx], [b, a, ty]].

    In Python floats: NumPy's ~20 calls on five points cost more than both chips' warps.
    The sums are taken in the order NumPy's take them, so the matrix is bit-identical to
    :func:`similarity_transform`'s, and so are the chips: means point after point; the sum
    of a [5, 2] array's 10 products pairwise, ((p0 + p1) + (p2 + p3)) + ((p4 + p5) +
    (p6 + p7)), then p8 and p9."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3), (x4, y4) = points
    mx, my = (x0 + x1 + x2 + x3 + x4) / 5, (y0 + y1 + y2 + y3 + y4) / 5
    s = [(x - mx, y - my) for x, y in points]
    sq = [sx * sx + sy * sy for sx, sy in s[:4]]
    dot = [sx * dx + sy * dy for (sx, sy), (dx, dy) in zip(s[:4], _DLIB5_UNIT_CENTRED)]
    (sx4, sy4), (dx4, dy4) = s[4], _DLIB5_UNIT_CENTRED[4]
    norm = (sq[0] + sq[1]) + (sq[2] + sq[3]) + sx4 * sx4 + sy4 * sy4
    a = ((dot[0] + dot[1]) + (dot[2] + dot[3]) + sx4 * dx4 + sy4 * dy4) / norm
    cross = 0.0
    for (sx, sy), (dx, dy) in zip(s, _DLIB5_UNIT_CENTRED):
        cross += sx * dy - sy * dx
    b = cross / norm
    return a, b, _DLIB5_UNIT_MEAN[0] - (a * mx - b * my), _DLIB5_UNIT_MEAN[1] - (b * mx + a * my)


def dlib_chips(image: np.ndarray, ibug68: np.ndarray, sizes: tuple[int, ...],
               out: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The chips dlib's ``get_face_chip_details(shape5, size, 0.2)`` would cut, one per size
    (into ``out``'s arrays, when given).

    The alignment is solved once: the template scales with the chip size, so the transform
    for size s is the unit-size transform scaled by s."""
    pts = ibug68.tolist()
    a, b, tx, ty = dlib5_alignment([pts[i] for i in _DLIB5_INDEX])
    return [cv2.warpAffine(image, np.array(((a * size, -b * size, tx * size),
                                            (b * size, a * size, ty * size))),
                           (size, size), dst=None if out is None else out[i],
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            for i, size in enumerate(sizes)]


def _mean32(values: list[float]) -> float:
    """Mean of float32 values as NumPy computes it on a float32 axis: summed in order, every
    partial sum rounded to float32, then divided in float32."""
    total = values[0]
    for value in values[1:]:
        total = f32(total + value)
    return f32(total / len(values))


def expression_chip(image: np.ndarray, ibug68: np.ndarray,
                    out: np.ndarray | None = None) -> np.ndarray:
    """64² grey crop: eyes level, square from brows to chin with a small margin (into
    ``out``, when given).

    Resampled in colour, then made grey: the same result as the other way round, without
    converting the whole frame.  As ~30 NumPy calls on 2-vectors and 2×3 matrices, the
    geometry cost more per face than the warp; it is written in Python floats with the
    roundings of that array form, so the matrix is the same: eye centres as float32 means,
    the angle by NumPy's float32 ``arctan2`` and ``degrees``, the centre by one float32
    ``np.add.reduce``, ``cv2.getRotationMatrix2D``'s formula, and the rotated points'
    extent from one [2, 2] @ [2, 68] product (the translation added to its rows' min and
    max: it moves every point alike)."""
    pts = ibug68.tolist()
    left_x, left_y = _mean32([p[0] for p in pts[36:42]]), _mean32([p[1] for p in pts[36:42]])
    right_x, right_y = _mean32([p[0] for p in pts[42:48]]), _mean32([p[1] for p in pts[42:48]])
    angle = float(np.degrees(np.arctan2(f32(right_y - left_y), f32(right_x - left_x),
                                        dtype=np.float32)))
    sum_x, sum_y = np.add.reduce(ibug68, 0).tolist()
    cx, cy = f32(sum_x / len(pts)), f32(sum_y / len(pts))
    theta = angle * (math.pi / 180)             # cv2.getRotationMatrix2D((cx, cy), angle, 1)
    alpha, beta = math.cos(theta), math.sin(theta)
    tx, ty = (1 - alpha) * cx - beta * cy, beta * cx + (1 - alpha) * cy
    rotated = np.array(((alpha, beta), (-beta, alpha))) @ ibug68.T      # [2, 68] x, y rows
    (lo_x, lo_y), (hi_x, hi_y) = rotated.min(1).tolist(), rotated.max(1).tolist()
    lo_x, lo_y, hi_x, hi_y = lo_x + tx, lo_y + ty, hi_x + tx, hi_y + ty
    side = max(hi_x - lo_x, hi_y - lo_y) * 1.15
    scale = EXPRESSION_CHIP / side
    half = EXPRESSION_CHIP / 2
    matrix = np.array((
        (alpha * scale, beta * scale, tx * scale + (half - (lo_x + hi_x) / 2 * scale)),
        (-beta * scale, alpha * scale, ty * scale + (half - (lo_y + hi_y) / 2 * scale))))
    chip = cv2.warpAffine(image, matrix, (EXPRESSION_CHIP, EXPRESSION_CHIP),
                          flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY, dst=out)


def square_region(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """facestream's rule for Face-LLaVA's crop: the region (x1, y1, x2, y2) of a ``width`` x
    ``height`` frame cut for the detector box ``box`` ([x1, y1, x2, y2] float32 pixels).

    As the reference's ``tools/crop_face.py`` cuts it (margin 0), on the float box: a square
    of side (w + h) / 2 from the box's top-left corner, clipped to the frame (so a face at the
    border gives a non-square region, stretched to 256² as the reference stretches it)."""
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    x1, y1 = int(max(0.0, box[0])), int(max(0.0, box[1]))
    x2, y2 = int(min(box[0] + side, width - 1)), int(min(box[1] + side, height - 1))
    return x1, y1, x2, y2


def reference_region(box: tuple[int, int, int, int], width: int,
                     height: int) -> tuple[int, int, int, int]:
    """The reference's rule: the region (x1, y1, x2, y2) ``tools/crop_face.py`` cuts for the
    MediaPipe Tasks detector's integer box ``(x, y, w, h)`` in a ``width`` x ``height`` frame.

    The square of side (w + h) / 2 from (x, y), with its margin at 0 percent; the tool clamps
    that margin to the room around the box, so a box reaching past an edge of the frame by d
    pixels gives a margin of -d, which moves the start in by d and the end back by d on both
    axes.  Starts are clipped to 0, ends to the last row and column (end excluded)."""
    x, y, w, h = box
    margin = min(0, x, width - x - w, y, height - y - h)
    side = (w + h) / 2
    return (int(max(0, x - margin)), int(max(0, y - margin)),
            int(min(x + side + margin, width - 1)), int(min(y + side + margin, height - 1)))


def cut_square(image: np.ndarray, region: tuple[int, int, int, int],
               ibug68: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-LLaVA's face crop of ``region`` (x1, y1, x2, y2; ends excluded, at least one pixel
    kept) and the landmarks in it: ([256, 256, 3] RGB, [136]).

    The region is stretched to 256² (OpenCV's bilinear resize, as the reference's).
    ``ibug68`` [68, 2] frame pixels come back in the crop's pixel frame divided by 256,
    interleaved x0, y0, x1, ..."""
    x1, y1, x2, y2 = region
    x2, y2 = max(x2, x1 + 1), max(y2, y1 + 1)
    crop = cv2.resize(np.ascontiguousarray(image[y1:y2, x1:x2]), (FACELLAVA_CROP, FACELLAVA_CROP))
    scale = np.array([FACELLAVA_CROP / (x2 - x1), FACELLAVA_CROP / (y2 - y1)])
    points = (ibug68 - np.array([x1, y1])) * scale / FACELLAVA_CROP     # [68, 2]
    return crop, points.reshape(-1).astype(np.float32)


def make_chips(image: np.ndarray, landmarks68: np.ndarray,
               square_regions: list[tuple[int, int, int, int]] | None = None) -> FaceChips:
    """Chips for every face: ``image`` [H, W, 3] RGB, ``landmarks68`` [N, 68, 2] pixels;
    with ``square_regions`` (one (x1, y1, x2, y2) per face: :func:`square_region` or
    :func:`reference_region`) also Face-LLaVA's 256² crops."""
    if len(landmarks68) == 0:
        empty = FaceChips.empty()
        if square_regions is None:
            return empty
        return FaceChips(empty.expression, empty.age, empty.gender,
                         np.zeros((0, FACELLAVA_CROP, FACELLAVA_CROP, 3), np.uint8),
                         np.zeros((0, 136), np.float32))
    # Every chip is cut straight into its place in the batch arrays: no per-face arrays to
    # stack afterwards.
    n = len(landmarks68)
    expression = np.empty((n, EXPRESSION_CHIP, EXPRESSION_CHIP), np.uint8)
    age = np.empty((n, AGE_CHIP, AGE_CHIP, 3), np.uint8)
    gender = np.empty((n, GENDER_CHIP, GENDER_CHIP, 3), np.uint8)
    for i, lm in enumerate(landmarks68):
        dlib_chips(image, lm, (AGE_CHIP, GENDER_CHIP), out=[age[i], gender[i]])
        expression_chip(image, lm, out=expression[i])
    square = square_lm = None
    if square_regions is not None:
        pairs = [cut_square(image, region, lm) for region, lm in zip(square_regions, landmarks68)]
        square = np.stack([c for c, _ in pairs])
        square_lm = np.stack([p for _, p in pairs])
    return FaceChips(expression, age, gender, square=square, square_landmarks=square_lm)
