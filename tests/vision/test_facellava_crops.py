"""Face-LLaVA's face crops and landmarks, as the worker stage makes them from real photos and
video frames, under facestream's crop rule and the reference crop tool's (real MediaPipe
models: the full-range and short-range BlazeFace graphs, and the short-range model through
the Tasks API)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facestream.config import Settings
from facestream.errors import ConfigError
from facestream.types import FACELLAVA_CROP
from facestream.vision.crops import cut_square, reference_region, square_region
from facestream.vision.faces import (
    REFERENCE_MATCH_IOU,
    FaceAnalyzer,
    ReferenceDetector,
    box_iou,
    reference_regions,
)
from facestream.scenes import load_rgb


@pytest.fixture(scope="module")
def square_analyzer():
    analyzer = FaceAnalyzer(square_crops=True)
    yield analyzer
    analyzer.close()


def test_crops_and_landmarks_come_with_every_face(square_analyzer, sample):
    faces = square_analyzer(load_rgb(sample("multi_face.jpg")))
    assert len(faces) == 5
    assert faces.chips.square.shape == (5, FACELLAVA_CROP, FACELLAVA_CROP, 3)
    assert faces.chips.square_landmarks.shape == (5, 136)
    one = faces.chips.take(2)
    assert np.array_equal(one.square[0], faces.chips.square[2])
    # Landmarks lie inside their crop: the detector box holds the face.
    pts = faces.chips.square_landmarks.reshape(5, 68, 2)
    assert (pts > -0.1).all() and (pts < 1.1).all()
    assert np.median(pts[:, :, 0]) == pytest.approx(0.5, abs=0.15)


def test_landmarks_land_on_the_same_pixels_in_the_crop(square_analyzer, sample):
    image = load_rgb(sample("single_face.jpg"))
    height, width = image.shape[:2]
    box = square_analyzer.detect_boxes(image)[0][0]
    faces = square_analyzer(image)
    ibug = faces.landmarks[0]
    crop, points = cut_square(image, square_region(box, width, height), ibug)
    assert np.array_equal(crop, faces.chips.square[0])
    # Colours under each landmark agree between frame and crop (sampling both).
    in_crop = (points.reshape(68, 2) * FACELLAVA_CROP).round().astype(int).clip(0, FACELLAVA_CROP - 1)
    in_frame = ibug.round().astype(int)
    in_frame[:, 0] = in_frame[:, 0].clip(0, width - 1)
    in_frame[:, 1] = in_frame[:, 1].clip(0, height - 1)
    frame_rgb = image[in_frame[:, 1], in_frame[:, 0]].astype(float)
    crop_rgb = crop[in_crop[:, 1], in_crop[:, 0]].astype(float)
    assert np.abs(frame_rgb - crop_rgb).mean() < 12
    # The crop is the detector box's square, stretched to 256²: x and y scale alike
    # unless the frame clips it.
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    expected = (ibug[30] - np.floor(box[:2])) * FACELLAVA_CROP / np.floor(side)
    assert points.reshape(68, 2)[30] * FACELLAVA_CROP == pytest.approx(expected, abs=FACELLAVA_CROP * 0.02)


def test_plain_analyzer_makes_no_square_crops(face_analyzer, sample):
    faces = face_analyzer(load_rgb(sample("single_face.jpg")))
    assert faces.chips.square is None and faces.chips.square_landmarks is None


# ---------------------------------------------------------------- the reference crop rule
@pytest.fixture(scope="module")
def reference_analyzer():
    analyzer = FaceAnalyzer(square_crops=True, crop_rule="reference")
    yield analyzer
    analyzer.close()


@pytest.fixture(scope="module")
def reference_detector():
    detector = ReferenceDetector()
    yield detector
    detector.close()


# (x, y, w, h) box, frame width, height -> region, by the crop tool's arithmetic at margin 0:
# margin = min(0, x, W - x - w, y, H - y - h); start = max(0, origin - margin); end =
# min(origin + (w + h) / 2 + margin, last index), each truncated.
@pytest.mark.parametrize("box,size,region", [
    ((100, 50, 80, 90), (640, 360), (100, 50, 185, 135)),        # inside: side 85
    ((100, 50, 80, 91), (640, 360), (100, 50, 185, 135)),        # side 85.5, ends truncated
    ((600, 50, 60, 60), (640, 360), (620, 70, 639, 90)),         # 20 px past the right edge
    ((-10, 20, 50, 50), (640, 360), (0, 30, 30, 60)),            # 10 px past the left edge
    ((300, 330, 40, 40), (640, 360), (310, 340, 330, 359)),      # 10 px past the bottom
])
def test_reference_region_is_the_crop_tools_arithmetic(box, size, region):
    assert reference_region(box, *size) == region


def test_reference_rule_cuts_the_tasks_detectors_box(reference_analyzer, reference_detector,
                                                     square_analyzer, sample):
    """One face: its crop is cut from the Tasks detector's integer box by the tool's rule,
    the landmarks mapped into that crop; facestream's crop of the same face differs (its box
    comes from the full-range model, ~10 % wider)."""
    image = load_rgb(sample("single_face.jpg"))
    height, width = image.shape[:2]
    [found] = reference_detector.detect(image)
    assert all(isinstance(v, int) for v in found)
    faces = reference_analyzer(image)
    assert len(faces) == 1 and not reference_analyzer.crop_fallbacks
    region = reference_region(found, width, height)
    crop, points = cut_square(image, region, faces.landmarks[0])
    np.testing.assert_array_equal(faces.chips.square[0], crop)
    np.testing.assert_array_equal(faces.chips.square_landmarks[0], points)
    own_box = square_analyzer.detect_boxes(image)[0][0]
    own = square_region(own_box, width, height)
    assert own != region and 0.6 < box_iou(own, region) < 0.95        # measured: 0.81
    assert not np.array_equal(square_analyzer(image).chips.square[0], crop)


def test_reference_rule_on_video_frames(reference_analyzer, reference_detector, sample):
    """Every sampled frame of a one-face clip gets the reference rule's crop (measured on all
    72 frames of single_face.mp4: IoU with facestream's crop 0.78-0.83)."""
    reference_analyzer.crop_fallbacks.clear()
    capture = cv2.VideoCapture(str(sample("single_face.mp4")))
    checked, index = 0, 0
    while (frame := capture.read()[1]) is not None:
        index += 1
        if index % 9:
            continue
        image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        faces = reference_analyzer(image)
        [found] = reference_detector.detect(image)
        crop, _ = cut_square(image, reference_region(found, *image.shape[1::-1]),
                             faces.landmarks[0])
        np.testing.assert_array_equal(faces.chips.square[0], crop)
        checked += 1
    capture.release()
    assert checked == 8 and not reference_analyzer.crop_fallbacks


