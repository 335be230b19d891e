"""The mesh-to-iBUG-68 table, checked on a real face."""

from __future__ import annotations

import numpy as np

from facestream.vision.landmarks import IBUG68_REGIONS, MESH_TO_IBUG68
from facestream.scenes import load_rgb


def test_ibug_table_is_a_proper_68_point_layout(face_analyzer, sample):
    assert len(set(MESH_TO_IBUG68.tolist())) == 68 and MESH_TO_IBUG68.max() < 468
    assert sum(len(r) for r in IBUG68_REGIONS.values()) == 68
    lm = face_analyzer(load_rgb(sample("single_face.jpg"))).landmarks[0]
    x, y = lm[:, 0], lm[:, 1]
    assert x[36] < x[39] < x[42] < x[45]               # eye corners, image left to right
    assert x[0] < x[8] < x[16] and y[8] == y.max()     # jaw, chin lowest
    assert x[48] < x[51] < x[54] and y[51] < y[57]     # mouth corners, upper above lower
    assert y[19] < y[37] and y[24] < y[44]             # brows above eyes
    assert y[27] < y[30] < y[33]                       # nose top to bottom


def test_landmark_array_reads_the_wire_form_as_the_attributes_give_it():
    from mediapipe.framework.formats import landmark_pb2

    from facestream.vision.faces import landmark_array

    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 2, (468, 3)).astype(np.float32)
    points[5] = 0.0                                     # explicit zeros stay on the wire
    plain = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in points:
        plain.landmark.add(x=x, y=y, z=z)
    np.testing.assert_array_equal(landmark_array(plain), points.astype(np.float64))
    # Other layouts take the point-by-point path: visibility set, a field left out.
    visible = landmark_pb2.NormalizedLandmarkList()
    visible.CopyFrom(plain)
    visible.landmark[3].visibility = 0.5
    np.testing.assert_array_equal(landmark_array(visible), points.astype(np.float64))
    partial = landmark_pb2.NormalizedLandmarkList()
    partial.CopyFrom(plain)
    partial.landmark[7].ClearField("z")
    expected = points.astype(np.float64)
    expected[7, 2] = 0.0
    np.testing.assert_array_equal(landmark_array(partial), expected)
    assert landmark_array(landmark_pb2.NormalizedLandmarkList()).shape == (0, 3)
