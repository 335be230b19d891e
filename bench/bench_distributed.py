"""Distributed-mode benchmark: end-to-end latency of one worker at 1 to 8 real-time streams,
and the most streams it keeps up with against what its offline throughput predicts.

Kafka in, Redis out, as deployed: one ``Worker`` (``facestream worker --no-describe``, or
with ``--describe`` writing its default descriptions on change; ``FACESTREAM_FPS=5``; run in a thread of this process with its models loaded once, metrics
endpoint off, ``worker_threads`` from ``--worker-threads``) consumes the video topic; the
publishers run in a child process, as edge publishers would not share the worker's
interpreter (they, Kafka and Redis do share this machine's cores).  Every measurement has
its own topic (6 partitions, the dev broker's default), consumer group and Redis keys,
created before and deleted after.

(a) offline    ``--offline-streams`` (default 4) passes of the sample clip
               WolfgangLanger_Pexels.mp4 (640x360 H.264, 19.6 s) are published in full
               before the worker starts; throughput is the worker's analysed frames (5 per
               second of media) per wall second from its start (group join included) until
               it has seen every stream end, and per CPU second of this process over the
               same span (``time.process_time``: the worker's threads, its Kafka and Redis
               clients; the publishers are done before it starts).
(b) real time  N = 1, 2, 4, 6, 8 (``--stream-counts``) concurrent streams, each ``ingest()``
               of the clip with real-time pacing (one pass, distinct stream ids; file
               chunks, which a worker never drops however late it is), stream i starting
               i/N of a chunk period after the first so chunks do not all arrive at once.
               The publisher records the wall time it hands each chunk to the producer.
               Latency of each ``facestream.face.analysis`` event = the time Redis added it
               (its entry id, Redis's millisecond clock; same host) - the send time of the
               chunk holding the window's last frame (``data.window.end_pts``).  It
               includes waiting for the chunk that closes a window: a window ends when a
               sample of the next one arrives, often in the next chunk (~2.8 s later).  It
               starts at the send, not at capture: a paced file sends each chunk at its
               first frame's time, while a live camera's chunk leaves once its GOP is
               complete.
               The worker keeps up with N streams when p95 latency < 5 s and latency does not
               grow over the run: the least-squares slope of latency against chunk send time
               (seconds of latency per second of run) stays under 0.1 (a worker 10% short of
               the arrival rate adds ~0.1 s of backlog per second).

The largest N kept up (N and every smaller N measured), per round and its lower median over
the rounds, is compared with the theoretical count, median offline throughput / (5 frames/s
per stream).

Both sides alike: ``--worker-threads`` (default ``1,2``) measures each setting of
``worker_threads`` in the same run, with each of ``--detect-intervals`` (default: the
setting's own; e.g. ``0,1``: every frame detected, then faces followed between detections
once a second); the first configuration is the baseline of the ratios.  Each setting first
runs one untimed offline measurement (warm-up: model sessions, MediaPipe graphs, the OS file
cache, the broker), then ``--rounds`` (default 3) offline rounds and ``--realtime-rounds``
(default: ``--rounds``) real-time rounds, in which every setting runs once, in turn (offline
run by run, real time N by N), so drift on a shared machine hits all of them.  Figures are medians over the rounds
with their spread (min-max); a ratio is median / median of the baseline setting, its spread
the min-max of the per-round ratios; "kept up" counts the rounds.  The 1-minute load average
is printed with every measurement.  The last line is ``RESULT {json}`` with every number.
Real-time runs take real time (19-31 s each), so the defaults (30 of them, and 8 offline
runs) take about 15 minutes on a 2-core machine; ``--rounds 3 --realtime-rounds 2
--stream-counts 1,4,6,8`` took 9.3 minutes on 2026-11-30.

    .venv/bin/python bench/bench_distributed.py [--rounds N] [--realtime-rounds N]
                                                [--stream-counts 1,2,4,6,8]
                                                [--offline-streams N] [--worker-threads N,N]
                                                [--detect-intervals S,S]
                                                [--start-services]
    ./dev bench                        # every bench/bench_*.py

Kafka and Redis: with ``--start-services``, or when FACESTREAM_KAFKA_BOOTSTRAP and
FACESTREAM_REDIS_URL do not both name reachable services, the script starts its own pair with
``deploy/dev-services up`` on ports 29092/29093/26379 in ``<tmp>/bench-services`` and stops
them at the end, deleting their data (see bench/services.py); otherwise it uses the pair the
environment names.  Model files and the clip come from FACESTREAM_CACHE_DIR
(``facestream models pull --samples``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import bisect  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TYPE_CHECKING, Callable, TypeVar  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from facestream import assets, events  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.ingest.chunks import Chunk, gop_chunks  # noqa: E402
from facestream.ingest.publisher import ChunkPublisher, ingest  # noqa: E402
from facestream.ingest.sources import SourceSpec, parse_source  # noqa: E402
from facestream.runtime import tune_allocator  # noqa: E402

from services import Endpoints, fresh_topic, services  # noqa: E402

if TYPE_CHECKING:                    # the publishers' child process does without the worker
    from facestream.workers.worker import Worker, WorkerReport

CLIP = "WolfgangLanger_Pexels.mp4"
FPS = 5.0
STREAM_COUNTS = (1, 2, 4, 6, 8)
PARTITIONS = 6
P95_LIMIT_S = 5.0
GROWTH_LIMIT = 0.1            # seconds of latency gained per second of run
WORKER_READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0       # after the last chunk is sent

T = TypeVar("T")


# publishers (child process) ------------------------------------------------------------

class TimedPublisher(ChunkPublisher):
    """Records (first pts, wall time) of every chunk as it is handed to the producer."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[int, float]] = []

    def publish(self, chunk: Chunk, *, topic: str | None = None) -> int:
        self.sent.append((chunk.first_pts, time.time()))
        return super().publish(chunk, topic=topic)


