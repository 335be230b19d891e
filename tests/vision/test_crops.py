"""Chip alignment geometry."""

from __future__ import annotations

import cv2
import numpy as np

from facestream.types import AGE_CHIP, EXPRESSION_CHIP, GENDER_CHIP
from facestream.vision.crops import _DLIB5_UNIT, make_chips, similarity_transform
from facestream.vision.landmarks import IBUG68_TO_DLIB5


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)


def _face_points(rng, count=68):
    """Plausible landmark sets: a unit pattern rotated, scaled and moved into a 640x360
    frame (some past its edges), float32 as FaceAnalyzer gives them."""
    base = rng.uniform(0, 1, (count, 2))
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(15, 250)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (base @ rot.T + rng.uniform(-50, 650, 2)).astype(np.float32)


def test_dlib5_alignment_is_the_similarity_transform_to_the_bit():
    from facestream.vision.crops import dlib5_alignment

    rng = np.random.default_rng(1)
    for _ in range(500):
        five = _face_points(rng, 5).astype(np.float64)
        a, b, tx, ty = dlib5_alignment(five.tolist())
        np.testing.assert_array_equal(np.array([[a, -b, tx], [b, a, ty]]),
                                      similarity_transform(five, _DLIB5_UNIT))


def _expression_matrix_reference(ibug68):
    """The expression chip's warp matrix as NumPy arrays step by step (the form the Python
    floats of expression_chip replace)."""
    left_eye = np.add.reduce(ibug68[36:42], 0) / 6
    right_eye = np.add.reduce(ibug68[42:48], 0) / 6
    angle = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    centre = np.add.reduce(ibug68, 0) / len(ibug68)
    rot = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), 1.0)
    pts = np.ascontiguousarray((ibug68 @ rot[:, :2].T + rot[:, 2]).T)
    lo, hi = pts.min(1), pts.max(1)
    side = max(hi - lo) * 1.15
    scale = EXPRESSION_CHIP / side
    rot[:, :] *= scale
    rot[:, 2] += EXPRESSION_CHIP / 2 - (lo + hi) / 2 * scale
    return rot


def test_chips_are_cut_with_the_array_forms_matrices():
    """make_chips (chips cut into the batch arrays, geometry in Python floats) gives the
    chips the step-by-step array geometry gives, to the bit."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (45, 80, 3), np.uint8).repeat(8, 0).repeat(8, 1)  # 360x640
    for _ in range(100):
        faces = np.stack([_face_points(rng), _face_points(rng)])
        chips = make_chips(image, faces)
        for i, ibug68 in enumerate(faces):
            expected = cv2.cvtColor(
                cv2.warpAffine(image, _expression_matrix_reference(ibug68),
                               (EXPRESSION_CHIP, EXPRESSION_CHIP), flags=cv2.INTER_AREA,
                               borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_RGB2GRAY)
            np.testing.assert_array_equal(chips.expression[i], expected)
            unit = similarity_transform(ibug68[IBUG68_TO_DLIB5].astype(np.float64), _DLIB5_UNIT)
            for chip, size in ((chips.age[i], AGE_CHIP), (chips.gender[i], GENDER_CHIP)):
                np.testing.assert_array_equal(chip, cv2.warpAffine(
                    image, unit * size, (size, size), flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT))
