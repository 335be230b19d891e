"""Ingest benchmark: facestream's Kafka publisher against Kafka's own producer, same broker.

The sample clip WolfgangLanger_Pexels.mp4 (640x360 H.264, 19.6 s) is 7 keyframe chunks of
~190 kB, 1.3 MB a pass.  Each measurement sends about ``--megabytes`` (default 100) of payload
to a topic of its own with one partition (a stream's chunks all go to one partition), created
before and deleted after, so topic creation is not timed:

(a) publish    ``ChunkPublisher.publish`` of the clip's chunks, demuxed once beforehand with
               ``gop_chunks`` and repeated with increasing seq until the size is reached, then
               ``flush``: the Kafka path alone.
(b) ingest()   the whole ``facestream ingest`` path: ``ingest()`` once per pass of the clip
               (open, demux, cut into chunks, publish, end-of-stream marker, flush), each pass
               its own stream id, all passes through one producer.
(c) baseline   Kafka's ``ProducerPerformance`` (kafka-producer-perf-test, the JVM client), as
               many records as (a) of the mean chunk size, unthrottled; its steady-state
               figures after as many ``--warmup-records`` in the same JVM.

Both sides use ``acks=all``, idempotence and linger.ms=5 (facestream's ``make_producer``
settings) and no compression.  Both warm their producer up on the measurement's own topic
before the timed part: facestream's producer does the whole send (and flush) once untimed,
the JVM sends the same number of warm-up records (``--warmup-records``), so neither side's
figure contains producer start-up, the first metadata fetch, or (for the JVM) a cold JIT.
Timings include the final flush.  MB/s is payload bytes / 10^6 per second: the tool's own
MB/sec (2^20 bytes) is not used; its records/sec times the record size is.  facestream
also sends a key (the stream id) and ~170 bytes of headers per record that the baseline does
not; (b) also sends one empty end-of-stream record per pass, not counted.  kafka-python
checksums every record batch with CRC32C, in C if the ``crc32c`` package is installed, else in
pure Python (~8 MB/s); the header line says which.

Rounds, the same for every side: (a), (b) and (c) each run once untimed first (warm-up:
broker, page cache, this process's code paths), then ``--rounds`` rounds (default 5) in
which each runs once, in turn, so drift on a shared machine hits all of them.  Each figure is
the median over the rounds with its spread (min-max); a ratio is median / median baseline,
its spread the min-max of the per-round ratios.  Throughput is per wall second: the broker
shares the machine and its work is part of what is measured, so the client's CPU time alone
cannot stand for it.  facestream's client CPU seconds over the timed part
(``time.process_time``) are printed beside it; the JVM's cannot be separated from its
start-up and warm-up records, so the baseline has none.  The 1-minute load average is
printed before and after.  The last line is ``RESULT {json}`` with every number.  About 2
minutes on a 2-core machine with the ``crc32c`` package.

    .venv/bin/python bench/bench_ingest.py [--megabytes 100] [--rounds 5] [--start-services]
    ./dev bench                        # every bench/bench_*.py

Kafka: with ``--start-services``, or when FACESTREAM_KAFKA_BOOTSTRAP and FACESTREAM_REDIS_URL
do not both name reachable services, the script starts its own broker (and Redis) with
``deploy/dev-services up`` on ports 29092/29093/26379 in ``<tmp>/bench-services`` and stops
them at the end, deleting their data (see bench/services.py); otherwise it uses the broker
the environment names.
The baseline runs the Kafka jars that deploy/dev-services caches (Java 17+ on PATH).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass, replace
from typing import Callable

import av

from facestream import assets
from facestream.config import Settings
from facestream.ingest.chunks import Chunk, gop_chunks
from facestream.ingest.publisher import ChunkPublisher, ingest
from facestream.ingest.sources import SourceSpec, parse_source

from services import Endpoints, fresh_topic, kafka_libs, services

CLIP = "WolfgangLanger_Pexels.mp4"
MB = 1e6
# The tool's steady-state summary line (after --warmup-records):
# "532 steady state records sent, 412.3 records/sec (78.12 MB/sec), ..."
PERF_SUMMARY = re.compile(r"(\d+) steady state records sent, ([\d.]+) records/sec")


@dataclass(frozen=True)
class Throughput:
    records: int
    payload_bytes: int
    seconds: float
    cpu_s: float                 # this process's CPU seconds; NaN for the JVM baseline

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / MB / self.seconds

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds


def crc32c_implementation() -> str:
    """How kafka-python checksums record batches: without the optional ``crc32c`` package it
    falls back to pure Python, which bounds what the publisher can send."""
    from kafka.record import util

    return "C" if getattr(util, "crc32c_c", None) is not None else "pure Python"


def clip_chunks(spec: SourceSpec) -> list[Chunk]:
    with av.open(spec.target) as container:
        return list(gop_chunks(container, stream_id=spec.name))


def repeated(chunks: list[Chunk], passes: int) -> list[Chunk]:
    """The clip's chunks ``passes`` times over, numbered on (seq 0, 1, 2, ...)."""
    return [replace(chunk, seq=i * len(chunks) + chunk.seq)
            for i in range(passes) for chunk in chunks]


