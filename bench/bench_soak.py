"""Worker memory soak: one worker's resident memory over a 10-minute run in which real-time
streams are added and removed every 30 s.  Target: flat, i.e. growth < 5 % after warm-up.

One ``facestream worker --no-describe`` (``FACESTREAM_FPS=5``, metrics endpoint off) runs as
a child process so that its memory is measured alone: ``VmRSS`` from ``/proc/<pid>/status``
every 5 s.  It consumes a topic of its own (6 partitions) and writes to Redis keys of its
own, created before and deleted after (the settings of bench/bench_distributed.py).

Streams: two at all times.  Each is the sample clip WolfgangLanger_Pexels.mp4 (640x360
H.264, 19.6 s) standing in for a camera: ``ingest()`` publishes it with real-time pacing
under a new stream id, its spec marked live so that at the end of the clip it is reopened
as a dropped camera would be, and runs on until the stream is removed (``ingest``'s stop
event, as ``ingest --from-registry`` removes a stream), when it sends the end-of-stream
marker.  Two streams start together; then every 30 s the oldest is removed and a new one
added, so each lives 60 s (the very first 30 s): 21 streams over 10 minutes.  Publishers
are threads of this process, each with its own producer, as separate cameras would be.

Reported: the worker's RSS once its models are loaded and before any stream (idle, the
reference line), at the end of warm-up (first 120 s), the mean of the last minute, the max,
growth = (mean of the last minute - RSS at the end of warm-up) / RSS at the end of warm-up
(target < 5 %), and the least-squares slope of RSS after warm-up.  Sanity checks: events
in Redis (and that they keep coming in the last minute), streams the worker marked ended
(``facestream:stream:{id}`` hashes, state=ended) against streams added, and live chunks the
worker dropped for being late.  The last line is ``RESULT {json}`` with every number and
the RSS samples.

It runs 10 minutes by default (warm-up 120 s), plus a minute of set-up and teardown:

    .venv/bin/python bench/bench_soak.py [--duration S] [--warmup S] [--start-services]
    ./dev bench                        # every bench/bench_*.py

Kafka and Redis: with ``--start-services``, or when FACESTREAM_KAFKA_BOOTSTRAP and
FACESTREAM_REDIS_URL do not both name reachable services, the script starts its own pair with
``deploy/dev-services up`` on ports 29092/29093/26379 in ``<tmp>/bench-services`` and stops
them at the end (see bench/services.py); otherwise it uses the pair the environment names.
The clip comes from FACESTREAM_CACHE_DIR (``facestream models pull --samples``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from facestream import assets
from facestream.config import Settings
from facestream.errors import FacestreamError
from facestream.ingest.publisher import ingest
from facestream.ingest.sources import SourceSpec, parse_source
from facestream.sinks.redis_stream import make_redis

from bench_distributed import CLIP, FPS, PARTITIONS, forget, measurement_settings
from services import Endpoints, fresh_topic, services

DURATION_S = 600
WARMUP_S = 120
LAST_S = 60                   # "the last minute"
SAMPLE_S = 5
CHURN_S = 30                  # a stream is added and the oldest removed this often
CONCURRENT = 2
GROWTH_LIMIT = 0.05
SETTLE_S = 10.0               # after the worker has loaded its models, before the idle RSS
WORKER_START_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 60.0        # for the worker to see the last streams end
# The settings the worker child takes from its environment (--no-describe does the rest).
WORKER_SETTINGS = ("kafka_bootstrap", "redis_url", "video_topic", "dlq_topic", "consumer_group",
                   "events_stream", "checkpoint_prefix", "fps", "metrics_port")


# the worker (child process) --------------------------------------------------------------

def start_worker(settings: Settings, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, **{f"FACESTREAM_{name.upper()}": str(getattr(settings, name))
                            for name in WORKER_SETTINGS}}
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "facestream", "worker", "--no-describe"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for_models(worker: subprocess.Popen, log_path: Path) -> None:
    """Until the worker says it is consuming (models loaded, subscribed)."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while "worker: consuming" not in log_path.read_text():
        check_alive(worker, log_path)
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start within {WORKER_START_TIMEOUT_S:g}s")
        time.sleep(0.5)


def check_alive(worker: subprocess.Popen, log_path: Path) -> None:
    if worker.poll() is not None:
        raise SystemExit(f"the worker exited with code {worker.returncode}; its log ends:\n"
                         + log_tail(log_path))


def log_tail(log_path: Path, lines: int = 20) -> str:
    return "\n".join(log_path.read_text().splitlines()[-lines:])


def stop_worker(worker: subprocess.Popen) -> int:
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        return worker.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS for process {pid}")


# the streams (publisher threads) ----------------------------------------------------------

