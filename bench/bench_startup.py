"""Worker start-up: seconds from ``facestream worker`` being started to ``/readyz`` answering
200 (models loaded, the broker and Redis answering, the consumer group joined), with and
without the compact profile's describer.

Each run starts ``.venv/bin/facestream worker`` (this interpreter's ``-m facestream``) as a
fresh process with its own topic, consumer group, Redis keys and metrics port, polls
``/readyz`` every 20 ms, then stops it with SIGTERM.  Sides: ``describe`` (the default:
SmolLM2 on llama.cpp) and ``nodescribe`` (``--no-describe``, the baseline): one untimed run
of each (OS file cache, bytecode), then ``--rounds`` rounds running both, in turn.  Medians
(min-max) and the ratio describe / nodescribe; the load average before and after.  Target
(compact profile with descriptions): ready within 5 s.

Kafka and Redis as ``bench/services.py`` says: the pair ``FACESTREAM_KAFKA_BOOTSTRAP`` and
``FACESTREAM_REDIS_URL`` name, or a private pair (``--start-services``).

    .venv/bin/python bench/bench_startup.py [--rounds 5] [--start-services]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from services import Endpoints, services  # noqa: E402

TARGET_S = 5.0
READY_TIMEOUT_S = 120.0
SIDES = ("describe", "nodescribe")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_once(endpoints: Endpoints, side: str) -> float:
    """Seconds from spawning a worker until its /readyz says 200."""
    tag, port = uuid.uuid4().hex[:8], free_port()
    env = {**os.environ, **{f"FACESTREAM_{k.upper()}": str(v)
                            for k, v in endpoints.overrides().items()},
           "FACESTREAM_METRICS_PORT": str(port), "FACESTREAM_VIDEO_TOPIC": f"start-{tag}.video",
           "FACESTREAM_DLQ_TOPIC": f"start-{tag}.dlq", "FACESTREAM_CONSUMER_GROUP": f"start-{tag}",
           "FACESTREAM_EVENTS_STREAM": f"start:{tag}:events",
           "FACESTREAM_CHECKPOINT_PREFIX": f"start:{tag}:checkpoint"}
    cmd = [sys.executable, "-m", "facestream", "worker"]
    if side == "nodescribe":
        cmd.append("--no-describe")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        while not ready(port):
            if proc.poll() is not None:
                raise SystemExit(f"worker ({side}) exited with code {proc.returncode}: "
                                 f"{proc.stderr.read().strip().splitlines()[-1:]}")
            if time.perf_counter() - started > READY_TIMEOUT_S:
                raise SystemExit(f"worker ({side}) not ready after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with services(start=args.start_services) as endpoints:
        for side in SIDES:                                  # warm-up, not counted
            start_once(endpoints, side)
        times: dict[str, list[float]] = {side: [] for side in SIDES}
        for i in range(args.rounds):
            for side in (SIDES if i % 2 == 0 else tuple(reversed(SIDES))):
                times[side].append(start_once(endpoints, side))
    load_after = os.getloadavg()
    ratios = [d / n for d, n in zip(times["describe"], times["nodescribe"])]
    median = statistics.median(times["describe"])
    print(f"{os.cpu_count()} cores; load average (1 min) before {load_before[0]:.2f}, after "
          f"{load_after[0]:.2f}; Kafka {endpoints.kafka_bootstrap}; one warm-up run of each "
          f"side, then {args.rounds} interleaved rounds: median (min-max)")
    print(f"seconds to /readyz 200, with descriptions:    {spread(times['describe'])}  "
          f"(target <= {TARGET_S:g} s: {'met' if median <= TARGET_S else 'MISSED'})")
    print(f"seconds to /readyz 200, without descriptions: {spread(times['nodescribe'])}")
    ratio = median / statistics.median(times["nodescribe"])
    print(f"ratio with / without: {ratio:.2f} (per round {min(ratios):.2f}-{max(ratios):.2f})")
    print("RESULT " + json.dumps({"rounds": args.rounds, "seconds": times,
                                  "load_average": [load_before[0], load_after[0]]}))


if __name__ == "__main__":
    main()
