"""float32 rounding of Python floats, and the face stage's scalar geometry built on it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from facestream.vision import faces
from facestream.vision.faces import FaceAnalyzer
from facestream.vision.float32 import f32


def test_f32_rounds_as_numpy_does():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1e4, 1e4, 5000), rng.normal(0, 1e-3, 1000),
                             [0.0, -0.0, 1 + 2 ** -24, 1 + 3 * 2 ** -24, np.inf, -np.inf]])
    assert [f32(v) for v in values.tolist()] == values.astype(np.float32).tolist()
    assert np.isnan(f32(float("nan")))
    with pytest.raises(OverflowError):
        f32(1e39)


def test_f32_arithmetic_is_numpys_float32_arithmetic():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0, 700, (2, 5000)).astype(np.float32)
    for x, y in zip(a[:2000], b[:2000]):
        fx, fy = float(x), float(y)
        assert f32(fx + fy) == x + y and f32(fx - fy) == x - y
        assert f32(fx * fy) == x * y and f32(fx / fy) == x / y
        assert f32(np.sqrt(fx)) == np.sqrt(x)


def _detection(xmin, ymin, width, height, score):
    box = SimpleNamespace(xmin=xmin, ymin=ymin, width=width, height=height)
    eyes = [SimpleNamespace(x=xmin + width * 0.3, y=ymin + height * 0.4),
            SimpleNamespace(x=xmin + width * 0.7, y=ymin + height * 0.4)]
    return SimpleNamespace(location_data=SimpleNamespace(relative_bounding_box=box,
                                                         relative_keypoints=eyes),
                           score=[score])


class _Detector:
    """A detector graph's stand-in: what ``graph_output`` returns for it is ``detections``."""

    def __init__(self, detections):
        self.detections = detections


@pytest.mark.parametrize("max_faces", [16, 3, 0])
def test_detections_are_ordered_widest_first_and_stably(max_faces, monkeypatch):
    """The Python sort of the detector's boxes is the float32 arrays' stable argsort."""
    monkeypatch.setattr(faces, "graph_output", lambda solution, image, output: solution.detections)
    rng = np.random.default_rng(3)
    widths = rng.choice([0.05, 0.1, 0.1, 0.2, 0.02], 12)          # ties, and too small
    found = [_detection(float(x), float(y), float(w), float(w) * 1.2, float(s))
             for x, y, w, s in zip(rng.uniform(0, 0.8, 12), rng.uniform(0, 0.7, 12), widths,
                                   rng.uniform(0.5, 1, 12))]
    analyzer = FaceAnalyzer.__new__(FaceAnalyzer)
    analyzer._detector = _Detector(found)
    analyzer._close_detector = _Detector([])
    analyzer._min_face_px, analyzer._max_faces = 20, max_faces
    image = np.zeros((360, 640, 3), np.uint8)
    boxes, scores = analyzer.detect_boxes(image)
    kept = [(d.location_data.relative_bounding_box, d.score[0]) for d in found]
    ref = np.array([(r.xmin * 640, r.ymin * 360, r.xmin * 640 + r.width * 640,
                     r.ymin * 360 + r.height * 360) for r, _ in kept], np.float32)
    ref_scores = np.array([s for _, s in kept], np.float32)
    wide = ref[:, 2] - ref[:, 0] >= 20
    ref, ref_scores = ref[wide], ref_scores[wide]
    order = np.argsort(-(ref[:, 2] - ref[:, 0]), kind="stable")[:max_faces]
    assert boxes.dtype == scores.dtype == np.float32 and boxes.shape == (len(order), 4)
    np.testing.assert_array_equal(boxes, ref[order])
    np.testing.assert_array_equal(scores, ref_scores[order])


def test_atan2f_is_the_c_librarys_float32_atan2():
    """MediaPipe's calculators call C's atan2f; the face stage's region must use the same
    function (the rounded double differs by an ulp on a fifth of inputs)."""
    import ctypes
    import ctypes.util

    from facestream.vision.float32 import atan2f

    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.atan2f.restype = ctypes.c_float
    libm.atan2f.argtypes = (ctypes.c_float, ctypes.c_float)
    rng = np.random.default_rng(4)
    ys = rng.normal(0, 30, 3000).astype(np.float32).tolist()
    xs = rng.normal(60, 20, 3000).astype(np.float32).tolist()
    got = [atan2f(y, x) for y, x in zip(ys, xs)]
    assert got == [libm.atan2f(y, x) for y, x in zip(ys, xs)]
    # Not the double atan2 rounded: somewhere they part (so the test tells them apart).
    import math
    assert any(g != f32(math.atan2(y, x)) for g, y, x in zip(got, ys, xs))
