"""The annotated output: a video whose frames play at their media times, and a photo drawn
as an image, each face labelled with its track id, expression, gender and age."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from facestream.sinks.annotate import Annotator, label_text, write_image

# Frames picked at 10 fps from a 23.976 fps source: the gaps between them are uneven.
_SOURCE_FPS = 24000 / 1001


def _picked_times(seconds: float, fps: float = 10.0) -> list[float]:
    frame_times = [n / _SOURCE_FPS for n in range(int(seconds * _SOURCE_FPS))]
    picked, due = [], 0.0
    for t in frame_times:
        if t >= due - 1e-9:
            picked.append(t)
            due += 1 / fps
    return picked


def test_video_frames_play_at_their_media_times(tmp_path):
    """Each frame is read back at the media time it was analysed at, and the video lasts
    as long as the stretch of source it shows (the encoder's own frame rate must not
    rescale the frames' times)."""
    times = _picked_times(6.0)
    annotator = Annotator(tmp_path / "annotated.mp4", width=64, height=48)
    for i, t in enumerate(times):
        annotator.write(np.full((48, 64, 3), i * 4 % 255, np.uint8), t, [])
    annotator.close()
    with av.open(str(tmp_path / "annotated.mp4")) as video:
        stream = video.streams.video[0]
        got = [float(f.pts * stream.time_base) for f in video.decode(stream)]
        duration = float(stream.duration * stream.time_base)
    assert got == pytest.approx(times, abs=1 / _SOURCE_FPS)
    assert duration == pytest.approx(times[-1], abs=1 / 10)


def test_label_says_expression_gender_and_age():
    assert label_text("t3", "happy", "female", 31.4) == "t3 happy F31"
    assert label_text("t3", None, None, None) == "t3"


def test_a_photo_is_written_as_an_image_with_its_labels(tmp_path):
    image = np.full((120, 200, 3), 200, np.uint8)
    path = write_image(tmp_path / "annotated.jpg", image,
                       [("t1", np.array([40.0, 50.0, 110.0, 115.0]), "t1 happy F31")])
    assert path == tmp_path / "annotated.jpg"
    drawn = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert drawn.shape == image.shape
    (width, _), _ = cv2.getTextSize("t1 happy F31", cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    changed = np.abs(drawn.astype(int) - image).max(axis=2) > 40
    # the label's band runs the width of the whole text just above the box
    assert changed[40:48, 40:40 + width].mean(axis=0).min() > 0.5
