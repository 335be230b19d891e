"""Distributed-mode benchmark: end-to-end latency of one worker at 1 to 8 real-time streams,
and the most streams it keeps up with against what its offline throughput predicts.

Kafka in, Redis out, as deployed: one ``Worker`` (``facestream worker --no-describe`` with
``FACESTREAM_FPS=5``, run in a thread of this process with its models loaded once, metrics
endpoint off, ``worker_threads`` from ``--worker-threads``) consumes the video topic; the
publishers run in a child process, as edge publishers would not share the worker's
interpreter (they, Kafka and Redis do share this machine's cores).  Every measurement has its own topic (6 partitions, the dev broker's
default), consumer group and Redis keys, created before and deleted after.

(a) offline    ``--offline-streams`` (default 4) passes of the sample clip
               WolfgangLanger_Pexels.mp4 (640x360 H.264, 19.6 s) are published in full
               before the worker starts; throughput is the worker's analysed frames (5 per
               second of media) per wall second from its start (group join included) until
               it has seen every stream end.  Best of ``--repeat`` (default 2); the first run
               also warms the models up.
(b) real time  N = 1, 2, 4, 6, 8 concurrent streams, each ``ingest()`` of the clip with
               real-time pacing (one pass, distinct stream ids; file chunks, which a worker
               never drops however late it is), stream i starting i/N of a chunk period
               after the first so chunks do not all arrive at once.  The publisher records
               the wall time it hands each chunk to the producer.  Latency of each
               ``facestream.face.analysis`` event = the time Redis added it (its entry id,
               Redis's millisecond clock; same host) - the send time of the chunk holding the
               window's last frame (``data.window.end_pts``).  It includes waiting for the
               chunk that closes a window: a window ends when a sample of the next one
               arrives, often in the next chunk (~2.8 s later).  It starts at the send, not
               at capture: a paced file sends each chunk at its first frame's time, while a
               live camera's chunk leaves once its GOP is complete.
               The worker keeps up with N streams when p95 latency < 5 s and latency does not
               grow over the run: the least-squares slope of latency against chunk send time
               (seconds of latency per second of run) stays under 0.1 (a worker 10% short of
               the arrival rate adds ~0.1 s of backlog per second).

The largest N kept up (N and every smaller N) is compared with the theoretical count, offline
throughput / (5 frames/s per stream).  ``--worker-threads 1,2`` measures each setting of
``worker_threads`` in the same run, interleaved (offline run by run, real time N by N, so drift
on a shared machine hits both), and prints each one's offline throughput as a ratio to the
first's.  The last line is ``RESULT {json}`` with every number.  About 3 minutes per setting
on a 2-core machine (real-time runs are real time: ~25 s each).

    .venv/bin/python bench/bench_distributed.py [--repeat N] [--offline-streams N]
                                                [--worker-threads N,N] [--start-services]
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

    def publish(self, chunk: Chunk) -> int:
        self.sent.append((chunk.first_pts, time.time()))
        return super().publish(chunk)


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

def measurement_settings(endpoints: Endpoints, tag: str, *, worker_threads: int = 0) -> Settings:
    """Settings with this measurement's own topic, group and Redis keys.  The worker's
    metrics endpoint is off (its port may be another worker's); its counters still run."""
    return Settings.load({**endpoints.overrides(), "describe": False, "fps": FPS,
                          "metrics_port": 0, "worker_threads": worker_threads,
                          "video_topic": f"bench-{tag}.video", "dlq_topic": f"bench-{tag}.dlq",
                          "consumer_group": f"bench-{tag}", "events_stream": f"bench:{tag}:events",
                          "checkpoint_prefix": f"bench:{tag}:checkpoint"})


def run_worker(settings: Settings, models, streams: int,
               feed: Callable[[], T]) -> tuple[T, WorkerReport, float]:
    """Start a worker in a thread, call ``feed()`` once the group has given it its partitions,
    and wait (at most DRAIN_TIMEOUT_S after ``feed`` returns) until it has seen ``streams``
    streams end.  Returns what ``feed`` returned, the worker's report and the wall seconds
    from the worker's start until it stopped."""
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
    start = time.monotonic()
    thread.start()
    try:
        if not ready.wait(WORKER_READY_TIMEOUT_S):
            raise SystemExit(f"the worker got no partitions within {WORKER_READY_TIMEOUT_S:g}s")
        fed = feed()
        thread.join(DRAIN_TIMEOUT_S)
        seconds = time.monotonic() - start
    finally:
        worker.stop()
        thread.join()
    if failures:
        raise failures[0]
    return fed, worker.report, seconds


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
    load: float                     # 1-minute load average at the end (shared machine)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


@dataclass(frozen=True)
class Realtime:
    streams: int
    completed: bool                 # the worker saw every stream end in time
    latencies: tuple[float, ...]    # seconds, one per analysis event
    growth: float                   # seconds of latency gained per second of run
    load: float                     # 1-minute load average at the end (shared machine)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def kept_up(self) -> bool:
        return (self.completed and bool(self.latencies) and self.percentile(95) < P95_LIMIT_S
                and self.growth < GROWTH_LIMIT)


def stream_ids(tag: str, count: int) -> list[str]:
    return [f"bench-{tag}-{i}" for i in range(count)]


def measure_offline(endpoints: Endpoints, models, pool: Executor, spec: SourceSpec,
                    streams: int, *, worker_threads: int) -> Offline:
    tag = f"offline-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag, worker_threads=worker_threads)
    ids = stream_ids(tag, streams)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        pool.submit(publish_streams, spec, settings, ids, realtime=False, stagger_s=0).result()
        _, report, seconds = run_worker(settings, models, streams, feed=lambda: None)
    forget(settings, ids)
    if report.streams_ended < streams:
        raise SystemExit(f"offline run: the worker finished {report.streams_ended} of "
                         f"{streams} streams within {DRAIN_TIMEOUT_S:g}s")
    return Offline(streams, report.frames, seconds, os.getloadavg()[0])


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
                     streams: int, chunk_period_s: float, *, worker_threads: int) -> Realtime:
    tag = f"rt{streams}-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag, worker_threads=worker_threads)
    ids = stream_ids(tag, streams)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        sent, report, _ = run_worker(settings, models, streams, feed=lambda: pool.submit(
            publish_streams, spec, settings, ids, realtime=True,
            stagger_s=chunk_period_s).result())
    points = latencies(settings, sent)
    forget(settings, ids)
    return Realtime(streams, report.streams_ended >= streams,
                    tuple(latency for _, latency in points), growth(points), os.getloadavg()[0])


