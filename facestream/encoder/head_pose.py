"""Cheap head pose (yaw, pitch, roll in degrees) from MediaPipe's 468-point face mesh.

No solvePnP and no camera model: the mesh already carries a depth coordinate ``z`` on the
same scale as ``x`` (weak perspective), so the head's axes are read straight off it.

* across the face (``u``): the mean of the vectors from the subject's right to left of four
  symmetric point pairs (outer and inner eye corners, cheek extremes, mouth corners);
* down the face (``v``): forehead centre to chin, made orthogonal to ``u``;
* out of the back of the head: ``w = u x v``.

``R = [u v w]`` (columns) rotates face axes into image axes (x right, y down, z away from
the camera); it is decomposed as ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``.  Signs, as seen in the
image:

* ``yaw`` > 0: the face turns toward the image's right (the subject's left);
* ``pitch`` > 0: the face tilts up (chin forward);
* ``roll`` > 0: the head tilts clockwise in the image (the image-right eye lower).

Accuracy limits: for a rigidly rotated mesh the angles are exact (the unit tests rotate a
mesh by known angles).  On real faces the error is that of the mesh, whose depth MediaPipe
infers from one image; there is no ground-truth pose in the sample set, so yaw and pitch are
checked only for sign and symmetry (a mirrored photo gives the opposite yaw within 3
degrees), and strong turns are likely to read low.  Pitch zero is the mean over the sample
photos (:data:`PITCH_OFFSET_DEG`), which spread about +-5 degrees around it, and a person's
habitual head carriage shifts it as much.  Roll follows the eye line and is the most
reliable: turning the sample photo in the image plane by +-10 and +-20 degrees changed it by
the same angle within 0.5 degrees (the tests allow 2.5).  Good for noticing that a head
moved, not for gaze.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Subject's (right, left) point pairs of the mesh: outer eye corners, inner eye corners,
# cheek extremes, mouth corners.  Subject's right is the image's left.
_PAIRS = np.array([(33, 263), (133, 362), (234, 454), (61, 291)], dtype=np.int64)
_FOREHEAD, _CHIN = 10, 152
# What the raw pitch reads for a face looking at the camera (the forehead-to-chin line is
# not quite upright in the mesh): the mean over the 10 faces of the sample set's photos
# (spread about +-5 degrees); it is subtracted so that looking at the camera is 0.
PITCH_OFFSET_DEG = -2.0


@dataclass(frozen=True)
class HeadPose:
    """Head orientation in degrees (see the module docstring for the signs)."""

    yaw: float
    pitch: float
    roll: float

    def as_array(self) -> np.ndarray:
        """[3] float64 (yaw, pitch, roll)."""
        return np.array([self.yaw, self.pitch, self.roll], np.float64)

    def as_dict(self) -> dict[str, float]:
        return {"yaw": round(self.yaw, 1), "pitch": round(self.pitch, 1),
                "roll": round(self.roll, 1)}


def rotation(mesh: np.ndarray) -> np.ndarray:
    """[3, 3] rotation whose columns are the face's axes in image axes; ``mesh`` [468, 3]
    pixels (x, y) and pixel-like depth (z).  Raises ValueError for a degenerate mesh."""
    p = np.asarray(mesh, np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] < 468:
        raise ValueError(f"head pose needs a [468, 3] mesh, got {p.shape}")
    across = (p[_PAIRS[:, 1]] - p[_PAIRS[:, 0]]).mean(0)          # [3]
    down = p[_CHIN] - p[_FOREHEAD]                                  # [3]
    norm = np.linalg.norm(across)
    if norm < 1e-6:
        raise ValueError("degenerate mesh: the face has no width")
    u = across / norm
    down = down - (down @ u) * u
    norm = np.linalg.norm(down)
    if norm < 1e-6:
        raise ValueError("degenerate mesh: the face has no height")
    v = down / norm
    return np.stack([u, v, np.cross(u, v)], axis=1)


def from_rotation(r: np.ndarray) -> HeadPose:
    """Angles of ``r`` = Rz(roll) @ Ry(yaw) @ Rx(pitch), ``r`` as :func:`rotation` gives."""
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    # The formulas give the rotation's own signs; flip those whose image reading is the
    # opposite of the documented one (z points away from the camera, y down).
    return HeadPose(yaw=float(-yaw), pitch=float(-pitch - PITCH_OFFSET_DEG), roll=float(roll))


def estimate(mesh: np.ndarray) -> HeadPose:
    """Head pose of one face mesh [468, 3].  Pure; raises ValueError for a degenerate mesh."""
    return from_rotation(rotation(mesh))


def window_pose(meshes: np.ndarray) -> HeadPose:
    """Median yaw, pitch and roll over a window's meshes [T, 468, 3]."""
    angles = np.array([estimate(m).as_array() for m in meshes])     # [T, 3]
    yaw, pitch, roll = np.median(angles, axis=0)
    return HeadPose(float(yaw), float(pitch), float(roll))
