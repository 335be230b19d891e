"""README claims of the distributed mode that no other test guarded (docs/CLAIMS.md), against
the real broker and Redis the test command starts.  Each test has its own topics, group and
Redis keys (the ``isolated`` fixture)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from facestream import events
from facestream.ingest.chunks import Chunk, EndOfStream, MediaClock, parse_message
from tests.helpers import run_cli
from tests.integration.helpers import BOOTSTRAP, wait
from tests.media import HttpCamera, remux_video

pytestmark = pytest.mark.integration


def _topic(topic: str, timeout_s: float = 60) -> list:
    """Every message of ``topic`` so far, read up to the end offsets (no idle wait)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        messages, deadline = [], time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=1000).values():
                messages += records
        return messages
    finally:
        consumer.close()


def _chunks_and_end(messages, stream_id: str, clocks: list | None = None):
    """(chunks in log order with their message timestamps, the end marker) of a stream;
    its MediaClock markers go to ``clocks``, if given, each with the number of chunks
    before it."""
    chunks, ends = [], []
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        if m.key != stream_id.encode():
            continue
        item = parse_message(m.headers, m.value, key=m.key)
        if isinstance(item, EndOfStream):
            ends.append(item)
        elif isinstance(item, MediaClock):
            if clocks is not None:
                clocks.append((len(chunks), item))
        else:
            assert isinstance(item, Chunk) and item.parts == 1
            chunks.append((item, m.timestamp))
    assert len(ends) == 1, ends
    return chunks, ends[0]


def _media_start(chunk: Chunk) -> float:
    return float((chunk.first_pts - chunk.origin_pts) * chunk.time_base)


# --- ingest -----------------------------------------------------------------------------------

def _mpegts(path) -> bytes:
    """The clip's video remuxed (not re-encoded) into MPEG-TS, as an HTTP camera sends it."""
    out = io.BytesIO()
    remux_video(path, out, container_format="mpegts")
    return out.getvalue()