def timed(settings: Settings, send: Callable[[ChunkPublisher], tuple[int, int]]) -> Throughput:
    """Time ``send(publisher)`` -> (records, payload bytes) and the flush after it, on a
    publisher made (and connected) beforehand that has already done one untimed
    ``send`` and flush (warm-up in the same producer, as the baseline's warm-up records)."""
    publisher = ChunkPublisher(settings)
    try:
        send(publisher)
        publisher.flush()
        start, cpu = time.perf_counter(), time.process_time()
        records, payload = send(publisher)
        publisher.flush()
        return Throughput(records, payload, time.perf_counter() - start,
                          time.process_time() - cpu)
    finally:
        publisher.close()


def publish_chunks(settings: Settings, chunks: list[Chunk]) -> Throughput:
    def send(publisher: ChunkPublisher) -> tuple[int, int]:
        records = sum(publisher.publish(chunk) for chunk in chunks)
        return records, sum(len(chunk.payload) for chunk in chunks)

    return timed(settings, send)


def ingest_passes(settings: Settings, spec: SourceSpec, passes: int) -> Throughput:
    def send(publisher: ChunkPublisher) -> tuple[int, int]:
        records = payload = 0
        for i in range(passes):
            report = ingest(spec, settings, stream_id=f"{spec.name}-{i}", publisher=publisher)
            records += report.messages
            payload += report.bytes
        return records, payload

    return timed(settings, send)


