"""Backoff: bounded, capped and jittered."""

from __future__ import annotations

from facestream.retry import Backoff


def test_backoff_is_bounded_capped_and_jittered():
    delays = list(Backoff(6, 0.5, 4.0, jitter=0.2, seed=1).delays())
    assert len(delays) == 6
    for k, d in enumerate(delays):
        nominal = min(4.0, 0.5 * 2 ** k)
        assert 0.8 * nominal <= d <= 1.2 * nominal
    assert list(Backoff(0, 1, 1).delays()) == []