def test_ingest_reconnects_a_live_source_that_drops(isolated, sample):
    """README: "Live sources reconnect with bounded backoff."  The camera sends half its
    stream and drops, comes back with the whole stream and drops again, then stays down:
    `facestream ingest` publishes what each connection delivered, under chunk numbers that
    run on, reconnects exactly FACESTREAM_RECONNECT_ATTEMPTS times once it stays down, and
    then gives up with one line (exit 2)."""
    _, env = isolated
    camera = HttpCamera(_mpegts(sample("face_noface.mov")), [0.5, 1.0, None])
    try:
        # The camera answers every connection at once, so the open/read timeout only bounds
        # a hang; it is generous because a loaded machine can stretch a healthy read.
        proc = run_cli("ingest", camera.url, "--stream-id", "cam", timeout=300,
                       env={**env, "FACESTREAM_RECONNECT_ATTEMPTS": "2",
                            "FACESTREAM_RECONNECT_BACKOFF_S": "0.05",
                            "FACESTREAM_OPEN_TIMEOUT_S": "60"})
    finally:
        camera.close()
    assert camera.requests == 4, proc.stderr     # 2 connections that delivered + 2 refused
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    drops = [line for line in lines if line.startswith(f"facestream: warning: source {camera.url}")]
    assert len(drops) == 2, proc.stderr          # one per drop
    assert lines[-1].startswith(f"facestream: error: source {camera.url}")
    assert lines[-1].endswith("gave up after 2 reconnects"), proc.stderr

    clocks: list[tuple[int, MediaClock]] = []
    chunks, end = _chunks_and_end(_topic(isolated[0].video_topic), "cam", clocks)
    assert [c.seq for c, _ in chunks] == list(range(len(chunks)))
    assert end.last_seq == len(chunks) - 1
    assert all(c.live for c, _ in chunks)
    # Each connection's stream starts again at the clip's first timestamp: split there.
    raw = [c.first_pts for c, _ in chunks]
    restarts = [i for i in range(1, len(raw)) if raw[i] <= raw[i - 1]]
    assert len(restarts) == 1, raw
    first, second = raw[:restarts[0]], raw[restarts[0]:]
    assert second[0] == first[0]
    assert len(second) > len(first) >= 1, "the second connection sent the whole clip"
    # Media time goes on across the reconnect, though this camera is faster than real time:
    # workers refuse a chunk that starts before the one before it.
    starts = [c.start_s for c, _ in chunks]
    assert all(b > a for a, b in zip(starts, starts[1:])), starts
    # Before each reconnect wait (3: one after the first drop, two after the second), a
    # MediaClock right after the last chunk sent says how far media time has gone: at least
    # to the end of the last frame sent (less the 1 ms rounding margin), and no chunk after
    # it starts before it.
    assert [(after, m.last_seq) for after, m in clocks] == [
        (restarts[0], restarts[0] - 1), (len(chunks), len(chunks) - 1),
        (len(chunks), len(chunks) - 1)], clocks
    for after, marker in clocks:
        last = chunks[after - 1][0]
        last_end = float((max(p.pts + p.duration for p in last.packets()) - last.origin_pts)
                         * last.time_base)
        assert marker.media_s >= last_end - 0.0011, (marker, last_end)
        assert after == len(chunks) or chunks[after][0].start_s >= marker.media_s


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_ingest_of_a_camera_ends_its_stream_for_the_workers_when_stopped(isolated, sample, sig):
    """A camera is published until it is stopped: SIGTERM or Ctrl-C while the camera is down
    (waiting to reconnect, with reconnects left) ends the run at once, with exit 0, the
    summary, no traceback, and an end marker right after the last chunk, so the workers
    close the stream as at the end of a file."""
    settings, env = isolated
    camera = HttpCamera(_mpegts(sample("face_noface.mov")), [0.5, None])
    proc = subprocess.Popen(
        [sys.executable, "-m", "facestream", "ingest", camera.url, "--stream-id", "cam"],
        env={**os.environ, **env, "FACESTREAM_RECONNECT_ATTEMPTS": "1000",
             "FACESTREAM_RECONNECT_BACKOFF_S": "30", "FACESTREAM_RECONNECT_BACKOFF_MAX_S": "30",
             "FACESTREAM_OPEN_TIMEOUT_S": "60"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def waiting() -> bool:       # the drop's MediaClock: the camera is down, 30 s to wait
            assert proc.poll() is None, proc.communicate()
            try:
                messages = _topic(settings.video_topic)
            except (AssertionError, TypeError, ValueError):   # the topic is not there yet
                return False
            return any(parse_message(m.headers, m.value, key=m.key).__class__ is MediaClock
                       for m in messages)

        wait(waiting, 120, "the camera to drop (its MediaClock)", every_s=0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        camera.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "stopping: ending the stream for the workers" in err
    assert "stopped; the workers were told the stream ended" in out, out
    assert camera.requests == 1                        # stopped before trying again
    chunks, end = _chunks_and_end(_topic(settings.video_topic), "cam")
    assert chunks and end.last_seq == chunks[-1][0].seq == len(chunks) - 1
    assert f"cam: {len(chunks)} chunks" in out, out


def _live_chunks(isolated, clip, chunk_max_s: str) -> list[Chunk]:
    """`facestream ingest` of ``clip`` served once by a live HTTP camera (then down)."""
    settings, env = isolated
    camera = HttpCamera(_mpegts(clip), [1.0, None])
    stream_id = f"cam{chunk_max_s.replace('.', '')}"
    try:
        proc = run_cli("ingest", camera.url, "--stream-id", stream_id, timeout=300,
                       env={**env, "FACESTREAM_RECONNECT_ATTEMPTS": "1",
                            "FACESTREAM_RECONNECT_BACKOFF_S": "0.05",
                            "FACESTREAM_OPEN_TIMEOUT_S": "60",
                            "FACESTREAM_CHUNK_MAX_S": chunk_max_s})
    finally:
        camera.close()
    assert proc.returncode == 2 and "gave up after 1 reconnects" in proc.stderr, proc.stderr
    return [c for c, _ in _chunks_and_end(_topic(settings.video_topic), stream_id)[0]]


def test_a_live_source_sends_its_gop_as_it_comes(isolated, sample):
    """A live camera's chunk leaves every FACESTREAM_CHUNK_MAX_S of video (default 0.5 s),
    not when its GOP ends (face_noface.mov's GOPs are ~1.7 s): unfinished, then continued
    chunks, and each GOP still starts a chunk of its own.  The packets are those whole-GOP
    chunks (FACESTREAM_CHUNK_MAX_S=0) carry, in the same order."""
    clip = sample("face_noface.mov")
    whole = _live_chunks(isolated, clip, "0")
    parts = _live_chunks(isolated, clip, "0.5")
    assert not any(c.continued or c.unfinished for c in whole)
    assert len(parts) >= 2 * len(whole) + 3
    assert not parts[0].continued
    for before, after in zip(parts, parts[1:]):
        assert after.continued == before.unfinished
    for chunk in parts:
        dts = [p.dts for p in chunk.packets()]
        assert (max(dts) - min(dts)) * chunk.time_base <= 0.5, chunk.seq
    gop_starts = [c for c in parts if not c.continued]
    assert all(c.packets()[0].keyframe for c in gop_starts)
    # Every GOP of the clip, the last one too (the camera's connection ends mid-read: what
    # was read of the GOP still goes out), with the same packets either way.
    assert len(whole) == len(gop_starts) == 6
    assert [c.first_pts for c in whole] == [c.first_pts for c in gop_starts]
    assert [p.data for c in parts for p in c.packets()] == \
        [p.data for c in whole for p in c.packets()]


def test_ingest_realtime_paces_a_file_at_its_own_speed(isolated, sample):
    """README: `facestream ingest sample:NAME --stream-id ID --realtime` (the edge publisher
    pacing a file as a camera would): each chunk is produced no earlier than its media time
    after the first (a file without --realtime goes as fast as the broker takes it)."""
    settings, env = isolated
    launched_ms = time.time() * 1000
    proc = run_cli("ingest", "sample:face_noface.mov", "--stream-id", "paced", "--realtime",
                   env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("paced: 6 chunks"), proc.stdout
    chunks, end = _chunks_and_end(_topic(settings.video_topic), "paced")
    assert len(chunks) == 6 and end.last_seq == 5
    assert not any(c.live for c, _ in chunks)
    media = [_media_start(c) for c, _ in chunks]
    sent = [stamp for _, stamp in chunks]          # the producer's send times (ms)
    assert media[0] == 0.0 and media[-1] > 5.0
    # The publisher starts its clock after the command was launched, so a paced chunk is
    # sent no earlier than its media time after the launch...
    late = [(m, (s - launched_ms) / 1000) for m, s in zip(media, sent)
            if (s - launched_ms) / 1000 < m]
    assert late == [], f"chunks sent before their media time: {late}"
    # ...and the chunks go over seconds, not in one burst (unpaced: within ~0.1 s).
    assert (sent[-1] - sent[0]) / 1000 >= 1.0, sent


# --- worker -----------------------------------------------------------------------------------

def test_worker_prints_its_stacks_on_sigusr1(isolated):
    """README: "`kill -USR1` prints a worker's stacks to its log" — and the worker goes on
    (SIGTERM then ends it cleanly)."""
    _, env = isolated
    worker = subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    changed = threading.Condition()

    def read() -> None:
        for line in worker.stderr:
            with changed:
                log.append(line)
                changed.notify_all()
        with changed:
            log.append("<EOF>")
            changed.notify_all()

    threading.Thread(target=read, daemon=True).start()

    def wait_for(predicate, what: str, timeout_s: float) -> None:
        with changed:
            ok = changed.wait_for(lambda: predicate() or "<EOF>" in log, timeout=timeout_s)
        assert ok and "<EOF>" not in log, f"waiting for {what}: {''.join(log)[-3000:]}"

    try:
        # The worker prints this line once its handler is registered.
        wait_for(lambda: any(line.startswith("worker: consuming") for line in log),
                 "the worker to start", 120)
        worker.send_signal(signal.SIGUSR1)
        # A process signal lands on any of its OS threads: when that is a native one
        # (a runtime's pool), no Python thread is "Current", so both headers count.
        wait_for(lambda: any(line.startswith(("Current thread 0x", "Thread 0x")) for line in log)
                 and any("in _worker" in line for line in log), "the stack dump", 60)
        text = "".join(log)
        assert "(most recent call first):" in text
        assert 'facestream/cli.py", line' in text
        assert worker.poll() is None, "USR1 must not stop the worker"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, "".join(log)[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


# --- events tail ------------------------------------------------------------------------------

def test_events_tail_json_and_group(isolated):
    """README: `facestream events tail [--stream ID] [--group G] [--json]`: --json prints each
    event as the JSON the workers wrote; each --group reads the stream for itself and
    acknowledges what it printed."""
    import redis

    settings, env = isolated
    stream_id = f"tail-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.events_stream}:{stream_id}"
    written = [events.stream_error(stream_id=stream_id, message=f"event {i}", time_s=float(i),
                                   seq=i, profile="compact", time_epoch=time.time(),
                                   fatal=False) for i in range(3)]
    for event in written:
        client.xadd(key, {"id": event["id"], "type": event["type"], "event": json.dumps(event)})

    for group in ("first-group", "second-group"):
        proc = run_cli("events", "tail", "--stream", stream_id, "--group", group, "--json",
                       "--count", "3", env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line) for line in proc.stdout.splitlines()] == written, group
        assert client.xpending(key, group)["pending"] == 0, f"{group} did not acknowledge"
    groups = {g["name"].decode() for g in client.xinfo_groups(key)}
    assert groups == {"first-group", "second-group"}


def test_an_rtsp_camera_through_ingest_and_a_worker_gives_what_analyze_gives(
        isolated, models, face_analyzer, sample, tmp_path):
    """README's cameras are RTSP: one (tests/media.py's RtspCamera: RTP over the RTSP
    connection, H.264 per RFC 6184) published by `facestream ingest` and analysed by a
    worker gives the events `facestream analyze` gives for the same camera: the same ids,
    windows and labels."""
    from facestream.scenes import face_patch, load_rgb
    from tests.helpers import comparable, read_events
    from tests.integration.helpers import events_in_redis
    from tests.integration.test_distributed import _run_worker
    from tests.media import RtspCamera

    settings, env = isolated
    photo = load_rgb(sample("single_face.jpg"))
    patch = face_patch(photo, tuple(int(v) for v in face_analyzer(photo).boxes[0]), 200)
    frames = []
    for i in range(75):                          # 3 s at 25 fps, the face drifting right
        canvas = np.full((360, 640, 3), 70, np.uint8)
        canvas[80:280, 120 + 2 * i:320 + 2 * i] = patch
        frames.append(canvas)
    camera = RtspCamera(frames, [1.0, None, 1.0, None])   # the clip, down; again, down
    quick = {"FACESTREAM_RECONNECT_ATTEMPTS": "1", "FACESTREAM_RECONNECT_BACKOFF_S": "0.05",
             "FACESTREAM_OPEN_TIMEOUT_S": "60"}
    try:
        published = run_cli("ingest", camera.url, "--stream-id", "rtsp-cam", timeout=300,
                            env={**env, **quick})
        analysed = run_cli("analyze", camera.url, "--stream-id", "rtsp-cam", "--no-describe",
                           "--out", str(tmp_path / "embedded"), timeout=300,
                           env={**env, **quick})
    finally:
        camera.close()
    assert published.returncode == 2 and "gave up after 1 reconnects" in published.stderr
    assert analysed.returncode == 0, analysed.stderr
    _run_worker(settings, models, streams_to_end=1)
    expected = {e["id"]: e for e in read_events(tmp_path / "embedded" / "events.jsonl")
                if e["type"] != events.STREAM_ERROR}
    got = [e for e in events_in_redis(settings, f"{settings.events_stream}:rtsp-cam")
           if e["type"] != events.STREAM_ERROR]
    assert any(e["type"] == events.FACE_ANALYSIS for e in got)
    assert {e["id"] for e in got} == set(expected)
    for e in got:
        assert comparable(e) == comparable(expected[e["id"]])
