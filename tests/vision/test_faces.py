"""The face stage's MediaPipe calls, against MediaPipe's own ``process``."""

from __future__ import annotations

import numpy as np

from facestream.scenes import load_rgb
from facestream.vision.faces import graph_output


def _wire(items) -> list[bytes] | None:
    return None if items is None else [item.SerializeToString() for item in items]


def test_graph_output_gives_what_process_gives_call_after_call(sample):
    """Two graphs of each kind fed the same frames in the same order, one through
    ``process``, one through :func:`graph_output`: the same protos every call, a frame
    without a face included (its None must not be the previous frame's output)."""
    from mediapipe.python.solutions import face_detection, face_mesh

    faces = load_rgb(sample("multi_face.jpg"))
    one = load_rgb(sample("single_face.jpg"))
    blank = np.zeros((240, 320, 3), np.uint8)
    frames = [faces, blank, one, blank, faces]
    kinds = [(lambda: face_detection.FaceDetection(model_selection=1), "detections"),
             (lambda: face_detection.FaceDetection(model_selection=0), "detections"),
             (lambda: face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1),
              "multi_face_landmarks")]
    for make, output in kinds:
        theirs, ours = make(), make()
        try:
            got = [_wire(graph_output(ours, frame, output)) for frame in frames]
            want = [_wire(getattr(theirs.process(frame), output)) for frame in frames]
        finally:
            theirs.close()
            ours.close()
        assert got == want, output
        assert got[1] is None and got[0], output          # a face found, then none


def _video_frames(path, every: int, count: int) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def test_landmark_model_on_a_detections_region_is_mediapipes_face_mesh(sample):
    """The face stage's mesh: the landmark model alone on :func:`detection_roi` of a
    detection must be what MediaPipe's face mesh gives for the same frame when its own
    detector (the short-range model) finds the same face — the same region (box centre, long
    side × 1.5, turned upright by the eyes, in float32), so the same 468 points, bit for bit.
    Photos and video frames of one face, faces turned and tilted."""
    from mediapipe.python.solutions import face_detection, face_mesh

    from facestream.vision.faces import LandmarkModel, _landmark_points, detection_roi

    frames = [load_rgb(sample(name)) for name in
              ("single_face.jpg", "0-f1-su-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")]
    frames += _video_frames(sample("single_face.mp4"), every=7, count=8)
    detector = face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)
    mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1)
    model = LandmarkModel()
    compared, turned = 0, 0
    try:
        for frame in frames:
            height, width = frame.shape[:2]
            found = graph_output(detector, frame, "detections")
            theirs = graph_output(mesh, frame, "multi_face_landmarks")
            if not found or len(found) != 1 or not theirs:
                continue
            roi = detection_roi(found[0], width, height)
            turned += abs(roi[4]) > 0.01
            ours = model.landmarks(frame, roi)
            assert ours is not None
            assert ours.SerializeToString() == theirs[0].SerializeToString()
            assert len(_landmark_points(ours)) == 468
            compared += 1
        # No face, no landmarks: a region of a blank frame.
        assert model.landmarks(np.zeros((240, 320, 3), np.uint8), (0.5, 0.5, 0.4, 0.6, 0.0)) is None
    finally:
        detector.close()
        mesh.close()
        model.close()
    assert compared >= 10 and turned >= 3, (compared, turned)