def publish_one(spec: SourceSpec, settings: Settings, stream_id: str, realtime: bool,
                delay_s: float) -> list[tuple[int, float]]:
    time.sleep(delay_s)
    publisher = TimedPublisher(settings)
    try:
        ingest(spec, settings, stream_id=stream_id, realtime=realtime, publisher=publisher)
    finally:
        publisher.close()
    return publisher.sent


def publish_streams(spec: SourceSpec, settings: Settings, stream_ids: list[str], *,
                    realtime: bool, stagger_s: float) -> dict[str, list[tuple[int, float]]]:
    """Ingest the clip once per stream id, concurrently, each with its own producer (as
    separate cameras would), stream i starting i/N of ``stagger_s`` after the first; per
    stream, its chunks' (first pts, send time)."""
    with ThreadPoolExecutor(len(stream_ids)) as threads:
        futures = {stream_id: threads.submit(publish_one, spec, settings, stream_id, realtime,
                                             i * stagger_s / len(stream_ids))
                   for i, stream_id in enumerate(stream_ids)}
        return {stream_id: future.result() for stream_id, future in futures.items()}


# worker (this process) -----------------------------------------------------------------

DESCRIBE = False            # --describe: the worker writes descriptions (on change, follow)


@dataclass(frozen=True)
class Side:
    """One worker configuration measured: ``worker_threads`` and ``detect_interval_s``
    (None: the setting's default)."""

    threads: int = 0
    detect: float | None = None

    def label(self) -> str:
        return f"worker_threads={self.threads}" + (
            "" if self.detect is None else f", detect_interval_s={self.detect:g}")


def measurement_settings(endpoints: Endpoints, tag: str, side: Side = Side()) -> Settings:
    """Settings with this measurement's own topic, group and Redis keys.  The worker's
    metrics endpoint is off (its port may be another worker's); its counters still run."""
    detect = {} if side.detect is None else {"detect_interval_s": side.detect}
    return Settings.load({**endpoints.overrides(), "describe": DESCRIBE, "fps": FPS,
                          "metrics_port": 0, "worker_threads": side.threads, **detect,
                          "video_topic": f"bench-{tag}.video", "dlq_topic": f"bench-{tag}.dlq",
                          "consumer_group": f"bench-{tag}", "events_stream": f"bench:{tag}:events",
                          "checkpoint_prefix": f"bench:{tag}:checkpoint"})


