"""Frames are picked by timestamp at the analysis rate."""

from __future__ import annotations

import pytest

from facestream.vision.decode import FrameSampler


def test_sampler_uses_timestamps_not_frame_counts():
    # 100 fps for one second, then one frame every 0.25 s: frame counting would pick
    # every 10th frame and miss most of the slow part.
    times = [i / 100 for i in range(100)] + [1.0 + 0.25 * i for i in range(8)]
    sampler = FrameSampler(10.0)
    picked = [t for t in times if sampler.take(t)]
    assert picked[:10] == pytest.approx([i / 10 for i in range(10)])
    assert picked[10:] == pytest.approx([1.0 + 0.25 * i for i in range(8)])
