"""Reliability benchmark: what a trickle of bad messages costs a worker, and how long a dead
worker's streams wait before another worker carries them on.

Kafka in, Redis out, as deployed; every measurement has its own topic (6 partitions),
consumer group and Redis keys.

(a) poison     ``--streams`` (default 28) streams of the sample clip WolfgangLanger_Pexels.mp4
               (7 chunks each), published whole before a ``Worker`` (in a thread of this
               process, models loaded once, ``--fps`` default 1, no descriptions) consumes
               them.  The poisoned run has, in addition, one bad message per 100 good ones
               (at least one; alternately 2 KB of random bytes without headers and a
               chunk whose fs-time-base is out of bounds), spread evenly through the
               topic; the clean run has none.  Throughput: good messages per CPU second of this process (the machine
               is shared, so CPU time, not wall time), from the worker's start until every
               stream ended.  Runs alternate clean / poisoned ``--repeat`` times (default 3);
               the ratio is the median poisoned throughput over the median clean one, with
               the spread of each side.
(b) failover   two ``facestream worker`` processes and three streams published whole; once
               one worker is part-way through a stream it is stopped, by SIGKILL (an unclean
               death: OOM, lost node) or, as the baseline, by SIGTERM (a clean hand-over).  The
               figure is the time from the signal until the first event of one of its unended
               streams is written by the other worker (its Redis entry time).  Alternating
               kill / term ``--failovers`` times each (default 2); the ratio is median kill
               over median term.

    .venv/bin/python bench/bench_reliability.py [--streams N] [--repeat N] [--failovers N]
                                               [--skip-failover] [--start-services]

Kafka and Redis: as bench/bench_distributed.py (bench/services.py).  The last line is
``RESULT {json}`` with every number.  About 6 minutes on a 2-core machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import replace  # noqa: E402

import av  # noqa: E402

from facestream import assets  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.ingest.chunks import EndOfStream, gop_chunks  # noqa: E402
from facestream.runtime import tune_allocator  # noqa: E402

from services import Endpoints, fresh_topic, services  # noqa: E402

CLIP = "WolfgangLanger_Pexels.mp4"
PARTITIONS = 6
BAD_EVERY = 100
RUN_TIMEOUT_S = 600.0


def settings_for(endpoints: Endpoints, tag: str, fps: float) -> Settings:
    return Settings.load({**endpoints.overrides(), "describe": False, "fps": fps,
                          "metrics_port": 0, "video_topic": f"bench-{tag}.video",
                          "dlq_topic": f"bench-{tag}.dlq", "consumer_group": f"bench-{tag}",
                          "events_stream": f"bench:{tag}:events",
                          "checkpoint_prefix": f"bench:{tag}:checkpoint"})


def publish(settings: Settings, chunks, stream_ids: list[str], *, bad_every: int | None) -> int:
    """Every stream's chunks and end marker, interleaved by chunk, with one bad message per
    ``bad_every`` good ones spread evenly through them (at least one).  Returns the number
    of good messages."""
    from kafka import KafkaProducer

    good = [replace(chunk, stream_id=stream_id) for chunk in chunks for stream_id in stream_ids]
    good += [EndOfStream(stream_id, chunks[-1].seq) for stream_id in stream_ids]
    bad_at = set()
    if bad_every:
        count = max(1, len(good) // bad_every)
        bad_at = {(i + 1) * len(good) // (count + 1) for i in range(count)}
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all",
                             max_request_size=4_000_000)
    rng = random.Random(7)
    for i, message in enumerate(good):
        if i in bad_at:
            key = f"bad-{i}".encode()
            if len(bad_at) == 1 or i % 2:
                producer.send(settings.video_topic, key=key, value=rng.randbytes(2048))
            else:
                template = replace(chunks[0], stream_id=key.decode())
                headers = [(k, b"1/" + b"9" * 30 if k == "fs-time-base" else v)
                           for k, v in template.headers()]
                producer.send(settings.video_topic, key=key, value=template.payload,
                              headers=headers)
        value = b"" if isinstance(message, EndOfStream) else message.payload
        producer.send(settings.video_topic, key=message.stream_id.encode(), value=value,
                      headers=message.headers())
    producer.flush()
    producer.close()
    return len(good)


def poison_run(endpoints: Endpoints, models, chunks, streams: int, fps: float, *,
               poisoned: bool) -> dict:
    from facestream.workers.worker import Worker

    tag = uuid.uuid4().hex[:8]
    settings = settings_for(endpoints, tag, fps)
    stream_ids = [f"s{i}-{tag}" for i in range(streams)]
    with fresh_topic(settings.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        good = publish(settings, chunks, stream_ids, bad_every=BAD_EVERY if poisoned else None)
        worker = Worker(settings, models=models)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        cpu, wall = time.process_time(), time.monotonic()
        report = worker.run(until=lambda w: w.report.streams_ended >= streams
                            or time.monotonic() > deadline)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    if report.streams_ended < streams:
        raise SystemExit(f"worker timed out: {report}")
    return {"poisoned": poisoned, "good_messages": good, "dead_letters": report.dead_letters,
            "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "frames": report.frames,
            "good_per_cpu_s": good / cpu}


def failover_run(endpoints: Endpoints, clip: str, how: signal.Signals) -> float:
    """Seconds from stopping a worker part-way through a stream until the other worker
    writes an event of one of its unended streams."""
    import redis

    tag = uuid.uuid4().hex[:8]
    settings = settings_for(endpoints, tag, 5.0)
    env = {**os.environ, **{f"FACESTREAM_{k.upper()}": str(getattr(settings, k)) for k in (
        "kafka_bootstrap", "redis_url", "video_topic", "dlq_topic", "consumer_group",
        "events_stream", "checkpoint_prefix", "fps")}, "FACESTREAM_METRICS_PORT": "0"}
    client = redis.Redis.from_url(settings.redis_url)
    streams = [f"f{i}-{tag}" for i in range(3)]
    with fresh_topic(settings.kafka_bootstrap, settings.video_topic, partitions=PARTITIONS):
        for stream_id in streams:
            subprocess.run([sys.executable, "-m", "facestream", "ingest", clip, "--stream-id",
                            stream_id], env=env, check=True, capture_output=True)
        workers = [subprocess.Popen([sys.executable, "-m", "facestream", "worker",
                                     "--no-describe"], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for _ in range(2)]
        try:
            def status(stream_id):
                raw = client.hgetall(f"facestream:stream:{stream_id}")
                return {k.decode(): v.decode() for k, v in raw.items()}

            victim, owned = None, []
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while victim is None and time.monotonic() < deadline:
                for stream_id in streams:
                    st = status(stream_id)
                    written = client.xlen(f"{settings.events_stream}:{stream_id}")
                    if st.get("state") == "running" and written >= 4:
                        victim = next((w for w in workers
                                       if st.get("worker", "").endswith(f":{w.pid}")), None)
                        break
                time.sleep(0.2)
            if victim is None:
                raise SystemExit("no worker got part-way through a stream")
            owned = [s for s in streams if status(s).get("worker", "").endswith(f":{victim.pid}")
                     and status(s).get("state") == "running"]
            stopped = time.time()
            victim.send_signal(how)
            victim.wait()
            while time.monotonic() < deadline:
                for stream_id in owned:
                    after = client.xrange(f"{settings.events_stream}:{stream_id}",
                                          min=f"{int(stopped * 1000)}", count=1)
                    if after:
                        return int(after[0][0].decode().split("-")[0]) / 1000 - stopped
                    if status(stream_id).get("state") == "ended":
                        owned.remove(stream_id)         # it had nothing left to write
                if not owned:
                    raise SystemExit("the victim's streams ended before the signal")
                time.sleep(0.1)
            raise SystemExit("the other worker never carried the streams on")
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
                    w.wait(timeout=60)


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3g} (min {min(values):.3g}, max {max(values):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=28)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=2)
    parser.add_argument("--skip-failover", action="store_true")
    parser.add_argument("--start-services", action="store_true")
    args = parser.parse_args()
    tune_allocator()

    from facestream.workers.compose import Models

    base = Settings.load({"describe": False, "fps": args.fps})
    clip = str(assets.sample(base.cache_dir, CLIP))
    with av.open(clip) as container:
        chunks = list(gop_chunks(container, stream_id="x"))
    with services(start=args.start_services) as endpoints:
        models = Models.load(base)
        poison_run(endpoints, models, chunks, 2, args.fps, poisoned=False)        # warm-up
        runs = []
        for _ in range(args.repeat):
            for poisoned in (False, True):
                runs.append(poison_run(endpoints, models, chunks, args.streams, args.fps,
                                       poisoned=poisoned))
        failovers: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM": []}
        if not args.skip_failover:
            for _ in range(args.failovers):
                for how in (signal.SIGKILL, signal.SIGTERM):
                    failovers[how.name].append(failover_run(endpoints, clip, how))

    clean = [r["good_per_cpu_s"] for r in runs if not r["poisoned"]]
    dirty = [r["good_per_cpu_s"] for r in runs if r["poisoned"]]
    ratio = statistics.median(dirty) / statistics.median(clean)
    print(f"poison trickle: {args.streams} streams x {len(chunks)} chunks of {CLIP} at "
          f"{args.fps:g} fps, 1 bad message per {BAD_EVERY} good")
    print(f"  clean     good messages per CPU s: {spread(clean)}")
    print(f"  poisoned  good messages per CPU s: {spread(dirty)} "
          f"({runs[1]['dead_letters']} dead letters per run)")
    print(f"  poisoned / clean throughput: {ratio:.3f}x")
    result = {"clip": CLIP, "fps": args.fps, "streams": args.streams, "bad_every": BAD_EVERY,
              "poison_ratio": round(ratio, 4), "poison_runs": runs,
              "load_average": list(os.getloadavg())}
    if failovers["SIGKILL"]:
        kill, term = failovers["SIGKILL"], failovers["SIGTERM"]
        print("failover: first event of a stopped worker's stream, written by the other worker")
        print(f"  after SIGKILL: {spread(kill)} s")
        print(f"  after SIGTERM (baseline): {spread(term)} s")
        print(f"  SIGKILL / SIGTERM: {statistics.median(kill) / statistics.median(term):.2f}x")
        result["failover_s"] = {"SIGKILL": kill, "SIGTERM": term}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