def run_worker(settings: Settings, models, streams: int,
               feed: Callable[[], T]) -> tuple[T, WorkerReport, float, float]:
    """Start a worker in a thread, call ``feed()`` once the group has given it its partitions,
    and wait (at most DRAIN_TIMEOUT_S after ``feed`` returns) until it has seen ``streams``
    streams end.  Returns what ``feed`` returned, the worker's report, and the wall and CPU
    seconds (this process) from the worker's start until it stopped."""
    from facestream.workers.worker import Worker

    worker = Worker(settings, models=models)
    ready = threading.Event()
    failures: list[Exception] = []

    def until(w: Worker) -> bool:
        if w.consumer.assignment():
            ready.set()
        return w.report.streams_ended >= streams

    def target() -> None:
        try:
            worker.run(until=until)
        except Exception as exc:
            failures.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="worker")
    start, cpu = time.monotonic(), time.process_time()
    thread.start()
    try:
        if not ready.wait(WORKER_READY_TIMEOUT_S):
            raise SystemExit(f"the worker got no partitions within {WORKER_READY_TIMEOUT_S:g}s")
        fed = feed()
        thread.join(DRAIN_TIMEOUT_S)
        seconds, cpu_s = time.monotonic() - start, time.process_time() - cpu
    finally:
        worker.stop()
        thread.join()
    if failures:
        raise failures[0]
    return fed, worker.report, seconds, cpu_s


def forget(settings: Settings, stream_ids: list[str]) -> None:
    """Delete the measurement's Redis keys: events, checkpoints, stream status."""
    from facestream.sinks.redis_stream import make_redis

    client = make_redis(settings)
    keys = [settings.events_stream, *(f"{settings.events_stream}:{s}" for s in stream_ids),
            *(f"facestream:stream:{s}" for s in stream_ids),
            *client.scan_iter(match=f"{settings.checkpoint_prefix}:*")]
    client.delete(*keys)


# measurements --------------------------------------------------------------------------

@dataclass(frozen=True)
class Offline:
    streams: int
    frames: int
    seconds: float
    cpu_s: float                    # CPU seconds of this process (worker threads, clients)
    load: float                     # 1-minute load average at the end (shared machine)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def cpu_fps(self) -> float:
        return self.frames / self.cpu_s


@dataclass(frozen=True)
class Realtime:
    streams: int
    completed: bool                 # the worker saw every stream end in time
    latencies: tuple[float, ...]    # seconds, one per analysis event
    growth: float                   # seconds of latency gained per second of run
    load: float                     # 1-minute load average at the end (shared machine)
    seconds: float                  # wall seconds from the worker's start until it stopped
    cpu_s: float                    # CPU seconds of this process over the same span

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def kept_up(self) -> bool:
        return (self.completed and bool(self.latencies) and self.percentile(95) < P95_LIMIT_S
                and self.growth < GROWTH_LIMIT)


def stream_ids(tag: str, count: int) -> list[str]:
    return [f"bench-{tag}-{i}" for i in range(count)]


def measure_offline(endpoints: Endpoints, models, pool: Executor, spec: SourceSpec,
                    streams: int, *, side: Side) -> Offline:
    tag = f"offline-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag, side)
    ids = stream_ids(tag, streams)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        pool.submit(publish_streams, spec, settings, ids, realtime=False, stagger_s=0).result()
        _, report, seconds, cpu_s = run_worker(settings, models, streams, feed=lambda: None)
    forget(settings, ids)
    if report.streams_ended < streams:
        raise SystemExit(f"offline run: the worker finished {report.streams_ended} of "
                         f"{streams} streams within {DRAIN_TIMEOUT_S:g}s")
    return Offline(streams, report.frames, seconds, cpu_s, os.getloadavg()[0])


def latencies(settings: Settings,
              sent: dict[str, list[tuple[int, float]]]) -> list[tuple[float, float]]:
    """(send time of the chunk, latency) for each analysis event in Redis."""
    from facestream.sinks.redis_stream import make_redis

    chunks = {stream: sorted(times) for stream, times in sent.items()}
    out = []
    for entry_id, fields in make_redis(settings).xrange(settings.events_stream):
        event = json.loads(fields[b"event"])
        if event["type"] != events.FACE_ANALYSIS:
            continue
        stream = chunks[event["data"]["stream_id"]]
        index = bisect.bisect_right(stream, (event["data"]["window"]["end_pts"], float("inf")))
        sent_at = stream[max(0, index - 1)][1]
        added_at = int(entry_id.split(b"-")[0]) / 1000
        out.append((sent_at, added_at - sent_at))
    return out