def producer_perf(bootstrap: str, topic: str, records: int, record_size: int) -> Throughput:
    """Kafka's ProducerPerformance: ``records`` untimed warm-up records, then ``records``
    timed ones (its steady-state figures), of ``record_size`` bytes, no throttle."""
    cmd = ["java", "-cp", f"{kafka_libs()}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(2 * records), "--warmup-records", str(records),
           "--record-size", str(record_size), "--throughput", "-1",
           "--command-property", f"bootstrap.servers={bootstrap}", "acks=all",
           "enable.idempotence=true", "linger.ms=5", "compression.type=none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    totals = [m for m in PERF_SUMMARY.finditer(proc.stdout) if int(m.group(1)) == records]
    if proc.returncode != 0 or not totals:
        raise SystemExit(f"ProducerPerformance failed (exit code {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rate = float(totals[-1].group(2))
    return Throughput(records, records * record_size, records / rate, float("nan"))


def interleaved(rounds: int, endpoints: Endpoints,
                runs: dict[str, Callable[[str], Throughput]]) -> dict[str, list[Throughput]]:
    """Each of ``runs`` (given a fresh one-partition topic) once untimed (warm-up), then
    ``rounds`` rounds in which each runs once, in turn; every round's result."""
    def once(name: str, run: Callable[[str], Throughput]) -> Throughput:
        topic = f"bench-ingest-{name}-{uuid.uuid4().hex[:8]}"
        with fresh_topic(endpoints.kafka_bootstrap, topic, partitions=1):
            return run(topic)

    for name, run in runs.items():
        once(name, run)
    results: dict[str, list[Throughput]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(once(name, run))
    return results


def spread(values: list[float], digits: int = 1) -> str:
    """Median (min-max)."""
    return (f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f})")


def stat_json(values: list[float], digits: int = 3) -> dict:
    return {"median": round(statistics.median(values), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "rounds": [round(v, digits) for v in values]}


def ratios(results: dict[str, list[Throughput]], name: str) -> tuple[float, list[float]]:
    """Median MB/s over the baseline's median, and the per-round ratios."""
    mine = [t.mb_per_s for t in results[name]]
    base = [t.mb_per_s for t in results["baseline"]]
    return statistics.median(mine) / statistics.median(base), [a / b for a, b in zip(mine, base)]


def print_table(results: dict[str, list[Throughput]], labels: dict[str, str]) -> None:
    header = ("measurement", "records", "MB", "MB/s", "records/s", "client CPU s",
              "ratio (MB/s)")
    cells = [header]
    for name, label in labels.items():
        runs = results[name]
        ratio, per_round = ratios(results, name)
        cells.append((label, str(runs[0].records), f"{runs[0].payload_bytes / MB:.1f}",
                      spread([t.mb_per_s for t in runs]),
                      spread([t.records_per_s for t in runs]),
                      "-" if math.isnan(runs[0].cpu_s) else spread([t.cpu_s for t in runs], 2),
                      f"{ratio:.3f} ({min(per_round):.3f}-{max(per_round):.3f})"))
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=100.0,
                        help="payload per measurement, MB (whole passes of the clip)")
    parser.add_argument("--rounds", "--repeat", type=int, default=5,
                        help="interleaved rounds, after one warm-up run of each side; "
                             "medians reported")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    if args.rounds < 1 or args.megabytes <= 0:
        parser.error("--rounds and --megabytes must be positive")

    base = Settings.load()
    spec = parse_source(str(assets.sample(base.cache_dir, CLIP)))
    chunks = clip_chunks(spec)
    clip_bytes = sum(len(chunk.payload) for chunk in chunks)
    passes = math.ceil(args.megabytes * MB / clip_bytes)
    stream = repeated(chunks, passes)
    record_size = round(passes * clip_bytes / len(stream))

    with services(start=args.start_services) as endpoints:
        def settings(topic: str) -> Settings:
            return Settings.load({**endpoints.overrides(), "video_topic": topic})

        load_before = os.getloadavg()
        results = interleaved(args.rounds, endpoints, {
            "publish": lambda topic: publish_chunks(settings(topic), stream),
            "ingest": lambda topic: ingest_passes(settings(topic), spec, passes),
            "baseline": lambda topic: producer_perf(endpoints.kafka_bootstrap, topic,
                                                    len(stream), record_size),
        })
        load_after = os.getloadavg()

    print(f"clip {spec.target}: {len(chunks)} chunks, {clip_bytes / MB:.2f} MB a pass; "
          f"{passes} passes, {len(stream)} records of {record_size} bytes on average; "
          f"Kafka {endpoints.kafka_bootstrap}, acks=all, idempotent; kafka-python CRC32C: "
          f"{crc32c_implementation()}")
    print(f"warm-up run of every side, then {args.rounds} interleaved rounds: median (min-max); "
          f"ratio = median / median baseline (min-max of the per-round ratios); "
          f"{os.cpu_count()} cores, load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
          f"{'/'.join(f'{x:.2f}' for x in load_after)}")
    print_table(results, {"publish": "facestream ChunkPublisher, pre-demuxed",
                          "ingest": "facestream ingest(), demux included",
                          "baseline": "Kafka ProducerPerformance (baseline)"})
    result = {
        "clip": CLIP, "passes": passes, "record_size": record_size, "rounds": args.rounds,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "kafka_python_crc32c": crc32c_implementation(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        **{name: {"records": runs[0].records,
                  "payload_mb": round(runs[0].payload_bytes / MB, 3),
                  "mb_per_s": stat_json([t.mb_per_s for t in runs], 2),
                  "records_per_s": stat_json([t.records_per_s for t in runs], 1),
                  "seconds": stat_json([t.seconds for t in runs], 4),
                  **({} if math.isnan(runs[0].cpu_s)
                     else {"client_cpu_s": stat_json([t.cpu_s for t in runs], 4)})}
           for name, runs in results.items()},
        **{f"ratio_{name}": {"median_over_median": round(ratios(results, name)[0], 3),
                             **stat_json(ratios(results, name)[1])}
           for name in ("publish", "ingest")},
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
