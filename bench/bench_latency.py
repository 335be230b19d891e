"""Live-latency benchmark: from the moment a live camera has a frame to the face event in
Redis, for one worker at 1, 4 and 8 streams, cameras with 1, 2 and 4 s GOPs, with whole-GOP
chunks (before) and with chunks that leave every ``chunk_max_s`` (after).

The camera.  The sample clip WolfgangLanger_Pexels.mp4 (640x360, 23.976 fps, 19.6 s) is
re-encoded once per GOP length (cached in ``<tmp>/bench-latency``) with libx264 as a live
camera encodes: no B-frames, ``tune=zerolatency``, a keyframe every GOP exactly
(``keyint = min-keyint = round(fps * GOP)``, ``scenecut=0``), into MPEG-TS; the first
``--seconds`` of it.  An HTTP server on 127.0.0.1 (a path per stream, one connection each)
sends the TS bytes up to the end of video packet k when the wall clock reaches the
connection's start + packet k's media time (its pts - the first packet's pts), so a GOP is
complete only once its duration has passed, then ends the (chunked) response.  As with any
MPEG-TS camera, the demuxer hands a frame on when the next one's bytes begin (one frame
later, 42 ms), and FFmpeg's probe of a new connection reads about 0.9 s of video before the
first packet comes out, which the first window of each stream waits for.  Stream i
connects i/N of a GOP after the first (cameras' GOPs are not in step).  The servers and the
publishers share a child process (edge publishers do not share the worker's interpreter);
the worst lateness of a camera write against its schedule is printed per cell
(``cam late ms``).

The pipeline.  Each stream is published by ``ingest()`` of its camera URL (an ``http://``
source is live, so ``chunk_max_s`` applies; ``reconnect_attempts=0``: the publisher ends the
stream when its camera closes).  before = ``chunk_max_s=0`` (a chunk leaves once its whole GOP
is in), after = ``chunk_max_s=0.5`` (the default: every 0.5 s of video, as ``fs-unfinished``
and ``fs-continued`` chunks).  ``--baseline previous`` makes before the worker as it was
before windows closed at the end of a chunk's last frame and rounds were bounded: 0.5 s
chunks, the media clock at the last frame's time (``ChunkDecoder._tick`` swapped for the
measurement) and ``round_max_s=0``, so the ratio is that of those two changes.
``--baseline descriptions`` compares the worker with descriptions on (after: SmolLM2 writing
a sentence for the windows the scheduler picks, following their events) against the same
worker without (before), both with 0.5 s chunks: whether the structured events keep their
latency while sentences are written beside them.  ``--baseline detect`` compares the worker
detecting faces on every analysed frame (before: ``detect_interval_s=0``) against the default
(after: faces followed by their mesh between detections), both with 0.5 s chunks.  One
``Worker`` (``--no-describe`` unless
that baseline's after side, ``FACESTREAM_FPS=5``,
``worker_threads`` default, metrics endpoint off) runs in a thread of this process with its
models loaded once and consumes a topic of the measurement's own (6 partitions), with its
own consumer group and Redis keys, created before and deleted after.

Latency of each ``facestream.face.analysis`` event = the time Redis added it (its entry id,
Redis's millisecond clock; same host) - the time the window's last frame existed at the
camera: the connection's start + (``data.window.end_pts`` - the first packet's pts) in the
TS time base.  That media time is also ``data.window.end_s`` when the publisher's origin
(the stream's start_time) is the first packet's pts; every event is checked for it and the
events that differ are counted (``end_s off``), as are the windows whose ``end_pts`` is no
packet's pts.  Every time here is a difference of wall-clock times, so a measurement in
which the wall clock moved more than 0.5 s against the monotonic clock (``clock s``: a
machine paused and its clock set forward) is discarded and taken again, at most twice;
the discarded ones are counted and kept in the RESULT.

Both sides alike: one untimed measurement of each side first (warm-up: model sessions,
MediaPipe graphs, the broker), then ``--rounds`` (default 2) rounds in which every (GOP,
streams, side) runs once, in turn, the two sides of a cell one after the other, so drift on
a shared machine hits all of them.  Per cell: p50, p95 and max latency, each the median over
the rounds with its spread (min-max), the events, the worker's dropped live chunks, the CPU
seconds of this process (the worker's threads and clients) from the worker's start until it
stopped, the 1-minute load average; after/before ratios of p50, p95 and CPU seconds (median
/ median, min-max of the per-round ratios); and the issue's targets (2 s GOP: p95 <= 1.5 s
at 4 streams and <= 2.5 s at 8, p50 <= 0.7 s at 4; 4 s GOPs no worse than 2 s GOPs by more
than 0.5 s), met or missed by the medians, with the rounds that met them.  The last line is
``RESULT {json}``.  The defaults (38 measurements of 12 s of video and up to 3.5 s of
stagger) took 9-12 minutes on a 2-core machine on 2026-12-01; the script prints its
estimate first.  ``--quick``: 1 and 4 streams, 2 and 4 s GOPs, one round (2.5 minutes).

    .venv/bin/python bench/bench_latency.py [--streams 1,4,8] [--gops 1,2,4] [--rounds N]
                                            [--seconds S] [--quick] [--start-services]
                                            [--baseline gop|previous|descriptions|detect]

Kafka and Redis: as ``bench/bench_distributed.py`` (``--start-services``, else the pair
FACESTREAM_KAFKA_BOOTSTRAP and FACESTREAM_REDIS_URL name; see bench/services.py).  The
clip comes from FACESTREAM_CACHE_DIR (``facestream models pull --samples``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.server  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from facestream import assets, events  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.errors import SourceDropped  # noqa: E402
from facestream.ingest.publisher import ingest  # noqa: E402
from facestream.ingest.sources import parse_source  # noqa: E402
from facestream.runtime import tune_allocator  # noqa: E402
from facestream.vision.decode import ChunkDecoder  # noqa: E402

from bench_distributed import (CLIP, FPS, PARTITIONS, forget,  # noqa: E402
                               measurement_settings, ratio_text, run_worker, spread,
                               stat_json, stream_counts, stream_ids)
from services import Endpoints, fresh_topic, services  # noqa: E402

SIDES = {"before": 0.0, "after": 0.5}          # side -> chunk_max_s
BASELINES = ("gop", "previous", "descriptions", "detect")       # --baseline: what before is
GOPS = (1.0, 2.0, 4.0)
STREAMS = (1, 4, 8)
SECONDS = 12.0
QUICK = {"streams": [1, 4], "gops": [2.0, 4.0], "rounds": 1}
OVERHEAD_S = 3.0          # per measurement besides the video: topic, group join, drain
CLOCK_STEP_LIMIT_S = 0.5  # wall clock against the monotonic one, over one measurement
CLOCK_RETRIES = 2
CACHE = Path(tempfile.gettempdir()) / "bench-latency"


# the camera ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    """An MPEG-TS file as a camera would send it, with each video packet's pts and the byte
    offset at which the packet (and everything before it) has been sent."""

    path: str
    gop_s: float
    gop_frames: int
    time_base: Fraction
    pts: tuple[int, ...]
    ends: tuple[int, ...]

    def media_s(self, pts: int) -> float:
        """Media seconds of ``pts`` from the first packet."""
        return float((pts - self.pts[0]) * self.time_base)


def encode(clip: Path, target: Path, *, gop_frames: int, seconds: float) -> None:
    """The first ``seconds`` of ``clip`` re-encoded as a live camera would (see the module
    docstring) into the MPEG-TS file ``target``."""
    buffer = io.BytesIO()
    with av.open(str(clip)) as src, av.open(buffer, "w", format="mpegts") as dst:
        video = src.streams.video[0]
        rate = video.average_rate
        out = dst.add_stream("libx264", rate=rate, options={
            "g": str(gop_frames), "bf": "0", "tune": "zerolatency", "preset": "veryfast",
            "x264-params": f"keyint={gop_frames}:min-keyint={gop_frames}:scenecut=0"})
        out.width, out.height, out.pix_fmt = video.width, video.height, "yuv420p"
        for i, decoded in enumerate(src.decode(video)):
            if i >= round(seconds * rate):
                break
            # A fresh frame: x264 would make the source's own keyframes keyframes again.
            frame = av.VideoFrame.from_ndarray(decoded.to_ndarray(format="yuv420p"),
                                               format="yuv420p")
            frame.pts, frame.time_base = i, 1 / rate
            for packet in out.encode(frame):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    partial = target.with_suffix(".partial")
    partial.write_bytes(buffer.getvalue())
    partial.replace(target)


def record(clip: Path, gop_s: float, seconds: float) -> Recording:
    """The camera's recording for one GOP length, encoded on first use and cached; exits
    with the reason if its keyframes are not exactly every GOP."""
    with av.open(str(clip)) as src:
        gop_frames = round(gop_s * src.streams.video[0].average_rate)
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{clip.stem}-{clip.stat().st_size}-gop{gop_frames}-{seconds:g}s.ts"
    if not path.exists():
        encode(clip, path, gop_frames=gop_frames, seconds=seconds)
    data = path.read_bytes()
    with av.open(io.BytesIO(data), format="mpegts") as container:
        video = container.streams.video[0]
        time_base = video.time_base
        packets = [(p.pts, p.pos, p.is_keyframe) for p in container.demux(video) if p.size]
    keyframes = [i for i, (_, _, key) in enumerate(packets) if key]
    if keyframes != list(range(0, len(packets), gop_frames)):
        raise SystemExit(f"{path}: keyframes at packets {keyframes[:8]}..., expected every "
                         f"{gop_frames}; delete it and run again")
    starts = [pos for _, pos, _ in packets]
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise SystemExit(f"{path}: video packets are not in byte order; delete it")
    return Recording(str(path), gop_s, gop_frames, time_base,
                     tuple(pts for pts, _, _ in packets), (*starts[1:], len(data)))


def start_stream(handler: http.server.BaseHTTPRequestHandler) -> None:
    """Answer a camera request with the head of a live MPEG-TS stream of unknown length
    (chunked, closed at its end, no Nagle delay on its writes)."""
    handler.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    handler.send_response(200)
    handler.send_header("Content-Type", "video/mp2t")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Connection", "close")
    handler.end_headers()


class Cameras:
    """One HTTP server on 127.0.0.1 serving ``recording`` as a live camera at
    ``/<stream id>.ts`` for each of ``stream_ids``, once each (a second request gets 404).
    ``starts[id]``: wall time (``time.time``) of the connection's media time 0;
    ``late[id]``: how late each write was against its schedule, seconds; ``finished``: the
    streams sent to the end.  Blocking writes, one thread per connection."""

    def __init__(self, recording: Recording, stream_ids: list[str]) -> None:
        self.starts: dict[str, float] = {}
        self.late: dict[str, list[float]] = {}
        self.finished: set[str] = set()
        data = memoryview(Path(recording.path).read_bytes())
        schedule = [(recording.media_s(pts), end) for pts, end in zip(recording.pts,
                                                                       recording.ends)]
        waiting, lock, outer = set(stream_ids), threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stream_id = self.path.lstrip("/").removesuffix(".ts")
                with lock:
                    known = stream_id in waiting
                    waiting.discard(stream_id)
                if not known:
                    self.send_error(404, "no such camera, or already streaming")
                    return
                start_stream(self)
                start, sent, late = time.time(), 0, []
                outer.starts[stream_id], outer.late[stream_id] = start, late
                try:
                    for media_s, end in schedule:
                        if (ahead := start + media_s - time.time()) > 0:
                            time.sleep(ahead)
                        late.append(time.time() - start - media_s)
                        self.wfile.write(b"%x\r\n%s\r\n" % (end - sent, data[sent:end]))
                        sent = end
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    return
                outer.finished.add(stream_id)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, stream_id: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{stream_id}.ts"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# publishers (child process) ------------------------------------------------------------

def publish_camera(url: str, settings: Settings, stream_id: str, delay_s: float) -> None:
    time.sleep(delay_s)
    try:
        ingest(parse_source(url), settings, stream_id=stream_id)
    except SourceDropped:
        pass          # the camera closed after its last frame; the stream's end went out


def publish_staggered(cameras: Cameras, recording: Recording, settings: Settings,
                      stream_ids: list[str]) -> None:
    """Publish each camera, stream i connecting i/N of a GOP after the first, until they
    all end; then close the cameras."""
    try:
        with ThreadPoolExecutor(len(stream_ids)) as threads:
            futures = [threads.submit(publish_camera, cameras.url(stream_id), settings,
                                      stream_id, i * recording.gop_s / len(stream_ids))
                       for i, stream_id in enumerate(stream_ids)]
            for future in futures:
                future.result()
    finally:
        cameras.close()


def publish_cameras(recording: Recording, settings: Settings,
                    stream_ids: list[str]) -> tuple[dict[str, float], list[float]]:
    """Serve the cameras and publish each (stream i connecting i/N of a GOP after the
    first) until they end; returns each stream's connection start and the lateness of every
    camera write (seconds).  Exits if a camera did not send its whole recording."""
    cameras = Cameras(recording, stream_ids)
    publish_staggered(cameras, recording, settings, stream_ids)
    if missing := sorted(set(stream_ids) - cameras.finished):
        raise SystemExit(f"cameras {', '.join(missing)} did not send their whole recording")
    return cameras.starts, [x for late in cameras.late.values() for x in late]


# measurements --------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    gop_s: float
    streams: int
    side: str
    completed: bool                 # the worker saw every stream end in time
    latencies: tuple[float, ...]    # seconds, one per analysis event
    end_s_off: int                  # events whose window end_s is not their end_pts' time
    unknown_pts: int                # events whose end_pts is no packet's pts
    dropped: int                    # live chunks the worker dropped (it fell behind)
    chunks: int                     # chunks the worker processed
    camera_late_max_s: float        # worst lateness of a camera write
    clock_step_s: float             # wall clock gained on the monotonic one over the run
    load: float                     # 1-minute load average at the end
    seconds: float                  # wall seconds from the worker's start until it stopped
    cpu_s: float                    # CPU seconds of this process over the same span

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def side_settings(side: str, baseline: str) -> dict:
    """The settings a side's measurement changes (``--baseline previous``: before is 0.5 s
    chunks with unbounded rounds, and the previous close rule, see :func:`close_rule`)."""
    if side == "before" and baseline == "previous":
        return {"chunk_max_s": SIDES["after"], "round_max_s": 0.0}
    if baseline == "descriptions":
        return {"chunk_max_s": SIDES["after"], "describe": side == "after"}
    if baseline == "detect":            # before: the detector on every analysed frame
        return {"chunk_max_s": SIDES["after"], **({"detect_interval_s": 0.0}
                                                  if side == "before" else {})}
    return {"chunk_max_s": SIDES[side]}


@contextlib.contextmanager
def close_rule(previous: bool):
    """With ``previous``, the worker's decoders keep the media clock at the last frame's
    time (the rule before it became the end of that frame) while the block runs."""
    if not previous:
        yield
        return
    tick = ChunkDecoder._tick

    def frame_time(decoder: ChunkDecoder, pts: int, t: float, chunk) -> None:
        decoder.clock_s = t

    ChunkDecoder._tick = frame_time
    try:
        yield
    finally:
        ChunkDecoder._tick = tick


def measure(endpoints: Endpoints, models, pool: Executor, recording: Recording, *,
            streams: int, side: str, baseline: str = "gop") -> Run:
    tag = f"lat-{uuid.uuid4().hex[:8]}"
    settings = replace(measurement_settings(endpoints, tag), **side_settings(side, baseline))
    publishing = replace(settings, reconnect_attempts=0)
    ids = stream_ids(tag, streams)
    offset = time.time() - time.monotonic()
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS), \
            close_rule(side == "before" and baseline == "previous"):
        (starts, late), report, seconds, cpu_s = run_worker(
            settings, models, streams,
            feed=lambda: pool.submit(publish_cameras, recording, publishing, ids).result())
    step = time.time() - time.monotonic() - offset
    found = latencies(settings, recording, starts)
    forget(settings, ids)
    return Run(recording.gop_s, streams, side, report.streams_ended >= streams,
               tuple(found["latencies"]), found["end_s_off"], found["unknown_pts"],
               report.dropped_chunks, report.chunks, max(late), step, os.getloadavg()[0],
               seconds, cpu_s)


def latencies(settings: Settings, recording: Recording, starts: dict[str, float]) -> dict:
    """Latency of each analysis event in Redis (see the module docstring), and the counts
    of events whose media time does not map onto the camera's packets."""
    from facestream.sinks.redis_stream import make_redis

    known = set(recording.pts)
    out = {"latencies": [], "end_s_off": 0, "unknown_pts": 0}
    for entry_id, fields in make_redis(settings).xrange(settings.events_stream):
        event = json.loads(fields[b"event"])
        if event["type"] != events.FACE_ANALYSIS:
            continue
        window = event["data"]["window"]
        media_s = recording.media_s(window["end_pts"])
        out["end_s_off"] += abs(window["end_s"] - media_s) > 0.0015
        out["unknown_pts"] += window["end_pts"] not in known
        added_at = int(entry_id.split(b"-")[0]) / 1000
        out["latencies"].append(added_at - (starts[event["data"]["stream_id"]] + media_s))
    return out


