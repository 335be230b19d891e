"""Fixed tables mapping MediaPipe's 468-point face mesh to the layouts other models expect.

* :data:`MESH_TO_IBUG68` — the 68-point iBUG/dlib layout Face-LLaVA was trained with: jaw
  0–16, brows 17–26, nose 27–35, eyes 36–47, outer lips 48–59, inner lips 60–67.  Image-left
  comes first within each pair, as in iBUG (36 = image-left eye's outer corner).
* :data:`IBUG68_TO_DLIB5` — dlib's 5-point layout (eye corners and the base of the nose),
  which the age and gender nets' face chips are aligned to.
"""

from __future__ import annotations

import numpy as np

MESH_TO_IBUG68 = np.array([
    # jaw, image-left ear to image-right ear (0-16)
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,
    # brows, outer to inner then inner to outer (17-21, 22-26)
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    # nose bridge top to tip (27-30), nostrils left to right (31-35)
    168, 197, 5, 4, 98, 97, 2, 326, 327,
    # image-left eye: outer, upper-outer, upper-inner, inner, lower-inner, lower-outer (36-41)
    33, 160, 158, 133, 153, 144,
    # image-right eye: inner, upper-inner, upper-outer, outer, lower-outer, lower-inner (42-47)
    362, 385, 387, 263, 373, 380,
    # outer lips from the image-left corner, clockwise (48-59)
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    # inner lips from the image-left corner, clockwise (60-67)
    78, 82, 13, 312, 308, 317, 14, 87,
], dtype=np.int64)
assert MESH_TO_IBUG68.shape == (68,)

# dlib 5-point order: image-right eye outer, image-right eye inner, image-left eye outer,
# image-left eye inner, base of the nose.
IBUG68_TO_DLIB5 = np.array([45, 42, 36, 39, 33], dtype=np.int64)

# Where dlib's get_face_chip_details puts those 5 points in a chip of unit size with no
# padding (x, y); padding p maps u -> (u + p) / (1 + 2p).
DLIB5_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
], dtype=np.float64)

# Face-LLaVA's 9 face regions over the 68 points (as the released model groups them).
IBUG68_REGIONS = {
    "jaw": range(0, 17), "right_brow": range(17, 22), "left_brow": range(22, 27),
    "nose_bridge": range(27, 31), "nostrils": range(31, 36), "right_eye": range(36, 42),
    "left_eye": range(42, 48), "outer_lips": range(48, 60), "inner_lips": range(60, 68),
}


def ibug68_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """[..., 468, 2+] mesh points -> [..., 68, 2] iBUG points, same units."""
    return mesh[..., MESH_TO_IBUG68, :2]
