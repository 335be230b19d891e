"""Face-LLaVA's face crops and landmarks, as the worker stage makes them from real photos."""

from __future__ import annotations

import numpy as np
import pytest

from facestream.types import FACELLAVA_CROP
from facestream.vision.crops import square_crop
from facestream.vision.faces import FaceAnalyzer
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
    crop, points = square_crop(image, box, ibug)
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