def camera(clip: Path) -> SourceSpec:
    """The clip as a live source: ``ingest()`` reopens it whenever it ends, as it would a
    camera that dropped, so it runs until it is stopped."""
    return replace(parse_source(str(clip)), kind="url")


class Streams:
    """The streams being published, oldest first: each a thread running ``ingest()`` until
    its stop event is set."""

    def __init__(self, settings: Settings, spec: SourceSpec, tag: str) -> None:
        self._settings = settings
        self._spec = spec
        self._tag = tag
        self._running: deque[tuple[threading.Thread, threading.Event]] = deque()
        self.added: list[str] = []
        self.removed = 0
        self.failures: list[str] = []

    def add(self) -> None:
        stream_id = f"bench-{self._tag}-{len(self.added)}"
        stop = threading.Event()
        thread = threading.Thread(target=self._publish, args=(stream_id, stop),
                                  name=f"ingest-{stream_id}", daemon=True)
        thread.start()
        self._running.append((thread, stop))
        self.added.append(stream_id)

    def remove_oldest(self) -> None:
        thread, stop = self._running.popleft()
        stop.set()
        thread.join(timeout=30)
        self.removed += 1

    def remove_all(self) -> None:
        while self._running:
            self.remove_oldest()

    def _publish(self, stream_id: str, stop: threading.Event) -> None:
        try:
            ingest(self._spec, self._settings, stream_id=stream_id, realtime=True, stop=stop)
        except FacestreamError as exc:
            self.failures.append(f"{stream_id}: {exc}")


# the soak --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    t: int            # seconds since the first streams started
    rss_mb: float
    events: int       # entries in the events stream so far


@dataclass(frozen=True)
class Soak:
    duration_s: int
    warmup_s: int
    idle_rss_mb: float
    samples: list[Sample]
    streams_added: int
    streams_ended: int
    dropped_chunks: int
    worker_exit: int
    worker_summary: str

    def _rss(self, since: float) -> np.ndarray:
        return np.array([s.rss_mb for s in self.samples if s.t >= since])

    @property
    def warmup_rss_mb(self) -> float:
        return float(self._rss(self.warmup_s)[0])

    @property
    def last_minute_rss_mb(self) -> float:
        return float(self._rss(self.duration_s - LAST_S).mean())

    @property
    def max_rss_mb(self) -> float:
        return max(s.rss_mb for s in self.samples)

    @property
    def growth(self) -> float:
        return (self.last_minute_rss_mb - self.warmup_rss_mb) / self.warmup_rss_mb

    @property
    def slope_mb_per_min(self) -> float:
        """Least-squares slope of RSS after warm-up."""
        points = np.array([(s.t, s.rss_mb) for s in self.samples if s.t >= self.warmup_s])
        return float(np.polyfit(points[:, 0] / 60, points[:, 1], 1)[0])

    @property
    def events(self) -> int:
        return self.samples[-1].events

    @property
    def events_last_minute(self) -> int:
        recent = [s.events for s in self.samples if s.t >= self.duration_s - LAST_S]
        return recent[-1] - recent[0]

    @property
    def flat(self) -> bool:
        return self.growth < GROWTH_LIMIT


def print_row(sample: Sample, streams: Streams) -> None:
    print(f"{sample.t:>6.0f}  {sample.rss_mb:>8.1f}  {sample.events:>7}  "
          f"{len(streams.added):>5}  {streams.removed:>7}", flush=True)


def run_streams(settings: Settings, spec: SourceSpec, tag: str, worker: subprocess.Popen,
                log_path: Path, duration_s: int) -> tuple[list[Sample], Streams]:
    """Sample the worker's RSS every SAMPLE_S for ``duration_s`` while the streams come and
    go; every stream is removed (ended) at the end."""
    redis = make_redis(settings)
    streams = Streams(settings, spec, tag)
    samples: list[Sample] = []
    print(f"{'t s':>6}  {'RSS MB':>8}  {'events':>7}  {'added':>5}  {'removed':>7}")
    start = time.monotonic()
    try:
        for _ in range(CONCURRENT):
            streams.add()
        for t in range(0, duration_s + 1, SAMPLE_S):
            time.sleep(max(0.0, start + t - time.monotonic()))
            check_alive(worker, log_path)
            samples.append(Sample(t, rss_mb(worker.pid), redis.xlen(settings.events_stream)))
            if t % CHURN_S == 0:
                if 0 < t < duration_s:
                    streams.remove_oldest()
                    streams.add()
                print_row(samples[-1], streams)
    finally:
        streams.remove_all()
    return samples, streams


def stream_states(settings: Settings, stream_ids: list[str]) -> list[dict[bytes, bytes]]:
    redis = make_redis(settings)
    return [redis.hgetall(f"facestream:stream:{stream_id}") for stream_id in stream_ids]


