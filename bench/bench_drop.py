"""Camera-drop benchmark: how long after a live camera drops the face event of its last
window before the drop is in Redis, with the publisher's MediaClock markers (after) and
without them (before, the window waits for the camera to come back).

The camera.  The live-latency camera of ``bench/bench_latency.py`` (the sample clip
re-encoded by libx264 as a live camera encodes, 2 s GOPs, MPEG-TS, sent in real time over
loopback HTTP).  Each stream's first connection sends the recording up to ``--drop-s`` of
media time (4.5 s: inside a window, which a window of 1 s started at 4 s) and closes the
connection; for ``--down-s`` (3 s) of wall time the camera answers 503; the next connection
sends the first ``--back-s`` (2 s) of the recording, then the camera answers 404 until the
publisher gives up and ends the stream.  The publishers (``ingest()`` of each camera URL,
reconnect backoff 0.5 s doubling to at most 1 s, 6 attempts) run in a child process; in
the before side that process's ``ChunkPublisher.clock`` sends nothing, so no marker is in
the log and the worker is unchanged.  One ``Worker`` (5 fps, no descriptions) runs in this
process with its models loaded once, on a topic, group and Redis keys of the measurement's
own.

Latency of an analysis event of the first connection (window end before ``--drop-s``) = the
time Redis added it - (the connection's start + the media time of the window's last frame).
The **stranded** windows are those whose 1 s window the drop cut (their last frame is in the
last window before the drop); the rest are the windows the drop does not touch, as a check
that nothing else moved.  One warm-up measurement of each side, then ``--rounds`` (default 3)
rounds, the two sides in turn; figures are medians over the rounds (min-max), and the ratio
after/before of the stranded windows' latency.  The last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_drop.py [--streams 1,4] [--rounds N] [--drop-s 4.5]
                                         [--down-s 3] [--start-services]

Kafka and Redis: as ``bench/bench_distributed.py`` (``--start-services``, else the pair
FACESTREAM_KAFKA_BOOTSTRAP and FACESTREAM_REDIS_URL name; see bench/services.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from facestream import assets, events  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.ingest.publisher import ChunkPublisher  # noqa: E402
from facestream.runtime import tune_allocator  # noqa: E402

from bench_distributed import (CLIP, FPS, PARTITIONS, forget,  # noqa: E402
                               measurement_settings, ratio_text, run_worker, spread,
                               stat_json, stream_counts, stream_ids)
from bench_latency import (Cameras, Recording, publish_staggered, record,  # noqa: E402
                           start_stream)
from services import Endpoints, fresh_topic, services  # noqa: E402

SIDES = ("before", "after")            # after: MediaClock markers sent
GOP_S = 2.0
SECONDS = 6.0                          # of the clip, recorded once
BACKOFF = {"reconnect_backoff_s": 0.5, "reconnect_backoff_max_s": 1.0,
           "reconnect_attempts": 6}


# the camera ----------------------------------------------------------------------------

class DroppingCameras(Cameras):
    """One HTTP server on 127.0.0.1: per stream, the recording up to ``drop_s`` then a
    closed connection; 503 for ``down_s`` after that; the first ``back_s`` of the recording
    on the next connection; 404 from then on.  ``starts[id]``: wall time of the first
    connection's media time 0.  (``url`` and ``close`` are the live-latency cameras'.)"""

    def __init__(self, recording: Recording, stream_ids: list[str], *, drop_s: float,
                 down_s: float, back_s: float) -> None:
        self.starts: dict[str, float] = {}
        self.dropped: dict[str, float] = {}
        self.late: list[float] = []
        data = memoryview(Path(recording.path).read_bytes())
        schedule = [(recording.media_s(pts), end) for pts, end in zip(recording.pts,
                                                                       recording.ends)]
        served: dict[str, int] = {s: 0 for s in stream_ids}
        lock, outer = threading.Lock(), self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stream_id = self.path.lstrip("/").removesuffix(".ts")
                with lock:
                    count = served.get(stream_id)
                    dropped = outer.dropped.get(stream_id)
                    down = dropped is not None and time.time() < dropped + down_s
                    if count is not None and count < 2 and not down:
                        served[stream_id] = count + 1
                if count is None or count >= 2:
                    self.send_error(404, "no such camera, or it is gone")
                    return
                if down:
                    self.send_error(503, "camera down")
                    return
                until = drop_s if count == 0 else back_s
                start_stream(self)
                start, sent = time.time(), 0
                if count == 0:
                    outer.starts[stream_id] = start
                try:
                    for media_s, end in schedule:
                        if media_s >= until:
                            break
                        if (ahead := start + media_s - time.time()) > 0:
                            time.sleep(ahead)
                        outer.late.append(time.time() - start - media_s)
                        self.wfile.write(b"%x\r\n%s\r\n" % (end - sent, data[sent:end]))
                        sent = end
                    if count == 1:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if count == 0:
                    # The drop: the connection closes mid-stream, with no chunked terminator.
                    with lock:
                        outer.dropped[stream_id] = time.time()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


# publishers (child process) ------------------------------------------------------------

def publish_cameras(recording: Recording, settings: Settings, stream_ids: list[str], *,
                    markers: bool, drop_s: float, down_s: float,
                    back_s: float) -> tuple[dict[str, float], float]:
    """Serve the cameras and publish each (stream i connecting i/N of a GOP after the first)
    until they end; returns each stream's first connection start and the worst lateness of
    a camera write.  Without ``markers``, no MediaClock leaves this process."""
    send_clock = ChunkPublisher.clock        # (the pool's process serves both sides)
    if not markers:
        ChunkPublisher.clock = lambda self, marker, topic=None: None
    cameras = DroppingCameras(recording, stream_ids, drop_s=drop_s, down_s=down_s,
                              back_s=back_s)
    try:
        publish_staggered(cameras, recording, settings, stream_ids)
    finally:
        ChunkPublisher.clock = send_clock
    if missing := sorted(set(stream_ids) - set(cameras.dropped)):
        raise SystemExit(f"cameras {', '.join(missing)} did not reach their drop")
    return cameras.starts, max(cameras.late)


# measurements --------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    streams: int
    side: str
    stranded: tuple[float, ...]     # latency of the windows the drop cut, s
    others: tuple[float, ...]       # latency of the first connection's other windows, s
    clocks_applied: int             # MediaClock markers the worker applied
    camera_late_max_s: float
    load: float

    def stranded_max(self) -> float:
        return max(self.stranded) if self.stranded else float("nan")

    def others_p95(self) -> float:
        return float(np.percentile(self.others, 95)) if self.others else float("nan")


def measure(endpoints: Endpoints, models, pool: Executor, recording: Recording, *,
            streams: int, side: str, drop_s: float, down_s: float, back_s: float) -> Run:
    tag = f"drop-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag)
    publishing = replace(settings, **BACKOFF)
    ids = stream_ids(tag, streams)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        (starts, late), report, _, _ = run_worker(
            settings, models, streams,
            feed=lambda: pool.submit(publish_cameras, recording, publishing, ids,
                                     markers=side == "after", drop_s=drop_s, down_s=down_s,
                                     back_s=back_s).result())
    stranded, others = first_connection(settings, recording, starts, drop_s)
    forget(settings, ids)
    return Run(streams, side, tuple(stranded), tuple(others), report.media_clocks, late,
               os.getloadavg()[0])


def first_connection(settings: Settings, recording: Recording, starts: dict[str, float],
                     drop_s: float) -> tuple[list[float], list[float]]:
    """Latencies of the first connection's analysis events: (the windows the drop cut, the
    others)."""
    from facestream.sinks.redis_stream import make_redis

    stranded, others = [], []
    for entry_id, fields in make_redis(settings).xrange(settings.events_stream):
        event = json.loads(fields[b"event"])
        if event["type"] != events.FACE_ANALYSIS:
            continue
        window = event["data"]["window"]
        if window["end_s"] >= drop_s:
            continue                                   # the second connection's
        media_s = recording.media_s(window["end_pts"])
        latency = int(entry_id.split(b"-")[0]) / 1000 - (
            starts[event["data"]["stream_id"]] + media_s)
        cut = window["start_s"] <= drop_s < window["start_s"] + settings.window_s
        (stranded if cut else others).append(latency)
    return stranded, others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=stream_counts, default=[1, 4],
                        help="streams per worker (default 1,4)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds after one warm-up run of each side (default 3)")
    parser.add_argument("--drop-s", type=float, default=4.5,
                        help="media time at which each camera drops (default 4.5)")
    parser.add_argument("--down-s", type=float, default=3.0,
                        help="wall seconds each camera stays down (default 3)")
    parser.add_argument("--back-s", type=float, default=2.0,
                        help="seconds of video the camera sends once back (default 2)")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not (1.0 <= args.drop_s < SECONDS and 0.5 <= args.back_s <= SECONDS
            and args.down_s >= 0):
        parser.error(f"--drop-s must lie in 1..{SECONDS:g} s, --back-s in 0.5..{SECONDS:g}")
    base = Settings.load({"describe": False, "fps": FPS})
    if (args.drop_s / base.window_s) % 1 == 0:
        parser.error("--drop-s on a window boundary cuts no window; pick a time inside one")
    clip = assets.sample(base.cache_dir, CLIP)
    tune_allocator()          # as the facestream CLI does at start-up

    from facestream.workers.compose import Models

    recording = record(clip, GOP_S, SECONDS)
    spawn = multiprocessing.get_context("spawn")
    started, load_before = time.monotonic(), os.getloadavg()
    with services(start=args.start_services) as endpoints, \
            ProcessPoolExecutor(1, mp_context=spawn) as pool:
        models = Models.load(base)

        def run(count: int, side: str) -> Run:
            result = measure(endpoints, models, pool, recording, streams=count, side=side,
                             drop_s=args.drop_s, down_s=args.down_s, back_s=args.back_s)
            print(f"  {count} streams, {side}: stranded windows {len(result.stranded)}, "
                  f"latest {result.stranded_max():.2f} s; other windows "
                  f"{len(result.others)}, p95 {result.others_p95():.2f} s; markers applied "
                  f"{result.clocks_applied}; load {result.load:.2f}", flush=True)
            return result

        for side in SIDES:                       # warm-up, not counted
            run(args.streams[0], side)
        runs = [run(count, side) for _ in range(args.rounds) for count in args.streams
                for side in SIDES]
    load_after = os.getloadavg()

    print(f"clip {clip.name}, first {SECONDS:g} s re-encoded with {GOP_S:g} s GOPs; cameras "
          f"drop at {args.drop_s:g} s of media, down {args.down_s:g} s, back for "
          f"{args.back_s:g} s; {FPS:g} fps, one worker; Kafka {endpoints.kafka_bootstrap}; "
          f"{os.cpu_count()} cores, load average before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}; {time.monotonic() - started:.0f} s")
    print("before = no MediaClock markers (the stranded windows wait for the camera), after "
          f"= markers; warm-up of each side, then {args.rounds} interleaved rounds: median "
          "(min-max); latency = Redis entry time - camera time of the window's last frame")
    print("| streams | side | stranded windows: latest latency (s) | other windows: p95 (s) |"
          " markers applied |")
    print("|---|---|---|---|---|")
    cells = []
    for count in args.streams:
        by_side = {side: [r for r in runs if r.streams == count and r.side == side]
                   for side in SIDES}
        for side in SIDES:
            mine = by_side[side]
            print(f"| {count} | {side} | {spread([r.stranded_max() for r in mine], 2)} | "
                  f"{spread([r.others_p95() for r in mine], 2)} | "
                  f"{spread([r.clocks_applied for r in mine], 0)} |")
        ratio = ratio_text([r.stranded_max() for r in by_side["after"]],
                           [r.stranded_max() for r in by_side["before"]])
        print(f"  {count} streams: stranded windows' latest latency after/before {ratio}")
        cells.append({"streams": count, **{
            side: {"stranded_latest_s": stat_json([r.stranded_max() for r in by_side[side]]),
                   "others_p95_s": stat_json([r.others_p95() for r in by_side[side]]),
                   "markers_applied": [r.clocks_applied for r in by_side[side]],
                   "stranded_windows": [len(r.stranded) for r in by_side[side]]}
            for side in SIDES}})
    print("RESULT " + json.dumps({
        "clip": CLIP, "fps": FPS, "gop_s": GOP_S, "drop_s": args.drop_s,
        "down_s": args.down_s, "back_s": args.back_s, "rounds": args.rounds,
        "streams": args.streams, "publisher_backoff": BACKOFF,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "cores": os.cpu_count(), "wall_s": round(time.monotonic() - started, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "camera_late_max_s": round(max(r.camera_late_max_s for r in runs), 3),
        "cells": cells}))


if __name__ == "__main__":
    main()