# report --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    side: str
    limit_s: float
    value_s: float            # from the medians over the rounds
    by_round: list[float]

    @property
    def met(self) -> bool:
        return self.value_s <= self.limit_s

    def text(self) -> str:
        rounds = sum(v <= self.limit_s for v in self.by_round)
        return (f"{self.name}, {self.side}: {self.value_s:.2f} s (limit {self.limit_s:g} s) "
                f"{'met' if self.met else 'missed'}; {rounds} of {len(self.by_round)} rounds met")


def cell_runs(runs: list[Run], gop_s: float, streams: int, side: str) -> list[Run]:
    """One cell's runs, in round order."""
    return [r for r in runs if (r.gop_s, r.streams, r.side) == (gop_s, streams, side)]


def targets(runs: list[Run], streams: list[int]) -> list[Target]:
    """The issue's targets that the runs cover, for each side."""
    out = []
    for side in SIDES:
        for count, q, limit in ((4, 95, 1.5), (8, 95, 2.5), (4, 50, 0.7)):
            cell = cell_runs(runs, 2.0, count, side)
            if cell:
                values = [r.percentile(q) for r in cell]
                out.append(Target(f"p{q}, 2 s GOP, {count} streams", side, limit,
                                  statistics.median(values), values))
        for count in streams:
            two, four = cell_runs(runs, 2.0, count, side), cell_runs(runs, 4.0, count, side)
            if two and four:
                for q in (50, 95):
                    by_round = [b.percentile(q) - a.percentile(q) for a, b in zip(two, four)]
                    value = (statistics.median(r.percentile(q) for r in four)
                             - statistics.median(r.percentile(q) for r in two))
                    out.append(Target(f"p{q}, 4 s GOP - 2 s GOP, {count} streams", side, 0.5,
                                      value, by_round))
    return out


