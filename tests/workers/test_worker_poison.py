"""The worker's rule (docs/RELIABILITY.md): every message is processed or dead-lettered with
a reason and an error event; nothing a message holds stops the worker.  Here the chunk
ordering policy, faults inside the models, and dead letters of any size, with in-memory
transports (tests/helpers.py) so each case is exact and fast; the same cases against the real
broker and Redis are in tests/integration/test_poison.py."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import av
import pytest

from facestream import events
from facestream.config import Settings
from facestream.ingest.chunks import EndOfStream, gop_chunks
from facestream.workers.dead_letters import MAX_REASON, dead_letter
from tests.helpers import Record, one_poll_worker

FPS = 5.0
TOPIC = "unit.video"


@pytest.fixture(scope="module")
def clip_chunks(sample):
    with av.open(str(sample("face_noface.mov"))) as container:
        return list(gop_chunks(container, stream_id="cam"))


def _run(messages, models, **settings):
    """One poll of ``messages`` through a worker; returns (report, events, dead letters,
    worker)."""
    return one_poll_worker(messages, models, topic=TOPIC, fps=FPS, **settings)[:4]


def _errors(written):
    return [e["data"]["message"] for e in written if e["type"] == events.STREAM_ERROR]


def _order_count(worker, kind):
    return worker.metrics.registry.get_sample_value("facestream_chunks_out_of_order_total",
                                                    {"kind": kind}) or 0


def test_a_gap_is_reported_and_the_late_chunk_dead_lettered(clip_chunks, models):
    c = clip_chunks
    report, written, dlq, worker = _run([c[0], c[2], c[1], c[3], EndOfStream("cam", 3)], models)
    assert [reason for _, reason in dlq.sent] == [
        "chunk 1 arrived after chunk 2 (out of order); not analysed"]
    errors = _errors(written)
    assert len(errors) == 2 and errors[0].startswith("chunk 1 never arrived")
    assert (_order_count(worker, "gap"), _order_count(worker, "late")) == (1, 1)
    assert report.streams_ended == 1 and report.chunks == 3


def test_a_repeated_chunk_is_dead_lettered(clip_chunks, models):
    c = clip_chunks
    report, written, dlq, worker = _run([c[0], c[1], c[1], EndOfStream("cam", 1)], models)
    assert [reason for _, reason in dlq.sent] == [
        "chunk 1 arrived after chunk 1 (a repeat); not analysed"]
    assert _order_count(worker, "duplicate") == 1 and report.chunks == 2


def test_chunk_zero_again_restarts_the_stream(clip_chunks, models):
    c = clip_chunks
    _, once, _, _ = _run([c[0], c[1], EndOfStream("cam", 1)], models)
    report, written, dlq, worker = _run([c[0], c[1], c[0], c[1], EndOfStream("cam", 1)], models)
    assert dlq.sent == [] and report.chunks == 4
    assert _order_count(worker, "restart") == 1
    # The first session's tracks end at the restart; the second session is the first again.
    started = [e for e in once if e["type"] == events.TRACK_STARTED]
    kinds = [e["type"] for e in written]
    assert started and kinds.count(events.TRACK_STARTED) == 2 * len(started)
    assert kinds.count(events.TRACK_ENDED) == 2 * len(started)
    assert (kinds.count(events.FACE_ANALYSIS)
            == 2 * sum(e["type"] == events.FACE_ANALYSIS for e in once))


def test_timestamps_that_go_backwards_or_jump_are_dead_lettered(clip_chunks, models):
    c = clip_chunks
    backwards = replace(c[2], origin_pts=c[2].origin_pts + (c[2].first_pts - c[0].first_pts) + 1)
    two_days = int(2 * 86400 / c[3].time_base)
    jump = replace(c[3], origin_pts=c[3].origin_pts - two_days)
    report, written, dlq, worker = _run([c[0], c[1], backwards, jump, c[4],
                                         EndOfStream("cam", 4)], models)
    reasons = [reason for _, reason in dlq.sent]
    assert len(reasons) == 2
    assert reasons[0].startswith("chunk 2 starts at -") and "before the previous chunk" in reasons[0]
    assert reasons[1].startswith("chunk 3 starts at 1728") and "out of bounds" in reasons[1]
    assert (_order_count(worker, "backwards"), _order_count(worker, "jump")) == (1, 1)
    # Chunk 4 comes after the two refused ones: a gap, reported, and analysed.
    assert report.chunks == 3 and any("chunks 2..3 never arrived" in m for m in _errors(written))


def test_a_fault_in_the_face_stage_costs_the_chunk_not_the_worker(clip_chunks, models):
    calls = []

    class Faces:
        """The face stage, its third frame failing (detected or followed alike)."""

        def __call__(self, image):
            return self._fail_third() or models.faces(image)

        def follow(self, frame, memory):
            return self._fail_third() or models.faces.follow(frame, memory)

        def _fail_third(self):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("mediapipe graph failed")

    broken_models = SimpleNamespace(faces=Faces(), analyzer=models.analyzer)
    c = clip_chunks
    report, written, dlq, _ = _run([c[0], c[1], EndOfStream("cam", 1)], broken_models)
    assert [reason for _, reason in dlq.sent] == [
        "chunk 0 does not decode: RuntimeError: mediapipe graph failed"]
    assert report.streams_ended == 1 and report.chunks == 2


def test_a_fault_in_the_models_costs_one_stream_an_error_event(clip_chunks, models):
    class Analyzer:
        follows = False

        def analyze(self, items):
            if any(w.stream_id == "bad" for _, w in items):
                raise ValueError("NaN in encoder output")
            return models.analyzer.analyze(items)

    good = [replace(chunk, stream_id="good") for chunk in clip_chunks[:2]]
    bad = [replace(chunk, stream_id="bad") for chunk in clip_chunks[:2]]
    messages = [good[0], bad[0], good[1], bad[1], EndOfStream("good", 1), EndOfStream("bad", 1)]
    report, written, dlq, worker = _run(messages, SimpleNamespace(faces=models.faces,
                                                                  analyzer=Analyzer()))
    assert report.streams_ended == 2 and dlq.sent == []
    analysed = {e["data"]["stream_id"] for e in written if e["type"] == events.FACE_ANALYSIS}
    assert analysed == {"good"}
    failures = [e["data"] for e in written if e["type"] == events.STREAM_ERROR]
    assert failures and {f["stream_id"] for f in failures} == {"bad"}
    assert all("could not be analysed: ValueError: NaN" in f["message"] for f in failures)
    assert worker.metrics.registry.get_sample_value("facestream_analysis_failures_total") > 0


def test_a_bad_key_is_never_rewritten_into_a_real_stream(clip_chunks, models):
    c = clip_chunks
    report, written, dlq, _ = _run([c[0], (b"../cam", b"x", []), (b"cam", b"y" * 300_000, []),
                                    EndOfStream("cam", 0)], models)
    errors = [(e["data"]["stream_id"], e["data"]["message"]) for e in written
              if e["type"] == events.STREAM_ERROR]
    assert [s for s, _ in errors] == [events.UNATTRIBUTED, "cam"]
    assert report.dead_letters == 2 and report.streams_ended == 1


def test_dead_letters_fit_the_limit_and_say_what_was_cut():
    record = Record("t", 3, 41, b"k" * 1000, b"v" * 5_000_000,
                    [(f"h{i}", b"x" * 5000) for i in range(100)])
    letter = dead_letter(record, "why " * 500, limit=1_000_000)
    size = len(letter.key) + len(letter.value) + sum(len(n) + len(v) for n, v in letter.headers)
    assert size <= 1_000_000
    h = dict(letter.headers)
    assert (h["fs-truncated"], h["fs-source-size"], h["fs-source-offset"],
            h["fs-source-partition"], h["fs-source-topic"]) == (b"1", b"5000000", b"41", b"3", b"t")
    assert len(h["fs-error"]) <= MAX_REASON and h["fs-error"].endswith(b"more characters]")
    assert len(letter.key) == 256 and all(len(v) <= 1024 for _, v in letter.headers)
    assert len(letter.headers) <= 32 + 6
    whole = dead_letter(Record("t", 0, 1, b"cam", b"small", [("fs-seq", b"1")]), "bad",
                        limit=1_000_000)
    assert whole.value == b"small" and "fs-truncated" not in dict(whole.headers)
    assert dead_letter(record, "bad", limit=0).value == b""


def test_checkpoints_of_an_older_layout_are_not_resumed():
    from facestream.workers import checkpoint

    blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, "cam", 3, None))
    assert checkpoint.loads(blob).offset == 3
    old = checkpoint.dumps(checkpoint.Checkpoint(1, "cam", 3, None))
    assert checkpoint.loads(old) is None           # an older layout restarts the stream


def test_redis_errors_never_show_the_command_they_carried():
    import redis

    from facestream.sinks.redis_stream import _unavailable

    pickled = "SET it:checkpoint:cam b'\\x80\\x05\\x95" + "\\x00" * 5000 + "'"
    error = redis.ResponseError(f"Command # 1 ({pickled}) of pipeline caused error: OOM "
                                "command not allowed when used memory > 'maxmemory'.")
    text = str(_unavailable(Settings.load({}), error))
    assert text.startswith("Redis at redis://") and "OOM command not allowed" in text
    assert "\\x80" not in text and "checkpoint" not in text and len(text) < 300
