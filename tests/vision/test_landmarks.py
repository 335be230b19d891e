"""The mesh-to-iBUG-68 table, checked on a real face."""

from __future__ import annotations

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