def print_report(runs: list[Run], gops: list[float], streams: list[int], *,
                 described: bool = False) -> None:
    print(f"{'GOP s':>5}  {'streams':>7}  {'side':>6}  {'events':>6}  {'p50 s':>16}  "
          f"{'p95 s':>16}  {'max s':>16}  {'dropped':>7}  {'end_s off':>9}  "
          f"{'CPU s':>16}  {'cam late ms':>11}  {'clock s':>7}  {'load':>13}")
    for gop_s in gops:
        for count in streams:
            for side in SIDES:
                cell = cell_runs(runs, gop_s, count, side)
                unfinished = sum(not r.completed for r in cell)
                print(f"{gop_s:>5g}  {count:>7}  {side:>6}  "
                      f"{spread([len(r.latencies) for r in cell], 0):>6}  "
                      f"{spread([r.percentile(50) for r in cell], 2):>16}  "
                      f"{spread([r.percentile(95) for r in cell], 2):>16}  "
                      f"{spread([r.percentile(100) for r in cell], 2):>16}  "
                      f"{sum(r.dropped for r in cell):>7}  "
                      f"{sum(r.end_s_off + r.unknown_pts for r in cell):>9}  "
                      f"{spread([r.cpu_s for r in cell]):>16}  "
                      f"{max(r.camera_late_max_s for r in cell) * 1000:>11.1f}  "
                      f"{max(abs(r.clock_step_s) for r in cell):>7.2f}  "
                      f"{spread([r.load for r in cell]):>13}"
                      + (f"  ({unfinished} did not finish)" if unfinished else ""))
            before, after = (cell_runs(runs, gop_s, count, side) for side in SIDES)
            ratios = [ratio_text([r.percentile(q) for r in after],
                                 [r.percentile(q) for r in before]) for q in (50, 95)]
            cpu = ratio_text([r.cpu_s for r in after], [r.cpu_s for r in before])
            print(f"{'':>24}after/before: p50 {ratios[0]}, p95 {ratios[1]}, CPU s {cpu}")
    print("targets (issue 17; 2-core worker, 5 fps; descriptions off, and with them the "
          "structured events keep the figures):" if described else
          "targets (issue 17; 2-core worker, 5 fps, descriptions off):")
    for target in targets(runs, streams):
        print(f"  {target.text()}")


