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
from facestream.vision.float32 import f32
from facestream.vision.landmarks import ibug68_from_mesh

CROP_SCALE = 1.6        # mesh crop side, in detection-box sides

# One face-mesh landmark as protobuf serialises it (mediapipe's NormalizedLandmark with x, y
# and z set, nothing else), 17 bytes: the list's field key (1, length-delimited), the
# record's length (15), then x, y, z as fixed32 fields 1-3: a tag byte and a little-endian
# float each (x at byte 3, y at 8, z at 13).  ``_LANDMARK_FRAMING``: the fixed bytes of every
# record, (offset, value).
_LANDMARK_SIZE = 17
_LANDMARK_FRAMING = ((0, b"\x0a"), (1, b"\x0f"), (2, b"\x0d"), (7, b"\x15"), (12, b"\x1d"))


def landmark_array(landmarks) -> np.ndarray:
    """[K, 3] float64 x, y, z of a MediaPipe ``NormalizedLandmarkList``."""
    return _landmark_points(landmarks).astype(np.float64)


def _landmark_points(landmarks) -> np.ndarray:
    """[K, 3] float32 x, y, z of a ``NormalizedLandmarkList`` (the values protobuf holds).

    Reading the 468 points of a face attribute by attribute costs ~0.4 ms of Python per
    face.  Serialised, the list is an array of fixed 17-byte records
    when every landmark carries exactly x, y and z (the face mesh's do), so one strided
    view of the bytes reads it (read-only).  Any other layout (visibility or presence set,
    a field missing) is recognised by its size or tag bytes and read point by point instead.
    """
    count = len(landmarks.landmark)
    raw = landmarks.SerializeToString()
    size = _LANDMARK_SIZE
    if count and len(raw) == count * size and all(raw[offset::size] == byte * count
                                                  for offset, byte in _LANDMARK_FRAMING):
        # x, y, z 5 bytes apart from byte 3 of each record: one [K, 3] float32 view.
        return np.ndarray((count, 3), "<f4", raw, 3, (size, 5))
    return np.array([(p.x, p.y, p.z) for p in landmarks.landmark], np.float32).reshape(-1, 3)


def mesh_crop(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """The face mesh's crop (x1, y1, x2, y2) for a detector box: a square CROP_SCALE box
    sides wide around the box's centre, clipped to the frame.

    ``box`` holds float32 values (as Python floats); its centre and sides are float32 sums
    and differences, as they were on the box's NumPy scalars, at a fraction of the cost."""
    bx1, by1, bx2, by2 = box
    cx, cy = f32(bx1 + bx2) / 2, f32(by1 + by2) / 2
    side = max(f32(bx2 - bx1), f32(by2 - by1)) * CROP_SCALE
    return (int(max(0, cx - side / 2)), int(max(0, cy - side / 2)),
            int(min(width, cx + side / 2)), int(min(height, cy + side / 2)))


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
        """Detector only: ([N, 4] boxes in pixels, [N] scores), float32, largest first."""
        boxes, scores = self._detect(image)
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)

    def _detect(self, image: np.ndarray) -> tuple[list[list[float]], list[float]]:
        """:meth:`detect_boxes` as lists of Python floats holding the float32 values: the
        face stage reads them one by one, which on NumPy rows and scalars cost more than
        the rest of this method."""
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
                boxes.append([f32(x1), f32(y1), f32(x2), f32(y2)])
                scores.append(det.score[0])             # a float32 field
        # Widest first (the width in float32), ties in detector order: a stable sort.
        order = sorted(range(len(boxes)), key=lambda i: -f32(boxes[i][2] - boxes[i][0]))
        order = order[: self._max_faces]
        return [boxes[i] for i in order], [scores[i] for i in order]

    def mesh_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """[468, 3] mesh in frame pixels for the face in ``box`` (a detector box, float32
        [x1, y1, x2, y2]), or None if none is found."""
        return self._mesh_in_box(image, np.asarray(box, np.float32).tolist())

    def _mesh_in_box(self, image: np.ndarray, box: list[float]) -> np.ndarray | None:
        """:meth:`mesh_in_box` for a box given as its float32 values in Python floats."""
        height, width = image.shape[:2]
        x1, y1, x2, y2 = mesh_crop(box, width, height)
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        crop = np.ascontiguousarray(image[y1:y2, x1:x2])
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        points = _landmark_points(result.multi_face_landmarks[0])
        if len(points) > MESH_POINTS:           # iris points (refined meshes): not kept
            points = points[:MESH_POINTS]
        cw, ch = x2 - x1, y2 - y1
        # In float64, then rounded once to float32.  Adding -0.0 leaves every z as it is
        # (a -0.0 too), so x, y and z take one addition.
        mesh = np.multiply(points, (cw, ch, cw), dtype=np.float64)
        mesh += (x1, y1, -0.0)
        return mesh.astype(np.float32)

    def __call__(self, image: np.ndarray) -> FaceDetections:
        """All faces of one [H, W, 3] uint8 RGB frame."""
        det_boxes, det_scores = self._detect(image)
        meshes, scores, kept = [], [], []
        for box, score in zip(det_boxes, det_scores):
            mesh = self._mesh_in_box(image, box)
            if mesh is not None:
                meshes.append(mesh)
                scores.append(score)
                kept.append(box)
        if not meshes:
            return FaceDetections.empty()
        mesh_a = np.array(meshes)               # one C call, where np.stack makes several
        landmarks = ibug68_from_mesh(mesh_a)    # float32, as the mesh
        # x and y as contiguous rows [N, 2, 468]: numpy's min over a strided axis costs 5x.
        xy = np.ascontiguousarray(mesh_a[:, :, :2].transpose(0, 2, 1))
        boxes = np.concatenate([xy.min(2), xy.max(2)], axis=1)
        chips = make_chips(image, landmarks,
                           np.array(kept, np.float32) if self._square_crops else None)
        return FaceDetections(boxes, np.array(scores, np.float32), mesh_a, landmarks, chips)
