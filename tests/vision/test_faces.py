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