def run_json(run: Run, baseline: str) -> dict:
    return {"gop_s": run.gop_s, "streams": run.streams, "side": run.side,
            **side_settings(run.side, baseline), "completed": run.completed,
            "events": len(run.latencies), "p50_s": round(run.percentile(50), 3),
            "p95_s": round(run.percentile(95), 3), "max_s": round(run.percentile(100), 3),
            "end_s_off": run.end_s_off, "unknown_pts": run.unknown_pts,
            "dropped_chunks": run.dropped, "chunks": run.chunks,
            "camera_late_max_s": round(run.camera_late_max_s, 4),
            "clock_step_s": round(run.clock_step_s, 3),
            "seconds": round(run.seconds, 2), "cpu_s": round(run.cpu_s, 2),
            "load": round(run.load, 2)}


def cells_json(runs: list[Run], gops: list[float], streams: list[int]) -> list[dict]:
    out = []
    for gop_s in gops:
        for count in streams:
            sides = {side: cell_runs(runs, gop_s, count, side) for side in SIDES}
            cell = {"gop_s": gop_s, "streams": count}
            for side, cell_side in sides.items():
                cell[side] = {f"p{q}_s": stat_json([r.percentile(q) for r in cell_side])
                              for q in (50, 95, 100)}
            for q in (50, 95):
                after, before = ([r.percentile(q) for r in sides[s]] for s in ("after", "before"))
                cell[f"ratio_p{q}"] = round(statistics.median(after)
                                            / statistics.median(before), 3)
            out.append(cell)
    return out