# report --------------------------------------------------------------------------------

def chunk_period_s(spec: SourceSpec) -> float:
    """Mean media time between the starts of the clip's chunks."""
    with av.open(spec.target) as container:
        chunks = list(gop_chunks(container, stream_id=spec.name))
    span = (chunks[-1].first_pts - chunks[0].first_pts) * chunks[0].time_base
    return float(span) / max(1, len(chunks) - 1)


def largest_kept_up(runs: list[Realtime]) -> int:
    """Largest N such that the worker kept up with N streams and with every smaller count."""
    best = 0
    for run in sorted(runs, key=lambda r: r.streams):
        if not run.kept_up:
            break
        best = run.streams
    return best


def print_report(offline: Offline, runs: list[Realtime], repeat: int) -> None:
    theoretical = offline.fps / FPS
    print(f"offline: {offline.streams} streams, {offline.frames} frames in {offline.seconds:.1f}s "
          f"= {offline.fps:.1f} frames/s (best of {repeat}; load {offline.load:.1f}) -> "
          f"{theoretical:.1f} real-time streams at {FPS:g} fps in theory")
    print(f"{'streams':>7}  {'events':>6}  {'p50 s':>6}  {'p95 s':>6}  {'max s':>6}  "
          f"{'growth s/s':>10}  {'load':>4}  kept up (p95 < {P95_LIMIT_S:g} s, growth < "
          f"{GROWTH_LIMIT:g})")
    for run in runs:
        verdict = "yes" if run.kept_up else ("NO" if run.completed else "NO (did not finish)")
        print(f"{run.streams:>7}  {len(run.latencies):>6}  {run.percentile(50):>6.2f}  "
              f"{run.percentile(95):>6.2f}  {run.percentile(100):>6.2f}  {run.growth:>10.3f}  "
              f"{run.load:>4.1f}  {verdict}")
    kept = largest_kept_up(runs)
    print(f"largest stream count kept up: {kept} of {', '.join(map(str, STREAM_COUNTS))}; "
          f"theoretical {theoretical:.1f}; ratio {kept / theoretical:.2f}")


