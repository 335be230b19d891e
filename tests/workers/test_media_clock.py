"""A live source that drops: its publisher's MediaClock markers close the stream's windows
while it is down, and change no event.

The input is what ``ingest`` publishes for a live camera (0.5 s chunks) that drops inside
its second GOP, in the middle of a window, and comes back OUTAGE_S later: the chunks up to
the drop (the last one closing the GOP, as a publisher sends what it read), a marker at the
media time the source resumes at, then the stream from its next GOP on, shifted by the
outage and numbered on (as ``_source_chunks`` sends a reconnected source's chunks).  No Kafka or Redis: the worker gets an in-memory consumer, one message
per poll (so one per round), sink and dead-letter producer.
"""

from __future__ import annotations

import json
from dataclasses import replace

import av
import pytest

from facestream import events
from facestream.ingest.chunks import Chunk, EndOfStream, MediaClock, gop_chunks
from facestream.workers import checkpoint
from tests.helpers import Record, comparable
from tests.workers.test_continuations import CheckpointStore, _events, _run

TOPIC = "unit.video"
OUTAGE_S = 5.0


def _chunks(path, *, max_chunk_s: float | None = None) -> list[Chunk]:
    with av.open(str(path)) as container:
        return list(gop_chunks(container, stream_id="cam", max_chunk_s=max_chunk_s))


def _after_outage(chunks: list[Chunk], first_seq: int) -> list[Chunk]:
    """The chunks as a source back after OUTAGE_S sends them: media time moved on, chunk
    numbers running on from ``first_seq``."""
    shift = round(OUTAGE_S / chunks[0].time_base)
    return [replace(c, seq=first_seq + i, origin_pts=c.origin_pts - shift)
            for i, c in enumerate(chunks)]


def _records(*messages) -> list[Record]:
    out = []
    for i, message in enumerate(messages):
        value = message.payload if isinstance(message, Chunk) else b""
        out.append(Record(TOPIC, 0, i, b"cam", value, message.headers()))
    return out


@pytest.fixture(scope="module")
def live(sample):
    """The first 9 s (3 GOPs of 3 s, one face throughout) cut as a live source sends them."""
    chunks = _chunks(sample("WolfgangLanger_Pexels.mp4"), max_chunk_s=0.5)
    return [c for c in chunks if c.start_s < 9.0]


@pytest.fixture(scope="module")
def parts(live):
    drop = next(i for i, c in enumerate(live) if c.continued and c.start_s > 3.2)
    assert live[drop].unfinished
    before = live[:drop] + [replace(live[drop], unfinished=False)]
    back = next(i for i in range(drop, len(live)) if not live[i].continued)
    after = _after_outage(live[back:], before[-1].seq + 1)
    marker = MediaClock("cam", before[-1].seq, round(after[0].start_s * 1e6) - 1000)
    return before, marker, after, EndOfStream("cam", after[-1].seq)


def _analyses(sink) -> list[dict]:
    return [e for e in _events(sink) if e["type"] == events.FACE_ANALYSIS]


def test_a_drop_closes_the_windows_that_end_before_the_source_resumes(parts, models):
    before, marker, after, end = parts
    _, without = _run(_records(*before), models)
    consumer, with_marker = _run(_records(*before, marker), models)
    _, full = _run(_records(*before, *after, end), models)
    # Without the marker, the windows of the last frames before the drop wait for the source.
    early = {comparable(e) for e in _analyses(with_marker)}
    waiting = early - {comparable(e) for e in _analyses(without)}
    assert waiting, "the marker must close windows that were still open"
    # What the marker closes is what the whole run writes for those windows, and every
    # window of the whole run that ends by the marker's time is written by then.
    expected = {comparable(e) for e in _analyses(full)
                if e["data"]["window"]["end_s"] <= marker.media_s}
    assert early == expected
    assert all(e["data"]["window"]["end_s"] <= marker.media_s for e in _analyses(with_marker))
    # The windows left waiting ended after the last frame sent: only the marker closed them.
    last_frame_s = max(e["data"]["window"]["end_s"] for e in _analyses(without))
    assert all(json.loads(data)["window"]["end_s"] > last_frame_s for _, _, data in waiting)
    # The round after the marker checkpoints the stream and commits past it.
    assert consumer.commits[-1] == len(before) + 1


def test_the_marker_changes_no_event_and_a_successor_resumes_after_it(parts, models):
    before, marker, after, end = parts
    _, plain = _run(_records(*before, *after, end), models)
    records = _records(*before, marker, *after, end)
    _, marked = _run(records, models)
    assert sorted(map(comparable, _events(marked))) == sorted(map(comparable, _events(plain)))
    # A worker that goes away right after the marker: its successor resumes from the
    # checkpoint past it, and nothing is written twice differently or missed.
    first, first_sink = _run(records, models, stop_after=len(before) + 1)
    assert first.commits[-1] == len(before) + 1
    saved = checkpoint.loads(first_sink.blobs[next(iter(first_sink.blobs))])
    assert saved.offset == len(before) + 1
    _, second_sink = _run(records, models, start=len(before) + 1,
                          store=CheckpointStore(first_sink.blobs))
    got = {e["id"]: comparable(e) for e in _events(first_sink) + _events(second_sink)}
    assert sorted(got.values()) == sorted(map(comparable, _events(plain)))


def test_a_marker_not_right_after_its_chunk_or_inside_a_gop_is_ignored(live, parts, models):
    before, marker, _, _ = parts
    _, without = _run(_records(*before), models)
    stale = replace(marker, last_seq=marker.last_seq - 1)
    _, ignored = _run(_records(*before, stale), models)
    assert sorted(map(comparable, _events(ignored))) == sorted(map(comparable, _events(without)))
    # The same chunks with the GOP left open (the last one unfinished): the decoder may
    # still hold frames of it back, so the marker is not applied.
    open_gop = before[:-1] + [replace(before[-1], unfinished=True)]
    _, unmarked = _run(_records(*open_gop), models)
    _, marked = _run(_records(*open_gop, marker), models)
    assert sorted(map(comparable, _events(marked))) == sorted(map(comparable, _events(unmarked)))
    # (with the GOP closed, the same marker closes windows: the first test.)
