"""Face detection and landmarks with MediaPipe 0.10.21's bundled models.

Per frame: the full-range BlazeFace detector finds every face (the short-range one
stands in when it finds none, for close-ups); then MediaPipe's face-landmark model (the
468-point mesh) runs on *each* detection's region of interest, the square that MediaPipe's
own face mesh derives from a detection: the detector's box widened 1.5× on its long side,
turned upright by the line through the eyes (so the face count is not capped by a
whole-frame mesh's ``max_num_faces``, and no second detector runs inside each face).  A
detection the landmark model scores as no face is dropped: it was rarely a face.  The 68
iBUG points are read off the mesh with a fixed index table.

Face-LLaVA's 256² crops (``square_crops``) follow one of two rules (``crop_rule``):
"facestream" cuts them from each face's detector box above; "reference" from the box of
the reference's crop tool, which runs the short-range BlazeFace model through MediaPipe's
Tasks API (integer boxes) and accepts a frame only when it finds exactly one face.  That box
replaces the crop of the one face it overlaps (IoU >= ``REFERENCE_MATCH_IOU``); every other
face keeps facestream's crop, counted by reason in :attr:`FaceAnalyzer.crop_fallbacks`.

Not thread-safe (MediaPipe graphs keep state); one :class:`FaceAnalyzer` per thread.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facestream.errors import AssetError, ConfigError
from facestream.types import MESH_POINTS, DecodedFrame, FaceDetections
from facestream.vision.crops import make_chips, reference_region, square_region
from facestream.vision.float32 import atan2f, f32
from facestream.vision.landmarks import ibug68_from_mesh

ROI_SCALE = 1.5         # the landmark model's square, in long sides of the detector's box
CROP_RULES = ("facestream", "reference")
REFERENCE_MATCH_IOU = 0.3   # a reference box this close to a face's box is that face's

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


def graph_output(solution, image: np.ndarray, output: str):
    """``solution.process(image).<output>`` for a MediaPipe 0.10.21 solution whose one input
    stream is an image (FaceDetection, FaceMesh): the same packet, timestamp and graph calls,
    so the same result, without what ``process`` adds on every call: a namedtuple class made
    with ``collections.namedtuple`` (compiled with ``eval``, ~0.5 ms: ~4% of a worker's CPU,
    docs/PERFORMANCE.md) and the content of every other output stream."""
    (stream, kind), = solution._input_stream_type_info.items()
    if image.shape[2] != 3:
        raise ValueError("Input image must contain three channel rgb data.")
    return _run_graph(solution, {stream: solution._make_packet(kind, image)}, output)


def _run_graph(solution, packets: dict, output: str):
    """Send one packet per input stream at the next step of ``process``'s simulated 30 fps
    clock, wait, and return ``output``'s content (None when the graph gave none)."""
    solution._graph_outputs.clear()
    solution._simulated_timestamp += 33333
    for stream, packet in packets.items():
        solution._graph.add_packet_to_input_stream(
            stream=stream, packet=packet.at(solution._simulated_timestamp))
    solution._graph.wait_until_idle()
    packet = solution._graph_outputs.get(output)
    if packet is None:
        return None
    return solution._get_packet_content(solution._output_stream_type_info[output], packet)


# MediaPipe's face-landmark subgraph alone (the one its face mesh runs after its detector):
# an RGB frame and a region of interest in, the 468 points (normalised to the frame) out,
# or nothing when the model's face-presence score is under 0.5.
LANDMARK_GRAPH = """
input_stream: "image"
input_stream: "roi"
input_side_packet: "with_attention"
output_stream: "face_landmarks"
node {
  calculator: "FaceLandmarkCpu"
  input_stream: "IMAGE:image"
  input_stream: "ROI:roi"
  input_side_packet: "WITH_ATTENTION:with_attention"
  output_stream: "LANDMARKS:face_landmarks"
}
"""


class LandmarkModel:
    """MediaPipe's face-landmark model (the 468-point mesh, no iris) on a region of interest
    of a frame, as its face mesh runs it after detection.  Not thread-safe; :meth:`close`."""

    def __init__(self) -> None:
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import packet_creator, solution_base

        config = text_format.Parse(LANDMARK_GRAPH, calculator_pb2.CalculatorGraphConfig())
        self._graph = solution_base.SolutionBase(graph_config=config,
                                                 side_inputs={"with_attention": False})
        self._rect = rect_pb2.NormalizedRect
        self._proto_packet = packet_creator.create_proto
        self._image_kind = self._graph._input_stream_type_info["image"]

    def landmarks(self, image: np.ndarray, roi: tuple[float, float, float, float, float]):
        """The ``NormalizedLandmarkList`` of the face in ``roi`` (x_center, y_center, width,
        height, rotation: normalised to the frame, radians), or None."""
        cx, cy, width, height, rotation = roi
        rect = self._rect(x_center=cx, y_center=cy, width=width, height=height,
                          rotation=rotation)
        return _run_graph(self._graph, {
            "image": self._graph._make_packet(self._image_kind, image),
            "roi": self._proto_packet(rect)}, "face_landmarks")

    def close(self) -> None:
        self._graph.close()