def result_json(offline: Offline, runs: list[Realtime]) -> dict:
    theoretical = offline.fps / FPS
    kept = largest_kept_up(runs)
    return {
        "offline": {"streams": offline.streams, "frames": offline.frames,
                    "seconds": round(offline.seconds, 3), "frames_per_s": round(offline.fps, 2),
                    "load": round(offline.load, 2)},
        "realtime": [{"streams": r.streams, "events": len(r.latencies), "completed": r.completed,
                      "p50_s": round(r.percentile(50), 3), "p95_s": round(r.percentile(95), 3),
                      "max_s": round(r.percentile(100), 3), "growth": round(r.growth, 4),
                      "kept_up": r.kept_up, "load": round(r.load, 2)} for r in runs],
        "largest_kept_up": kept, "theoretical_streams": round(theoretical, 2),
        "ratio": round(kept / theoretical, 3),
    }


def thread_counts(text: str) -> list[int]:
    """``--worker-threads``: comma-separated worker_threads settings (0: the default)."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not counts or min(counts) < 0 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"expected distinct integers >= 0, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="offline runs (best kept)")
    parser.add_argument("--offline-streams", type=int, default=4,
                        help="clip passes published before the offline run")
    parser.add_argument("--worker-threads", type=thread_counts, default=[0],
                        help="worker_threads settings to measure, e.g. 1,2 (0: the default, "
                             "min(2, cores)); the first is the baseline of the ratios")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    if args.repeat < 1 or args.offline_streams < 1:
        parser.error("--repeat and --offline-streams must be at least 1")
    tune_allocator()          # as the facestream CLI does at start-up

    from facestream.workers.compose import Models
    from facestream.workers.worker import worker_threads

    base = Settings.load({"describe": False, "fps": FPS})
    spec = parse_source(str(assets.sample(base.cache_dir, CLIP)))
    period = chunk_period_s(spec)
    spawn = multiprocessing.get_context("spawn")
    with services(start=args.start_services) as endpoints, \
            ProcessPoolExecutor(1, mp_context=spawn) as pool:
        models = Models.load(base)
        offlines: dict[int, list[Offline]] = {n: [] for n in args.worker_threads}
        for _ in range(args.repeat):
            for n in args.worker_threads:
                offlines[n].append(measure_offline(endpoints, models, pool, spec,
                                                   args.offline_streams, worker_threads=n))
        runs: dict[int, list[Realtime]] = {n: [] for n in args.worker_threads}
        for streams in STREAM_COUNTS:
            for n in args.worker_threads:
                runs[n].append(measure_realtime(endpoints, models, pool, spec, streams, period,
                                                worker_threads=n))

    print(f"clip {spec.target}, {FPS:g} fps analysis, one worker, Kafka "
          f"{endpoints.kafka_bootstrap}, Redis {endpoints.redis_url}")
    best = {n: max(offlines[n], key=lambda o: o.fps) for n in args.worker_threads}
    baseline = args.worker_threads[0]
    threads = {n: worker_threads(Settings.load({"worker_threads": n})) for n in args.worker_threads}
    for n in args.worker_threads:
        print(f"\nworker_threads={n} ({threads[n]} threads), offline "
              f"throughput {best[n].fps / best[baseline].fps:.2f}x worker_threads={baseline}")
        print_report(best[n], runs[n], args.repeat)
    print("RESULT " + json.dumps({
        "clip": CLIP, "fps": FPS, "repeat": args.repeat,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "load_average": list(os.getloadavg()),
        "by_worker_threads": [{"worker_threads": n, "threads": threads[n],
                               "offline_ratio": round(best[n].fps / best[baseline].fps, 3),
                               "offline_runs_frames_per_s": [round(o.fps, 2) for o in offlines[n]],
                               **result_json(best[n], runs[n])}
                              for n in args.worker_threads]}))


if __name__ == "__main__":
    main()