def test_several_faces_keep_facestreams_crops_and_are_counted(reference_analyzer,
                                                               square_analyzer, sample):
    """The tool skips a frame with more than one face; facestream keeps every face's own crop
    there and counts each under "several faces"."""
    image = load_rgb(sample("multi_face.jpg"))
    reference_analyzer.crop_fallbacks.clear()
    faces = reference_analyzer(image)
    assert len(faces) == 5
    assert reference_analyzer.crop_fallbacks == {"several faces": 5}
    np.testing.assert_array_equal(faces.chips.square, square_analyzer(image).chips.square)


def test_reference_regions_reasons(square_analyzer, sample):
    """No reference face, or one that overlaps no tracked face: facestream's regions, with
    the reason; one reference face over a tracked face: that face alone takes its region."""
    image = load_rgb(sample("multi_face.jpg"))
    height, width = image.shape[:2]
    boxes = square_analyzer.detect_boxes(image)[0].tolist()
    own = [square_region(np.asarray(b, np.float32), width, height) for b in boxes]
    assert reference_regions(image, boxes, []) == (own, ["no face"] * 5)
    assert reference_regions(image, boxes, [(0, 0, 5, 5)]) == (own, ["other face"] * 5)
    x1, y1, x2, y2 = boxes[2]
    near = (int(x1) + 2, int(y1) + 2, int(x2 - x1), int(y2 - y1))
    assert box_iou(boxes[2], (near[0], near[1], near[0] + near[2], near[1] + near[3])) >= \
        REFERENCE_MATCH_IOU
    regions, reasons = reference_regions(image, boxes, [near])
    assert reasons == ["other face"] * 2 + [None] + ["other face"] * 2
    assert regions == own[:2] + [reference_region(near, width, height)] + own[3:]


def test_crop_rule_setting(sample):
    """facellava_crop_rule reaches the face stage; an unknown rule is refused in one line."""
    assert Settings.load().facellava_crop_rule == "facestream"
    with pytest.raises(ConfigError, match="facellava_crop_rule"):
        Settings.load({"facellava_crop_rule": "tasks"})
    with pytest.raises(ConfigError, match="crop rule 'tasks'"):
        FaceAnalyzer(square_crops=True, crop_rule="tasks")
    settings = Settings.load({"profile": "facellava", "facellava_checkpoint": "/nonexistent",
                              "facellava_crop_rule": "reference"})
    analyzer = FaceAnalyzer.from_settings(settings)
    try:
        analyzer(load_rgb(sample("multi_face.jpg")))
        assert analyzer.crop_fallbacks == {"several faces": 5}
    finally:
        analyzer.close()