def _upright(angle: float) -> float:
    """``angle`` (radians) brought into [-pi, pi), as MediaPipe's ``NormalizeRadians``."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def detection_roi(detection, width: int, height: int) -> tuple[float, float, float, float,
                                                                float]:
    """The landmark model's region of interest for a BlazeFace detection in a ``width`` ×
    ``height`` frame, as MediaPipe's face mesh derives it: the box's centre; its long side
    (in pixels) × ROI_SCALE for both sides; turned by the angle that makes the line from the
    first keypoint (right eye) to the second (left eye) horizontal, in [-pi, pi).

    Each step is float32 where MediaPipe's calculators compute in float, so the region, and
    so the mesh, is the one its own face mesh gets from the same detection."""
    rel = detection.location_data.relative_bounding_box
    right_eye, left_eye = detection.location_data.relative_keypoints[:2]
    x0, y0 = f32(right_eye.x * width), f32(right_eye.y * height)
    x1, y1 = f32(left_eye.x * width), f32(left_eye.y * height)
    angle = f32(_upright(f32(0.0 - atan2f(-f32(y1 - y0), f32(x1 - x0)))))
    side = max(f32(rel.width * width), f32(rel.height * height))
    return (f32(rel.xmin + f32(rel.width / 2)), f32(rel.ymin + f32(rel.height / 2)),
            f32(f32(side / width) * ROI_SCALE), f32(f32(side / height) * ROI_SCALE), angle)


# Mesh points whose line MediaPipe's face tracking turns horizontal: the outer corners of
# the eyes (left of the image, then right).
_EYE_CORNERS = (33, 263)
SAME_FACE_IOU = 0.5     # two followed faces whose meshes' boxes overlap this much are one


def mesh_roi(mesh: np.ndarray, width: int, height: int) -> tuple[float, float, float, float,
                                                                   float]:
    """The landmark model's region for a face in the next frame from its [468, 3] pixel mesh
    in this one, as MediaPipe's face tracking derives it: the mesh's box centre, its long
    side × ROI_SCALE, turned so the line through the outer eye corners is horizontal."""
    x1, y1 = (float(v) for v in mesh[:, :2].min(0))
    x2, y2 = (float(v) for v in mesh[:, :2].max(0))
    (ax, ay), (bx, by) = (mesh[i, :2].tolist() for i in _EYE_CORNERS)
    angle = _upright(-math.atan2(-(by - ay), bx - ax))
    side = max(x2 - x1, y2 - y1) * ROI_SCALE
    return ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, side / width, side / height, angle)


def _distinct(meshes: list, scores: list) -> tuple[list, list]:
    """The followed faces less any that has drifted onto an earlier one (their meshes'
    boxes overlap by SAME_FACE_IOU or more)."""
    boxes = [(*m[:, :2].min(0).tolist(), *m[:, :2].max(0).tolist()) for m in meshes]
    keep = [i for i in range(len(meshes))
            if all(box_iou(boxes[i], boxes[j]) < SAME_FACE_IOU for j in range(i))]
    return [meshes[i] for i in keep], [scores[i] for i in keep]


@dataclass
class FaceMemory:
    """What one stream's face stage keeps of its last picked frame to find the same faces
    in the next (:meth:`FaceAnalyzer.follow`): each face's next landmark region and detector
    score, when the detector last ran, and, while the picture is empty, a thumbnail of the
    frame it last ran on.  One per stream, its frames in order.  Needed only within a GOP
    (detection restarts at each), so a worker does not checkpoint it.

    ``motion_threshold`` > 0 gates detection on empty pictures: one that has not changed
    since its last detection (no pixel of its grey thumbnail, :func:`thumbnail`, moved by
    more than that many levels of 255) is not detected again until ``detect_interval_s``
    has passed; nothing enters a picture without changing it.  0: an empty picture is
    detected on every frame."""

    detect_interval_s: float
    motion_threshold: float = 0.0
    rois: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    detected_s: float | None = None     # media time of the last detection; None: never
    still: np.ndarray | None = None     # thumbnail of the last detection, if it found no face
    detections: int = 0                 # frames detected
    followed: int = 0                   # frames whose faces were followed instead
    unchanged: int = 0                  # empty frames not detected: nothing had moved
    _thumb: np.ndarray | None = field(default=None, repr=False)     # the frame being judged

    def due(self, frame: DecodedFrame) -> bool:
        """Whether ``frame`` must be detected: its GOP's first picked frame,
        ``detect_interval_s`` (0: every frame) since the last detection, time went back, or
        no face to follow (so a face entering an empty picture is found at once) unless the
        motion gate saw the picture unchanged since its last detection."""
        last = self.detected_s
        due = (frame.gop_start or last is None or frame.time_s < last
               or frame.time_s - last >= self.detect_interval_s - 1e-9)
        self._thumb = None
        if self.motion_threshold <= 0 or (self.rois and not due):
            return due or not self.rois
        self._thumb = thumbnail(frame.image)
        if due or self.rois:
            return True
        if self.still is None or self.still.shape != self._thumb.shape or int(
                np.abs(self._thumb - self.still).max()) > self.motion_threshold:
            return True
        self.unchanged += 1
        return False

    def forget(self) -> None:
        """Remember nothing: the next frame is detected."""
        self.rois, self.scores, self.detected_s, self.still = [], [], None, None

    def remember(self, rois: list, scores: list, *, detected_s: float | None = None) -> None:
        """Keep a frame's faces: detected at ``detected_s``, or (None) followed."""
        self.rois, self.scores = rois, [float(s) for s in scores]
        if detected_s is None:
            self.followed += 1
        else:
            self.detected_s = detected_s
            self.detections += 1
            self.still = self._thumb if not rois else None