def wait_until_ended(settings: Settings, stream_ids: list[str]) -> list[dict[bytes, bytes]]:
    """The streams' status hashes once the worker has marked them all ended (or at the
    drain timeout)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        states = stream_states(settings, stream_ids)
        if all(s.get(b"state") == b"ended" for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(1)


def soak(endpoints: Endpoints, spec: SourceSpec, duration_s: int, warmup_s: int) -> Soak:
    tag = f"soak-{uuid.uuid4().hex[:8]}"
    settings = measurement_settings(endpoints, tag)
    with fresh_topic(endpoints.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS), \
            tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "worker.log"
        worker = start_worker(settings, log_path)
        try:
            wait_for_models(worker, log_path)
            time.sleep(SETTLE_S)
            check_alive(worker, log_path)
            idle = rss_mb(worker.pid)
            print(f"worker pid {worker.pid}: idle RSS (models loaded, no stream) {idle:.1f} MB",
                  flush=True)
            samples, streams = run_streams(settings, spec, tag, worker, log_path, duration_s)
            states = wait_until_ended(settings, streams.added)
        finally:
            exit_code = stop_worker(worker)
        summary = log_tail(log_path, 1)
    forget(settings, streams.added)
    if streams.failures:
        raise SystemExit("publishers failed:\n" + "\n".join(streams.failures))
    return Soak(duration_s, warmup_s, idle, samples, len(streams.added),
                sum(s.get(b"state") == b"ended" for s in states),
                sum(int(s.get(b"dropped_chunks", 0)) for s in states), exit_code, summary)


# report ----------------------------------------------------------------------------------

def print_report(run: Soak) -> None:
    for label, mb in (("idle RSS, models loaded, no stream (reference)", run.idle_rss_mb),
                      (f"RSS at the end of warm-up (t = {run.warmup_s} s)", run.warmup_rss_mb),
                      ("mean RSS over the last minute", run.last_minute_rss_mb),
                      ("max RSS", run.max_rss_mb)):
        print(f"{label + ':':<48}{mb:8.1f} MB")
    verdict = "flat" if run.flat else "NOT flat"
    print(f"growth after warm-up: {run.growth:+.2%} (target < {GROWTH_LIMIT:.0%}): {verdict}; "
          f"slope after warm-up {run.slope_mb_per_min:+.2f} MB/min")
    print(f"events in Redis: {run.events} ({run.events_last_minute} in the last minute); "
          f"streams added {run.streams_added}, ended {run.streams_ended}; live chunks dropped "
          f"(worker late) {run.dropped_chunks}")
    print(f"worker exit code {run.worker_exit}; {run.worker_summary}")


def result_json(run: Soak, endpoints: Endpoints) -> dict:
    return {
        "clip": CLIP, "fps": FPS, "duration_s": run.duration_s, "warmup_s": run.warmup_s,
        "sample_s": SAMPLE_S, "churn_s": CHURN_S, "concurrent_streams": CONCURRENT,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "idle_rss_mb": round(run.idle_rss_mb, 1), "warmup_rss_mb": round(run.warmup_rss_mb, 1),
        "last_minute_rss_mb": round(run.last_minute_rss_mb, 1),
        "max_rss_mb": round(run.max_rss_mb, 1), "growth_pct": round(100 * run.growth, 2),
        "growth_limit_pct": 100 * GROWTH_LIMIT, "flat": run.flat,
        "slope_mb_per_min": round(run.slope_mb_per_min, 3),
        "events": run.events, "events_last_minute": run.events_last_minute,
        "streams_added": run.streams_added, "streams_ended": run.streams_ended,
        "dropped_chunks": run.dropped_chunks, "worker_exit": run.worker_exit,
        "samples": [[s.t, round(s.rss_mb, 1), s.events] for s in run.samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=DURATION_S,
                        help=f"seconds of streams (default {DURATION_S})")
    parser.add_argument("--warmup", type=int, default=WARMUP_S,
                        help=f"seconds of warm-up at the start (default {WARMUP_S})")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    if args.warmup < 0 or args.duration < args.warmup + LAST_S:
        parser.error(f"--duration must be at least --warmup + {LAST_S}")

    base = Settings.load({"fps": FPS})
    clip = assets.sample(base.cache_dir, CLIP)
    with services(start=args.start_services) as endpoints:
        print(f"clip {clip} as {CONCURRENT} live streams, one added and the oldest removed "
              f"every {CHURN_S} s; one worker at {FPS:g} fps, no descriptions; Kafka "
              f"{endpoints.kafka_bootstrap}, Redis {endpoints.redis_url}", flush=True)
        run = soak(endpoints, camera(clip), args.duration, args.warmup)
    print_report(run)
    print("RESULT " + json.dumps(result_json(run, endpoints)))


if __name__ == "__main__":
    main()