def growth(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of latency against send time."""
    if len({sent_at for sent_at, _ in points}) < 2:
        return float("nan")
    sent_at, latency = np.array(points).T
    return float(np.polyfit(sent_at - sent_at.min(), latency, 1)[0])


def measure_realtime(endpoints: Endpoints, models, pool: Executor, spec: SourceSpec,
                     streams: int, chunk_period_s: float, *, side: Side) -> Realtime:
    tag = f"rt{streams}-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag, side)
    ids = stream_ids(tag, streams)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        sent, report, seconds, cpu_s = run_worker(
            settings, models, streams, feed=lambda: pool.submit(
                publish_streams, spec, settings, ids, realtime=True,
                stagger_s=chunk_period_s).result())
    points = latencies(settings, sent)
    forget(settings, ids)
    return Realtime(streams, report.streams_ended >= streams,
                    tuple(latency for _, latency in points), growth(points), os.getloadavg()[0],
                    seconds, cpu_s)


# report --------------------------------------------------------------------------------

def chunk_period_s(spec: SourceSpec) -> float:
    """Mean media time between the starts of the clip's chunks."""
    with av.open(spec.target) as container:
        chunks = list(gop_chunks(container, stream_id=spec.name))
    span = (chunks[-1].first_pts - chunks[0].first_pts) * chunks[0].time_base
    return float(span) / max(1, len(chunks) - 1)


def largest_kept_up(runs: list[Realtime]) -> int:
    """Largest N such that the worker kept up with N streams and with every smaller count
    measured (``runs``: one round)."""
    best = 0
    for run in sorted(runs, key=lambda r: r.streams):
        if not run.kept_up:
            break
        best = run.streams
    return best


def spread(values: list[float], digits: int = 1) -> str:
    """Median (min-max) of the rounds."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f})")


def stat_json(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "rounds": [round(v, digits) for v in values]}


def ratio_text(values: list[float], baseline: list[float]) -> str:
    """Median over the baseline's median (min-max of the per-round ratios)."""
    per_round = [v / b for v, b in zip(values, baseline)]
    return (f"{statistics.median(values) / statistics.median(baseline):.2f} "
            f"({min(per_round):.2f}-{max(per_round):.2f})")


def print_report(n: Side, baseline: Side, offlines: dict[Side, list[Offline]],
                 rounds: dict[Side, list[list[Realtime]]]) -> None:
    """One worker configuration: offline rounds, real-time rounds by stream count."""
    offline = offlines[n]
    fps = [o.fps for o in offline]
    cpu_fps = [o.cpu_fps for o in offline]
    theoretical = statistics.median(fps) / FPS
    print(f"offline: {offline[0].streams} streams, {offline[0].frames} frames; frames per wall "
          f"s {spread(fps)}, per CPU s {spread(cpu_fps)}, CPU/wall "
          f"{spread([o.cpu_s / o.seconds for o in offline], 2)} (load "
          f"{spread([o.load for o in offline])}) -> {theoretical:.1f} real-time streams at "
          f"{FPS:g} fps in theory")
    if n != baseline:
        print(f"  vs {baseline.label()}: frames per wall s "
              f"{ratio_text(fps, [o.fps for o in offlines[baseline]])}, per CPU s "
              f"{ratio_text(cpu_fps, [o.cpu_fps for o in offlines[baseline]])}")
    print(f"{'streams':>7}  {'events':>6}  {'p50 s':>15}  {'p95 s':>15}  {'growth s/s':>22}  "
          f"{'CPU/wall':>16}  {'load':>13}  kept up (p95 < {P95_LIMIT_S:g} s, growth < "
          f"{GROWTH_LIMIT:g}), rounds")
    by_count: dict[int, list[Realtime]] = {}
    for round_runs in rounds[n]:
        for run in round_runs:
            by_count.setdefault(run.streams, []).append(run)
    for streams, runs in sorted(by_count.items()):
        kept = sum(run.kept_up for run in runs)
        unfinished = sum(not run.completed for run in runs)
        print(f"{streams:>7}  {spread([len(r.latencies) for r in runs], 0):>6}  "
              f"{spread([r.percentile(50) for r in runs], 2):>15}  "
              f"{spread([r.percentile(95) for r in runs], 2):>15}  "
              f"{spread([r.growth for r in runs], 3):>22}  "
              f"{spread([r.cpu_s / r.seconds for r in runs], 2):>16}  "
              f"{spread([r.load for r in runs]):>13}  {kept}/{len(runs)}"
              + (f" ({unfinished} did not finish)" if unfinished else ""))
    kept = [largest_kept_up(round_runs) for round_runs in rounds[n]]
    # A count of streams: the lower median, a count that was measured, never a mean of two.
    print(f"largest stream count kept up, by round: {', '.join(map(str, kept))} (of "
          f"{', '.join(map(str, sorted(by_count)))}); lower median "
          f"{statistics.median_low(kept)}; theoretical {theoretical:.1f}; ratio "
          f"{statistics.median_low(kept) / theoretical:.2f}")


def result_json(offline: list[Offline], rounds: list[list[Realtime]]) -> dict:
    theoretical = statistics.median(o.fps for o in offline) / FPS
    kept = [largest_kept_up(round_runs) for round_runs in rounds]
    return {
        "offline": {"streams": offline[0].streams, "frames": offline[0].frames,
                    "frames_per_s": stat_json([o.fps for o in offline], 2),
                    "frames_per_cpu_s": stat_json([o.cpu_fps for o in offline], 2),
                    "seconds": [round(o.seconds, 3) for o in offline],
                    "cpu_s": [round(o.cpu_s, 3) for o in offline],
                    "load": [round(o.load, 2) for o in offline]},
        "realtime_rounds": [[{"streams": r.streams, "events": len(r.latencies),
                              "completed": r.completed, "p50_s": round(r.percentile(50), 3),
                              "p95_s": round(r.percentile(95), 3),
                              "max_s": round(r.percentile(100), 3),
                              "growth": round(r.growth, 4), "kept_up": r.kept_up,
                              "seconds": round(r.seconds, 2), "cpu_s": round(r.cpu_s, 2),
                              "load": round(r.load, 2)} for r in round_runs]
                            for round_runs in rounds],
        "largest_kept_up_by_round": kept,
        "largest_kept_up_median_low": statistics.median_low(kept),
        "theoretical_streams": round(theoretical, 2),
        "ratio": round(statistics.median_low(kept) / theoretical, 3),
    }


def counts(text: str, *, minimum: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < minimum or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= {minimum}, "
                                         f"got {text!r}")
    return values


def thread_counts(text: str) -> list[int]:
    """``--worker-threads``: comma-separated worker_threads settings (0: the default)."""
    return counts(text, minimum=0)


def intervals(text: str) -> list[float]:
    """``--detect-intervals``: comma-separated detect_interval_s settings."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}")
    if not values or min(values) < 0 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct seconds >= 0, got {text!r}")
    return values


def stream_counts(text: str) -> list[int]:
    """``--stream-counts``: comma-separated numbers of concurrent real-time streams."""
    return sorted(counts(text, minimum=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", "--repeat", type=int, default=3,
                        help="offline rounds after one warm-up run of each setting; medians "
                             "reported")
    parser.add_argument("--realtime-rounds", type=int, default=None,
                        help="real-time rounds (default: --rounds)")
    parser.add_argument("--stream-counts", type=stream_counts, default=list(STREAM_COUNTS),
                        help="concurrent real-time streams to measure (default "
                             f"{','.join(map(str, STREAM_COUNTS))})")
    parser.add_argument("--offline-streams", type=int, default=4,
                        help="clip passes published before the offline run")
    parser.add_argument("--worker-threads", type=thread_counts, default=[1, 2],
                        help="worker_threads settings to measure (0: the default, min(2, "
                             "cores)); the first is the baseline of the ratios (default 1,2)")
    parser.add_argument("--detect-intervals", type=intervals, default=None,
                        help="detect_interval_s settings to measure with each worker_threads "
                             "setting (default: the setting's default only); e.g. 0,1 measures "
                             "every frame detected against faces followed between detections")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    parser.add_argument("--describe", action="store_true",
                        help="the worker writes descriptions (SmolLM2, when a face changes; "
                             "the default policy), every setting alike")
    args = parser.parse_args()
    global DESCRIBE
    DESCRIBE = args.describe
    realtime_rounds = args.rounds if args.realtime_rounds is None else args.realtime_rounds
    if args.rounds < 1 or realtime_rounds < 1 or args.offline_streams < 1:
        parser.error("--rounds, --realtime-rounds and --offline-streams must be at least 1")
    tune_allocator()          # as the facestream CLI does at start-up

    from facestream.workers.compose import Models
    from facestream.workers.worker import worker_threads

    base = Settings.load({"describe": DESCRIBE, "fps": FPS})
    spec = parse_source(str(assets.sample(base.cache_dir, CLIP)))
    period = chunk_period_s(spec)
    spawn = multiprocessing.get_context("spawn")
    started = time.monotonic()
    load_before = os.getloadavg()
    settings_list = [Side(threads, detect) for threads in args.worker_threads
                     for detect in (args.detect_intervals or [None])]
    with services(start=args.start_services) as endpoints, \
            ProcessPoolExecutor(1, mp_context=spawn) as pool:
        models = Models.load(base)

        def offline(n: int) -> Offline:
            return measure_offline(endpoints, models, pool, spec, args.offline_streams,
                                   side=n)

        for n in settings_list:                 # warm-up, not counted
            offline(n)
        offlines: dict[Side, list[Offline]] = {n: [] for n in settings_list}
        for _ in range(args.rounds):
            for n in settings_list:
                offlines[n].append(offline(n))
        rounds: dict[Side, list[list[Realtime]]] = {n: [] for n in settings_list}
        for _ in range(realtime_rounds):
            for n in settings_list:
                rounds[n].append([])
            for streams in args.stream_counts:
                for n in settings_list:
                    rounds[n][-1].append(measure_realtime(endpoints, models, pool, spec,
                                                          streams, period, side=n))
    load_after = os.getloadavg()

    print(f"clip {spec.target}, {FPS:g} fps analysis, descriptions "
          f"{'on (on change)' if DESCRIBE else 'off'}, one worker, Kafka "
          f"{endpoints.kafka_bootstrap}, Redis {endpoints.redis_url}; {os.cpu_count()} cores, "
          f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}; "
          f"{time.monotonic() - started:.0f} s")
    print(f"warm-up offline run of every setting, then {args.rounds} offline and "
          f"{realtime_rounds} real-time interleaved rounds: median (min-max); ratio = median / "
          f"median of {settings_list[0].label()} (min-max of the per-round ratios)")
    baseline = settings_list[0]
    threads = {n: worker_threads(Settings.load({"worker_threads": n.threads}))
               for n in settings_list}
    for n in settings_list:
        print(f"\n{n.label()} ({threads[n]} threads)")
        print_report(n, baseline, offlines, rounds)
    base_fps = [o.fps for o in offlines[baseline]]
    base_cpu_fps = [o.cpu_fps for o in offlines[baseline]]
    print("RESULT " + json.dumps({
        "clip": CLIP, "fps": FPS, "describe": DESCRIBE, "rounds": args.rounds,
        "realtime_rounds": realtime_rounds,
        "stream_counts": args.stream_counts,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "cores": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "by_worker_threads": [
            {"worker_threads": n.threads, "detect_interval_s": n.detect, "threads": threads[n],
             "offline_ratio_wall": round(statistics.median(o.fps for o in offlines[n])
                                         / statistics.median(base_fps), 3),
             "offline_ratio_wall_by_round": [round(o.fps / b, 3)
                                             for o, b in zip(offlines[n], base_fps)],
             "offline_ratio_cpu": round(statistics.median(o.cpu_fps for o in offlines[n])
                                        / statistics.median(base_cpu_fps), 3),
             "offline_ratio_cpu_by_round": [round(o.cpu_fps / b, 3)
                                            for o, b in zip(offlines[n], base_cpu_fps)],
             **result_json(offlines[n], rounds[n])}
            for n in settings_list]}))


if __name__ == "__main__":
    main()
