"""Faces followed from frame to frame between detections (``detect_interval_s``)."""

from __future__ import annotations

import numpy as np
import pytest

from facestream.config import Settings
from facestream.retry import Backoff
from facestream.ingest.sources import parse_source
from facestream.scenes import load_rgb
from facestream.types import DecodedFrame
from facestream.vision.decode import Decoder
from facestream.vision.faces import FaceMemory, box_iou, face_memory, thumbnail


def _decoded(path, fps: float) -> list[DecodedFrame]:
    with Decoder(parse_source(str(path)), stream_id="s", fps=fps, backoff=Backoff(1, 0.1, 0.1),
                 timeout_s=10, threads=1) as decoder:
        return list(decoder.frames())


def _frame(image, time_s: float, *, gop_start: bool = False) -> DecodedFrame:
    return DecodedFrame("s", 0, None, time_s, image, 0.0, gop_start=gop_start)


@pytest.fixture
def counted(face_analyzer, monkeypatch):
    """The session's analyzer, counting its detector runs."""
    runs = []
    detect = face_analyzer._detect

    def counting(image):
        runs.append(1)
        return detect(image)

    monkeypatch.setattr(face_analyzer, "_detect", counting)
    return face_analyzer, runs


def test_followed_faces_are_the_detected_faces_for_a_fraction_of_the_detector_runs(
        sample, counted):
    """Two people talking, 5 fps, GOPs of 3 s: every frame has the faces that detecting it
    finds (same count, boxes overlapping by IoU >= 0.85), and the detector ran only at each
    GOP's first frame and once a second between."""
    analyzer, runs = counted
    frames = _decoded(sample("WolfgangLanger_Pexels.mp4"), 5.0)
    detected = [analyzer(frame.image) for frame in frames]
    runs.clear()
    memory = FaceMemory(1.0)
    followed = [analyzer.follow(frame, memory) for frame in frames]
    assert [len(f) for f in followed] == [len(d) for d in detected]
    assert sum(len(d) for d in detected) >= len(frames)            # the clip has faces
    for got, want in zip(followed, detected):
        for box in want.boxes:
            assert max(box_iou(box.tolist(), b.tolist()) for b in got.boxes) >= 0.85
    # Detections: the GOP starts, and one per second of media time between them.
    seconds = frames[-1].time_s - frames[0].time_s
    gops = sum(f.gop_start for f in frames)
    assert gops >= 2 and len(runs) == memory.detections
    assert memory.detections <= gops + seconds + 1
    assert memory.followed == len(frames) - memory.detections
    assert memory.followed >= 0.7 * len(frames)
    # What a followed frame holds is the face stage's whole output: mesh, landmarks, chips.
    one = followed[1]
    assert one.mesh.shape == (len(one), 468, 3) and one.landmarks.shape == (len(one), 68, 2)
    assert one.chips.expression.shape == (len(one), 64, 64)


def test_detection_is_due_at_a_gop_with_nothing_to_follow_and_each_interval():
    image = np.zeros((8, 8, 3), np.uint8)
    memory = FaceMemory(1.0)
    assert memory.due(_frame(image, 0.0))                       # never detected
    memory.remember([(0.5, 0.5, 0.2, 0.2, 0.0)], [0.9], detected_s=0.0)
    assert not memory.due(_frame(image, 0.2))
    assert not memory.due(_frame(image, 0.8))
    assert memory.due(_frame(image, 1.0))                       # the interval
    assert memory.due(_frame(image, 0.4, gop_start=True))       # a GOP starts
    assert memory.due(_frame(image, -0.2))                      # time went back
    memory.remember([], [])                                     # every face gone
    assert memory.due(_frame(image, 0.2))
    memory.remember([(0.5, 0.5, 0.2, 0.2, 0.0)], [0.9])
    memory.forget()
    assert memory.due(_frame(image, 0.2))
    every = FaceMemory(0.0)
    every.remember([(0.5, 0.5, 0.2, 0.2, 0.0)], [0.9], detected_s=0.0)
    assert every.due(_frame(image, 0.2))


def test_a_face_lost_between_detections_makes_the_frame_detect(sample, counted):
    """A remembered region that holds no face (the face moved away from it): the frame is
    detected after all, and the face is where it is."""
    analyzer, runs = counted
    image = load_rgb(sample("single_face.jpg"))
    memory = FaceMemory(1.0)
    first = analyzer.follow(_frame(image, 0.0, gop_start=True), memory)
    assert len(first) == 1 and len(runs) == 1
    memory.rois = [(0.05, 0.05, 0.08, 0.08, 0.0)]              # a corner: no face there
    again = analyzer.follow(_frame(image, 0.2), memory)
    assert len(runs) == 2 and memory.detections == 2 and memory.followed == 0
    np.testing.assert_array_equal(again.boxes, first.boxes)


def test_a_face_entering_beside_followed_ones_is_found_at_the_next_detection(sample, counted):
    analyzer, runs = counted
    image = load_rgb(sample("multi_face.jpg"))
    everyone = analyzer(image)
    assert len(everyone) >= 3
    memory = FaceMemory(1.0)
    analyzer.follow(_frame(image, 0.0, gop_start=True), memory)
    memory.rois, memory.scores = memory.rois[:1], memory.scores[:1]   # one face known
    runs.clear()
    assert len(analyzer.follow(_frame(image, 0.4), memory)) == 1 and runs == []
    assert len(analyzer.follow(_frame(image, 1.0), memory)) == len(everyone) and runs == [1]