def gop_lengths(text: str) -> list[float]:
    """``--gops``: comma-separated GOP lengths in seconds."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}")
    if not values or min(values) <= 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct positive seconds, got {text!r}")
    return sorted(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=stream_counts, default=None,
                        help=f"streams per worker (default {','.join(map(str, STREAMS))})")
    parser.add_argument("--gops", type=gop_lengths, default=None,
                        help=f"camera GOP lengths, s (default {','.join(f'{g:g}' for g in GOPS)})")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds after one warm-up run of each side (default 2)")
    parser.add_argument("--seconds", type=float, default=SECONDS,
                        help=f"seconds of the clip each camera sends (default {SECONDS:g})")
    parser.add_argument("--quick", action="store_true",
                        help="streams 1,4, GOPs 2,4, one round (explicit options win)")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    parser.add_argument("--baseline", choices=BASELINES, default="gop",
                        help="before = whole GOPs (gop, the default), or 0.5 s chunks as the "
                             "worker handled them before windows closed at a frame's end and "
                             "rounds were bounded (previous), or the same worker without "
                             "descriptions, after = with them (descriptions), or detecting "
                             "every analysed frame, after = faces followed between "
                             "detections (detect)")
    args = parser.parse_args()
    preset = QUICK if args.quick else {"streams": list(STREAMS), "gops": list(GOPS), "rounds": 2}
    streams = args.streams or preset["streams"]
    gops = args.gops or preset["gops"]
    rounds = args.rounds if args.rounds is not None else preset["rounds"]
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    base = Settings.load({"describe": False, "fps": FPS})
    clip = assets.sample(base.cache_dir, CLIP)
    with av.open(str(clip)) as container:
        clip_s = container.duration / av.time_base
    if not 2 * max(gops) <= args.seconds <= clip_s:
        parser.error(f"--seconds must be between two GOPs ({2 * max(gops):g}) and the clip's "
                     f"length ({clip_s:.1f})")
    tune_allocator()          # as the facestream CLI does at start-up

    from facestream.workers.compose import Models

    order = [(g, n, side) for g in gops for n in streams for side in SIDES]
    estimate = sum(args.seconds + g * (n - 1) / n + OVERHEAD_S
                   for g, n, _ in [(gops[0], streams[0], s) for s in SIDES] + order * rounds)
    print(f"{len(SIDES)} warm-up + {rounds} x {len(order)} measurements of {args.seconds:g} s "
          f"of video: about {estimate / 60:.0f} minutes", flush=True)
    recordings = {g: record(clip, g, args.seconds) for g in gops}
    spawn = multiprocessing.get_context("spawn")
    started, load_before = time.monotonic(), os.getloadavg()
    with services(start=args.start_services) as endpoints, \
            ProcessPoolExecutor(1, mp_context=spawn) as pool:
        models = Models.load(base)
        # --baseline descriptions: the after side's worker has the describer loaded too
        described = (Models.load(replace(base, describe=True))
                     if args.baseline == "descriptions" else models)

        discarded: list[Run] = []

        def once(gop_s: float, count: int, side: str) -> Run:
            result = measure(endpoints, described if side == "after" else models, pool,
                             recordings[gop_s], streams=count, side=side,
                             baseline=args.baseline)
            print(f"  GOP {gop_s:g} s, {count} streams, {side}: {len(result.latencies)} "
                  f"events, p50 {result.percentile(50):.2f} s, p95 {result.percentile(95):.2f}"
                  f" s, dropped {result.dropped}, load {result.load:.2f}", flush=True)
            return result

        def run(gop_s: float, count: int, side: str) -> Run:
            """One measurement, taken again (at most CLOCK_RETRIES times) while the wall
            clock steps during it: every latency is a difference of wall-clock times."""
            result = once(gop_s, count, side)
            for _ in range(CLOCK_RETRIES):
                if abs(result.clock_step_s) <= CLOCK_STEP_LIMIT_S:
                    break
                print(f"    the wall clock moved {result.clock_step_s:+.2f} s against the "
                      "monotonic clock (a paused machine?): discarded, measuring again",
                      flush=True)
                discarded.append(result)
                result = once(gop_s, count, side)
            return result

        for side in SIDES:                       # warm-up, not counted
            run(gops[0], streams[0], side)
        runs = [run(*cell) for _ in range(rounds) for cell in order]
    load_after = os.getloadavg()

    print(f"clip {clip.name}, first {args.seconds:g} s re-encoded per GOP (x264, no B-frames, "
          f"zerolatency); {FPS:g} fps analysis, one worker, Kafka {endpoints.kafka_bootstrap}, "
          f"Redis {endpoints.redis_url}; {os.cpu_count()} cores, load average (1/5/15 min) "
          f"before {'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}; {time.monotonic() - started:.0f} s")
    before = {"previous": f"chunk_max_s {SIDES['after']:g}, windows closed at the last "
                          "frame's time, round_max_s 0 (the previous worker)",
              "descriptions": f"chunk_max_s {SIDES['after']:g}, no descriptions",
              "gop": f"chunk_max_s {SIDES['before']:g} (whole GOPs)",
              "detect": f"chunk_max_s {SIDES['after']:g}, detect_interval_s 0 (the detector "
                        "on every analysed frame)"}[args.baseline]
    after = "with descriptions (follow), " if args.baseline == "descriptions" else ""
    print(f"before = {before}, after = {after}chunk_max_s {SIDES['after']:g}, round_max_s "
          f"{base.round_max_s:g}; warm-up run of each side, then {rounds} interleaved rounds: "
          "median (min-max); ratio = median / median of before (min-max of the per-round "
          "ratios); latency = Redis entry time - camera time of the window's last frame")
    print_report(runs, gops, streams, described=args.baseline == "descriptions")
    print(f"measurements discarded and taken again because the wall clock moved more than "
          f"{CLOCK_STEP_LIMIT_S:g} s during them: {len(discarded)}")
    print("RESULT " + json.dumps({
        "clip": CLIP, "fps": FPS, "seconds": args.seconds, "rounds": rounds,
        "streams": streams, "gops": gops, "baseline": args.baseline,
        "sides": {side: side_settings(side, args.baseline) for side in SIDES},
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "cores": os.cpu_count(), "wall_s": round(time.monotonic() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "gop_frames": {f"{g:g}": recordings[g].gop_frames for g in gops},
        "cells": cells_json(runs, gops, streams),
        "targets": [{"name": t.name, "side": t.side, "limit_s": t.limit_s,
                     "value_s": round(t.value_s, 3), "met": t.met,
                     "by_round": [round(v, 3) for v in t.by_round]}
                    for t in targets(runs, streams)],
        "runs": [run_json(r, args.baseline) for r in runs],
        "discarded_runs": [run_json(r, args.baseline) for r in discarded]}))


if __name__ == "__main__":
    main()