THUMB_WIDTH = 64


def thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` (RGB) as a grey thumbnail THUMB_WIDTH wide, each pixel the mean of the
    area it covers (so sensor noise and compression ripple average out): int16."""
    height, width = image.shape[:2]
    size = (THUMB_WIDTH, max(1, round(THUMB_WIDTH * height / width)))
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.int16)


def face_memory(settings) -> FaceMemory | None:
    """A new stream's :class:`FaceMemory` under ``settings``, or None where every frame is
    detected: ``detect_interval_s`` 0, or the facellava profile (its crops are cut from
    detector boxes)."""
    if settings.detect_interval_s <= 0 or settings.profile == "facellava":
        return None
    return FaceMemory(settings.detect_interval_s, settings.detect_motion_threshold)


def box_iou(a, b) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2); 0 when either is empty."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


class ReferenceDetector:
    """The reference crop tool's face detector: MediaPipe's Tasks ``FaceDetector`` with its
    default options (score 0.5, suppression 0.3) on the short-range BlazeFace model.

    The tool ships that model as ``tools/detector.tflite``; the copy inside the mediapipe
    wheel (``modules/face_detection/face_detection_short_range.tflite``) gave the same boxes
    on every frame of the sample media (docs/FACE_LLAVA.md), so nothing is downloaded.
    Not thread-safe; :meth:`close` when done."""

    def __init__(self) -> None:
        try:
            import mediapipe
            from mediapipe.tasks.python import BaseOptions
            from mediapipe.tasks.python.vision import FaceDetector, FaceDetectorOptions
        except ImportError as exc:
            raise AssetError(f"mediapipe is not usable ({exc}); install facestream's "
                             "dependencies (`./dev setup`)") from None
        model = (Path(mediapipe.__file__).parent / "modules" / "face_detection"
                 / "face_detection_short_range.tflite")
        if not model.is_file():
            raise AssetError(f"mediapipe's short-range face model {model} is missing; "
                             "reinstall mediapipe (`./dev setup`)")
        self._mp = mediapipe
        self._detector = FaceDetector.create_from_options(
            FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model))))

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Every face of an [H, W, 3] uint8 RGB frame as the tool reads it: integer
        (x, y, w, h) pixel boxes, in the detector's order (unfiltered: any size, and
        possibly reaching past the frame)."""
        frame = self._mp.Image(image_format=self._mp.ImageFormat.SRGB,
                               data=np.ascontiguousarray(image))
        return [(d.bounding_box.origin_x, d.bounding_box.origin_y, d.bounding_box.width,
                 d.bounding_box.height) for d in self._detector.detect(frame).detections]

    def close(self) -> None:
        self._detector.close()


def reference_regions(image: np.ndarray, boxes: list[list[float]],
                      found: list[tuple[int, int, int, int]]) -> tuple[list, list[str | None]]:
    """Face-LLaVA crop regions under the reference rule for the faces whose detector boxes
    are ``boxes`` ([x1, y1, x2, y2] each), given the reference detector's ``found`` boxes.

    Returns (regions, reasons): per face, the reference region and None where the frame has
    exactly one reference face and it overlaps this face best (IoU >= REFERENCE_MATCH_IOU);
    else facestream's own region and why: "no face" (the reference finds none), "several
    faces" (it finds more than one: the tool skips such a frame) or "other face" (its one
    face is not this one)."""
    height, width = image.shape[:2]
    regions = [square_region(np.asarray(box, np.float32), width, height) for box in boxes]
    if len(found) != 1:
        reason = "no face" if not found else "several faces"
        return regions, [reason] * len(boxes)
    x, y, w, h = found[0]
    ious = [box_iou(box, (x, y, x + w, y + h)) for box in boxes]
    best = max(range(len(boxes)), key=ious.__getitem__, default=None)
    reasons: list[str | None] = ["other face"] * len(boxes)
    if best is not None and ious[best] >= REFERENCE_MATCH_IOU:
        regions[best] = reference_region(found[0], width, height)
        reasons[best] = None
    return regions, reasons


class FaceAnalyzer:
    """Detect faces and compute their mesh, landmarks and chips.  Blocking, CPU.

    ``square_crops`` adds Face-LLaVA's 256² crops under ``crop_rule`` (see the module's
    docstring); :attr:`crop_fallbacks` counts, by reason, the faces that kept facestream's
    crop under the reference rule."""

    def __init__(self, *, min_confidence: float = 0.5, min_face_px: int = 20,
                 max_faces: int = 16, square_crops: bool = False,
                 crop_rule: str = "facestream") -> None:
        if crop_rule not in CROP_RULES:
            raise ConfigError(f"Face-LLaVA crop rule {crop_rule!r}: expected one of "
                              f"{', '.join(CROP_RULES)}")
        os.environ.setdefault("GLOG_minloglevel", "2")   # MediaPipe's C++ info logs
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError as exc:
            raise AssetError(f"mediapipe is not usable ({exc}); install facestream's "
                             "dependencies (`./dev setup`)") from None
        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        # The full-range model misses faces that fill most of the frame (close-ups, photos);
        # the short-range one finds those, so it runs when the first finds nothing.
        self._close_detector = face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence)
        self._landmarks = LandmarkModel()
        self._min_face_px = min_face_px
        self._max_faces = max_faces
        self._square_crops = square_crops     # Face-LLaVA's 256² crops (facellava profile)
        self._reference = (ReferenceDetector() if square_crops and crop_rule == "reference"
                           else None)
        self.crop_fallbacks: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings) -> "FaceAnalyzer":
        """The face stage as ``settings`` configure it (its profile decides the crops)."""
        return cls(min_confidence=settings.min_detection_confidence,
                   min_face_px=settings.min_face_px, max_faces=settings.max_faces,
                   square_crops=settings.profile == "facellava",
                   crop_rule=settings.facellava_crop_rule)

    def close(self) -> None:
        self._detector.close()
        self._close_detector.close()
        self._landmarks.close()
        if self._reference is not None:
            self._reference.close()

    def detect_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detector only: ([N, 4] boxes in pixels, [N] scores), float32, largest first."""
        boxes, scores, _ = self._detect(image)
        return np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32)

    def _detect(self, image: np.ndarray) -> tuple[list[list[float]], list[float], list]:
        """:meth:`detect_boxes` as lists of Python floats holding the float32 values (the
        face stage reads them one by one, which on NumPy rows and scalars cost more than the
        rest of this method), with each face's landmark region (:func:`detection_roi`)."""
        height, width = image.shape[:2]
        detections = graph_output(self._detector, image, "detections")
        if not detections:
            detections = graph_output(self._close_detector, image, "detections")
        boxes, scores, found = [], [], []
        for det in detections or ():
            rel = det.location_data.relative_bounding_box
            x1, y1 = rel.xmin * width, rel.ymin * height
            x2, y2 = x1 + rel.width * width, y1 + rel.height * height
            if x2 - x1 >= self._min_face_px:
                boxes.append([f32(x1), f32(y1), f32(x2), f32(y2)])
                scores.append(det.score[0])             # a float32 field
                found.append(det)
        # Widest first (the width in float32), ties in detector order: a stable sort.
        order = sorted(range(len(boxes)), key=lambda i: -f32(boxes[i][2] - boxes[i][0]))
        order = order[: self._max_faces]
        return ([boxes[i] for i in order], [scores[i] for i in order],
                [detection_roi(found[i], width, height) for i in order])

    def mesh_in_roi(self, image: np.ndarray, roi) -> np.ndarray | None:
        """[468, 3] float32 mesh in frame pixels (z in the same pixel scale as x) of the face
        in ``roi`` (:func:`detection_roi`), or None when the model finds no face there."""
        face = self._landmarks.landmarks(image, roi)
        if face is None:
            return None
        points = _landmark_points(face)
        if len(points) > MESH_POINTS:           # iris points (refined meshes): not kept
            points = points[:MESH_POINTS]
        height, width = image.shape[:2]
        # In float64, then rounded once to float32.
        return np.multiply(points, (width, height, width), dtype=np.float64).astype(np.float32)

    def __call__(self, image: np.ndarray) -> FaceDetections:
        """All faces of one [H, W, 3] uint8 RGB frame."""
        return self._detected(image)[0]

    def follow(self, frame: DecodedFrame, memory: "FaceMemory") -> FaceDetections:
        """The faces of one stream's next picked ``frame``, given what ``memory`` (that
        stream's) kept of its previous one; updates ``memory``.

        The detector runs when a detection is due (:meth:`FaceMemory.due`: a GOP's first
        picked frame, nothing remembered, or ``detect_interval_s`` of media time since the
        last one).  Between detections each remembered face is found again by the landmark
        model on the region its previous mesh gives (MediaPipe's own face tracking), and
        keeps its last detector score; when any of them is not found there, this frame is
        detected after all.  A face entering an empty picture is found at once (nothing to
        follow: detected, unless the motion gate saw nothing change), one entering beside
        followed faces at the next detection.
        Not with ``square_crops`` (Face-LLaVA's crops are cut from detector boxes)."""
        image = frame.image
        height, width = image.shape[:2]
        if not self._square_crops and not memory.due(frame):
            meshes = [self.mesh_in_roi(image, roi) for roi in memory.rois]
            if all(mesh is not None for mesh in meshes):
                meshes, scores = _distinct(meshes, memory.scores)
                memory.remember([mesh_roi(mesh, width, height) for mesh in meshes], scores)
                return self._assembled(image, meshes, scores, [])
        found, meshes, scores = self._detected(image)
        memory.remember([mesh_roi(mesh, width, height) for mesh in meshes], scores,
                        detected_s=frame.time_s)
        return found

    def _detected(self, image: np.ndarray) -> tuple[FaceDetections, list, list]:
        """(faces, their meshes, their detector scores) of ``image`` by detection."""
        det_boxes, det_scores, rois = self._detect(image)
        meshes, scores, kept = [], [], []
        for box, score, roi in zip(det_boxes, det_scores, rois):
            mesh = self.mesh_in_roi(image, roi)
            if mesh is not None:
                meshes.append(mesh)
                scores.append(score)
                kept.append(box)
        return self._assembled(image, meshes, scores, kept), meshes, scores

    def _assembled(self, image: np.ndarray, meshes: list, scores: list,
                   kept: list) -> FaceDetections:
        """:class:`FaceDetections` of faces with these meshes and scores (``kept``: their
        detector boxes, for Face-LLaVA's crops)."""
        if not meshes:
            return FaceDetections.empty()
        mesh_a = np.array(meshes)               # one C call, where np.stack makes several
        landmarks = ibug68_from_mesh(mesh_a)    # float32, as the mesh
        # x and y as contiguous rows [N, 2, 468]: numpy's min over a strided axis costs 5x.
        xy = np.ascontiguousarray(mesh_a[:, :, :2].transpose(0, 2, 1))
        boxes = np.concatenate([xy.min(2), xy.max(2)], axis=1)
        chips = make_chips(image, landmarks, self._square_regions(image, kept))
        return FaceDetections(boxes, np.array(scores, np.float32), mesh_a, landmarks, chips)

    def _square_regions(self, image: np.ndarray, boxes: list[list[float]]) -> list | None:
        """Face-LLaVA crop regions of the kept faces (None without ``square_crops``)."""
        if not self._square_crops:
            return None
        if self._reference is None:
            height, width = image.shape[:2]
            return [square_region(box, width, height)
                    for box in np.array(boxes, np.float32)]
        regions, reasons = reference_regions(image, boxes, self._reference.detect(image))
        self.crop_fallbacks.update(r for r in reasons if r is not None)
        return regions