def test_two_regions_drifting_onto_one_face_follow_it_once(sample, face_analyzer):
    image = load_rgb(sample("single_face.jpg"))
    memory = FaceMemory(1.0)
    face_analyzer.follow(_frame(image, 0.0, gop_start=True), memory)
    roi = memory.rois[0]
    memory.rois = [roi, (roi[0] + 0.01, roi[1], *roi[2:])]
    memory.scores = memory.scores * 2
    assert len(face_analyzer.follow(_frame(image, 0.2), memory)) == 1
    assert len(memory.rois) == 1 and memory.followed == 1


def _static_scene(sample, seconds: float, *, face_at: float | None = None,
                  seed: int = 0) -> list[DecodedFrame]:
    """A static camera's empty scene at 5 fps (no_face.mp4's first frame), every frame with
    fresh sensor noise (uniform, +-4 levels); from ``face_at`` on, single_face.jpg at half
    size stands in its top left corner."""
    background = _decoded(sample("no_face.mp4"), 5.0)[0].image
    face = load_rgb(sample("single_face.jpg"))[::2, ::2]
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(round(seconds * 5)):
        image = background.copy()
        if face_at is not None and i / 5 >= face_at - 1e-9:
            image[:face.shape[0], :face.shape[1]] = face
        noise = rng.integers(-4, 5, image.shape)
        image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        frames.append(_frame(image, i / 5, gop_start=i == 0))
    return frames


def test_an_unchanged_empty_picture_is_detected_once_per_interval_not_every_frame(
        sample, counted):
    analyzer, runs = counted
    frames = _static_scene(sample, 3.0)
    memory = FaceMemory(1.0, motion_threshold=8)
    assert all(len(analyzer.follow(frame, memory)) == 0 for frame in frames)
    assert len(runs) == memory.detections == 3                 # at 0, 1 and 2 s
    assert memory.unchanged == len(frames) - 3
    # Without the gate, every frame of it is detected.
    runs.clear()
    every = FaceMemory(1.0)
    assert all(len(analyzer.follow(frame, every)) == 0 for frame in frames)
    assert len(runs) == len(frames)


def test_a_face_entering_a_static_empty_picture_is_found_on_its_first_frame(sample, counted):
    analyzer, runs = counted
    frames = _static_scene(sample, 2.0, face_at=0.6)
    memory = FaceMemory(1.0, motion_threshold=8)
    found = [len(analyzer.follow(frame, memory)) for frame in frames]
    assert found == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert memory.unchanged == 2                               # 0.2 and 0.4 s
    # ... and the frames with the face are those detection on every frame gives.
    assert found == [len(analyzer(frame.image)) for frame in frames]


def test_the_motion_gate_sees_a_small_change_and_ignores_noise():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
    still = thumbnail(image)
    assert still.shape == (36, 64) and still.dtype == np.int16
    noisy = np.clip(image.astype(np.int16) + rng.integers(-8, 9, image.shape), 0, 255)
    assert np.abs(thumbnail(noisy.astype(np.uint8)) - still).max() <= 8
    changed = image.copy()
    changed[100:120, 200:220] = 255 - changed[100:120, 200:220]      # 20 x 20 pixels
    assert np.abs(thumbnail(changed) - still).max() > 8
    memory = FaceMemory(1.0, motion_threshold=8)
    assert memory.due(_frame(image, 0.0, gop_start=True))
    memory.remember([], [], detected_s=0.0)
    assert not memory.due(_frame(noisy.astype(np.uint8), 0.2))
    assert memory.due(_frame(changed, 0.4))
    memory.remember([], [], detected_s=0.4)                  # compared with this one now
    assert not memory.due(_frame(changed, 0.6))
    assert memory.due(_frame(changed, 1.4))                  # the interval
    memory.remember([(0.5, 0.5, 0.2, 0.2, 0.0)], [0.9], detected_s=1.4)
    assert memory.still is None                              # a face: followed, no gate


def test_which_streams_follow_faces():
    assert face_memory(Settings.load()).detect_interval_s == 1.0
    assert face_memory(Settings.load({"detect_interval_s": 0.5})).detect_interval_s == 0.5
    assert face_memory(Settings.load({"detect_interval_s": 0})) is None
    assert face_memory(Settings.load()).motion_threshold == 8
    assert face_memory(Settings.load({"detect_motion_threshold": 0})).motion_threshold == 0
    # The facellava profile: its crops are cut from detector boxes.
    facellava = Settings.load({"profile": "facellava", "facellava_checkpoint": "/models/fl"})
    assert face_memory(facellava) is None


def test_a_stream_resumed_at_a_gop_sees_the_faces_it_saw_running_through(sample,
                                                                         face_analyzer):
    """Detection restarts at every GOP: the faces from a GOP on do not depend on the frames
    before it, so a worker that resumes a stream there writes the same events."""
    frames = _decoded(sample("WolfgangLanger_Pexels.mp4"), 5.0)
    starts = [i for i, f in enumerate(frames) if f.gop_start]
    assert len(starts) >= 3
    # 0.8 s: the interval's detections (0, 0.8, 1.6, 2.4, 3.2 ...) miss the GOPs' starts.
    through = FaceMemory(0.8)
    whole = [face_analyzer.follow(f, through) for f in frames]
    cut = starts[2]
    assert round(frames[cut].time_s / 0.8, 3) % 1 != 0
    resumed = FaceMemory(0.8)          # a fresh worker's memory, from the third GOP on
    tail = [face_analyzer.follow(f, resumed) for f in frames[cut:]]
    for got, want in zip(tail, whole[cut:]):
        np.testing.assert_array_equal(got.mesh, want.mesh)
