"""The chunk order policy (facestream/workers/ordering.py), case by case: a table of chunk
sequences and the verdicts they must get."""

from __future__ import annotations

import pytest

from facestream.workers.ordering import MAX_TIME_JUMP_S, ChunkOrder


def _verdicts(chunks):
    """``chunks``: (seq, media start s, broker stamp s); the kinds and acceptances."""
    order = ChunkOrder()
    return [(v.kind, v.accept) for v in (order.judge(*c) for c in chunks)]


@pytest.mark.parametrize("chunks, expected", [
    ([(0, 0, 0), (1, 3, 0), (2, 6, 0)], [(None, True)] * 3),
    ([(5, 15, 0), (6, 18, 0)], [(None, True)] * 2),                      # joined mid-stream
    ([(0, 0, 0), (2, 6, 0), (1, 3, 0)], [(None, True), ("gap", True), ("late", False)]),
    ([(0, 0, 0), (1, 3, 0), (1, 3, 0)], [(None, True), (None, True), ("duplicate", False)]),
    ([(0, 0, 0), (1, 3, 0), (0, 0, 0), (1, 3, 0)],
     [(None, True), (None, True), ("restart", True), (None, True)]),
    ([(0, 0, 0), (1, 3, 0), (2, 1, 0)], [(None, True), (None, True), ("backwards", False)]),
    ([(0, 0, 0), (1, MAX_TIME_JUMP_S + 1, 0)], [(None, True), ("jump", False)]),
    # A live source back after a 2-hour outage: the broker's clock moved as far.
    ([(0, 0, 1000), (1, 7203, 1000 + 7200)], [(None, True), (None, True)]),
    # Refused chunks change nothing: the next good one is judged against the last taken.
    ([(0, 0, 0), (1, -5, 0), (2, 6, 0)], [(None, True), ("backwards", False), ("gap", True)]),
])
def test_verdicts(chunks, expected):
    assert _verdicts(chunks) == expected


def test_messages_say_what_happened():
    order = ChunkOrder()
    order.judge(0, 0.0, 0)
    gap = order.judge(4, 12.0, 0)
    assert gap.message == ("chunks 1..3 never arrived: the video from 0.00 s to 12.00 s is "
                           "analysed only in part")
    assert order.judge(2, 6.0, 0).message == ("chunk 2 arrived after chunk 4 (out of order); "
                                              "not analysed")
    assert order.judge(4, 12.0, 0).message == "chunk 4 arrived after chunk 4 (a repeat); not analysed"


def test_memory_of_skipped_chunks_is_bounded():
    order = ChunkOrder()
    order.judge(0, 0.0, 0)
    order.judge(10 ** 9, 1.0, 0)               # a wild jump in numbers
    assert len(order.skipped) <= 1024
