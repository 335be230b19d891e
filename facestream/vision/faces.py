"""Face detection and landmarks with MediaPipe 0.10.21's bundled models.

Per frame: the full-range BlazeFace detector finds every face (the short-range one
stands in when it finds none, for close-ups); then the face-mesh model runs
on a square crop around *each* detection (so the face count is not capped by a whole-frame
mesh's ``max_num_faces``).  A detection whose crop yields no mesh is dropped: it was rarely a
face.  The 68 iBUG points are read off the mesh with a fixed index table.

Not thread-safe (MediaPipe graphs keep state); one :class:`FaceAnalyzer` per thread.
"""

from __future__ import annotations

import os

import numpy as np

from facestream.errors import AssetError
from facestream.types import MESH_POINTS, FaceDetections
from facestream.vision.crops import make_chips
from facestream.vision.landmarks import ibug68_from_mesh

CROP_SCALE = 1.6        # mesh crop side, in detection-box sides

# One face-mesh landmark as protobuf serialises it (mediapipe's NormalizedLandmark with x, y
# and z set, nothing else): the list's field key (1, length-delimited), the record's length
# (15), then x, y, z as fixed32 fields 1-3: tag byte and a little-endian float each.
# ``_LANDMARK_FRAMING``: the fixed bytes of every record, (offset, value).
_LANDMARK_RECORD = np.dtype([("key", "u1"), ("size", "u1"), ("x_tag", "u1"), ("x", "<f4"),
                             ("y_tag", "u1"), ("y", "<f4"), ("z_tag", "u1"), ("z", "<f4")])
_LANDMARK_FRAMING = ((0, b"\x0a"), (1, b"\x0f"), (2, b"\x0d"), (7, b"\x15"), (12, b"\x1d"))


def landmark_array(landmarks) -> np.ndarray:
    """[K, 3] float64 x, y, z of a MediaPipe ``NormalizedLandmarkList``.

    Reading the 468 points of a face attribute by attribute costs ~0.4 ms of Python per
    face.  Serialised, the list is an array of fixed 17-byte records
    when every landmark carries exactly x, y and z (the face mesh's do), so one
    ``frombuffer`` reads it, with the same float32 values.  Any other layout (visibility or
    presence set, a field missing) is recognised by its size or tag bytes and read point by
    point instead.
    """
    count = len(landmarks.landmark)
    raw = landmarks.SerializeToString()
    size = _LANDMARK_RECORD.itemsize
    if len(raw) == count * size and all(raw[offset::size] == byte * count
                                        for offset, byte in _LANDMARK_FRAMING):
        records = np.frombuffer(raw, _LANDMARK_RECORD)
        xyz = np.empty((count, 3))
        xyz[:, 0], xyz[:, 1], xyz[:, 2] = records["x"], records["y"], records["z"]
        return xyz
    return np.array([(p.x, p.y, p.z) for p in landmarks.landmark], np.float64).reshape(-1, 3)


class FaceAnalyzer:
    """Detect faces and compute their mesh, landmarks and chips.  Blocking, CPU."""

    def __init__(self, *, min_confidence: float = 0.5, min_face_px: int = 20,
                 max_faces: int = 16, square_crops: bool = False) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")   # MediaPipe's C++ info logs
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as exc:
            raise AssetError(f"mediapipe is not usable ({exc}); install facestream's "
                             "dependencies (`./dev setup`)") from None
        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        # The full-range model misses faces that fill most of the frame (close-ups, photos);
        # the short-range one finds those, so it runs when the first finds nothing.
        self._close_detector = face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence)
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                        refine_landmarks=False, min_detection_confidence=0.3)
        self._min_face_px = min_face_px
        self._max_faces = max_faces
        self._square_crops = square_crops     # Face-LLaVA's 256² crops (facellava profile)

    @classmethod
    def from_settings(cls, settings) -> "FaceAnalyzer":
        """The face stage as ``settings`` configure it (its profile decides the crops)."""
        return cls(min_confidence=settings.min_detection_confidence,
                   min_face_px=settings.min_face_px, max_faces=settings.max_faces,
                   square_crops=settings.profile == "facellava")

    def close(self) -> None:
        self._detector.close()
        self._close_detector.close()
        self._mesh.close()

    def detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector only: ([N, 4] boxes in pixels, [N] scores), largest first."""
        height, width = image.shape[:2]
        result = self._detector.process(image)
        if not result.detections:
            result = self._close_detector.process(image)
        boxes, scores = [], []
        for det in result.detections or ():
            rel = det.location_data.relative_bounding_box
            x1, y1 = rel.xmin * width, rel.ymin * height
            x2, y2 = x1 + rel.width * width, y1 + rel.height * height
            if x2 - x1 >= self._min_face_px:
                boxes.append((x1, y1, x2, y2))
                scores.append(det.score[0])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        boxes_a, scores_a = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
        order = np.argsort(-(boxes_a[:, 2] - boxes_a[:, 0]), kind="stable")[: self._max_faces]
        return boxes_a[order], scores_a[order]

    def mesh_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """[468, 3] mesh in frame pixels for the face in ``box``, or None if none is found."""
        height, width = image.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * CROP_SCALE
        x1, y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x2, y2 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        crop = np.ascontiguousarray(image[y1:y2, x1:x2])
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        mesh = landmark_array(result.multi_face_landmarks[0])[:MESH_POINTS]
        cw, ch = x2 - x1, y2 - y1
        mesh *= (cw, ch, cw)                    # in float64, then rounded once to float32
        mesh[:, 0] += x1
        mesh[:, 1] += y1
        return mesh.astype(np.float32)

    def __call__(self, image: np.ndarray) -> FaceDetections:
        """All faces of one [H, W, 3] uint8 RGB frame."""
        det_boxes, det_scores = self.detect_boxes(image)
        meshes, scores, kept = [], [], []
        for box, score in zip(det_boxes, det_scores):
            mesh = self.mesh_in_box(image, box)
            if mesh is not None:
                meshes.append(mesh)
                scores.append(score)
                kept.append(box)
        if not meshes:
            return FaceDetections.empty()
        mesh_a = np.stack(meshes)
        landmarks = ibug68_from_mesh(mesh_a).astype(np.float32)
        # x and y as contiguous rows [N, 2, 468]: numpy's min over a strided axis costs 5x.
        xy = np.ascontiguousarray(mesh_a[:, :, :2].transpose(0, 2, 1))
        boxes = np.concatenate([xy.min(2), xy.max(2)], axis=1).astype(np.float32)
        chips = make_chips(image, landmarks, np.stack(kept) if self._square_crops else None)
        return FaceDetections(boxes, np.asarray(scores, np.float32), mesh_a, landmarks, chips)
