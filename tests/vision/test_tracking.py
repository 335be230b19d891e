"""Faces and tracks on real media: one identity per person, starts and ends where the face
does, identities kept when faces cross."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from facestream import events
from tests.helpers import analyze_in_process
from facestream.scenes import face_patch, load_rgb, moving_faces, write_clip


def _analysis(evs):
    return [ev["data"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]


def test_one_woman_is_one_track_over_the_whole_clip(sample, models, tmp_path):
    summary, evs = analyze_in_process(sample("WolfgangLanger_Pexels.mp4"), models, tmp_path)
    analysis = _analysis(evs)
    assert {d["track_id"] for d in analysis} == {"t1"}, "identity switch"
    covered = sum(d["window"]["frames"] for d in analysis)
    assert covered >= 0.95 * summary.frames, (covered, summary.frames)
    started = [ev for ev in evs if ev["type"] == events.TRACK_STARTED]
    ended = [ev for ev in evs if ev["type"] == events.TRACK_ENDED]
    assert len(started) == len(ended) == 1


def test_group_photo_gives_five_faces(sample, models, tmp_path):
    _, evs = analyze_in_process(sample("multi_face.jpg"), models, tmp_path)
    analysis = _analysis(evs)
    assert len(analysis) == 5
    assert len({d["track_id"] for d in analysis}) == 5
    centres = np.array([[(d["bbox"][0] + d["bbox"][2]) / 2, (d["bbox"][1] + d["bbox"][3]) / 2]
                        for d in analysis])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2) + np.eye(5) * 1e9
    assert gaps.min() > 50, "two events describe the same face"


def _bare_detection_times(path, fps=10.0, run=3):
    """Reference: media times of the sampled frames where bare MediaPipe sees a face in at
    least ``run`` consecutive sampled frames (a lone hit on a blurred transition is not a
    face arriving)."""
    from mediapipe.python.solutions import face_detection

    found = []
    slot_last = -1
    with face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det, \
            av.open(str(path)) as container:
        stream = container.streams.video[0]
        base = None
        for frame in container.decode(stream):
            base = frame.pts if base is None else base
            t = float((frame.pts - base) * stream.time_base)
            slot = math.floor(t * fps + 1e-6)
            if slot <= slot_last:
                continue
            slot_last = slot
            found.append((t, bool(det.process(frame.to_ndarray(format="rgb24")).detections)))
    present = []
    for i, (t, hit) in enumerate(found):
        window = [h for _, h in found[max(0, i - run + 1): i + run]]
        if hit and any(all(window[j:j + run]) for j in range(len(window) - run + 1)):
            present.append(t)
    return present


def test_track_starts_when_the_face_arrives(sample, models, tmp_path):
    path = sample("noface_face.mov")
    reference = _bare_detection_times(path)
    assert reference and reference[0] > 1.0, "the clip should open without a face"
    _, evs = analyze_in_process(path, models, tmp_path)
    started = [ev["data"] for ev in evs if ev["type"] == events.TRACK_STARTED]
    assert len(started) == 1
    assert started[0]["time_s"] == pytest.approx(reference[0], abs=0.15)


def test_track_ends_when_the_face_leaves(sample, models, tmp_path):
    path = sample("face_noface.mov")
    reference = _bare_detection_times(path)
    _, evs = analyze_in_process(path, models, tmp_path)
    started = [ev["data"] for ev in evs if ev["type"] == events.TRACK_STARTED]
    ended = [ev["data"] for ev in evs if ev["type"] == events.TRACK_ENDED]
    assert len(started) == len(ended) == 1
    assert started[0]["time_s"] == pytest.approx(reference[0], abs=0.15)
    assert ended[0]["time_s"] == pytest.approx(reference[-1], abs=0.25)


@pytest.fixture(scope="module")
def crossing_clip(sample, face_analyzer, tmp_path_factory):
    """Two real faces from the group photo walking past each other; B passes in front."""
    photo = load_rgb(sample("multi_face.jpg"))
    faces = face_analyzer(photo)
    patches = [face_patch(photo, tuple(int(v) for v in faces.boxes[i]), 120) for i in (0, 1)]
    seconds, fps = 4.0, 25

    def path_a(t):
        return 90 + 460 * t / seconds, 170.0

    def path_b(t):
        return 550 - 460 * t / seconds, 200.0

    frames, centres = moving_faces(patches, [path_a, path_b], width=640, height=360,
                                   seconds=seconds, fps=fps)
    path = write_clip(tmp_path_factory.mktemp("clips") / "crossing.mp4", frames, fps=fps)
    return path, (path_a, path_b)


def test_faces_crossing_keep_their_identities(crossing_clip, models, tmp_path):
    path, paths = crossing_clip
    _, evs = analyze_in_process(path, models, tmp_path)
    analysis = _analysis(evs)
    tracks = sorted({d["track_id"] for d in analysis})
    assert len(tracks) == 2, tracks
    for track_id in tracks:
        windows = [d for d in analysis if d["track_id"] == track_id]
        # Which path does this track follow?  It must be the same one in every window.
        owners = set()
        for d in windows:
            t = (d["window"]["start_s"] + d["window"]["end_s"]) / 2
            cx, cy = (d["bbox"][0] + d["bbox"][2]) / 2, (d["bbox"][1] + d["bbox"][3]) / 2
            dists = [math.dist((cx, cy), p(t)) for p in paths]
            owners.add(int(np.argmin(dists)))
        assert len(owners) == 1, f"{track_id} switched identity"
        assert windows[0]["window"]["start_s"] < 0.5 and windows[-1]["window"]["end_s"] > 3.4
