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
               many records as (a) of the mean chunk size, unthrottled.

Both sides use ``acks=all``, idempotence and linger.ms=5 (facestream's ``make_producer``
settings) and no compression.  Timings include the first metadata fetch and the final flush,
not producer start-up (nor the JVM's).  MB/s is payload bytes / 10^6 per second: the tool's
own MB/sec (2^20 bytes) is not used; its records/sec times the record size is.  facestream
also sends a key (the stream id) and ~170 bytes of headers per record that the baseline does
not; (b) also sends one empty end-of-stream record per pass, not counted.  kafka-python
checksums every record batch with CRC32C, in C if the ``crc32c`` package is installed, else in
pure Python (~8 MB/s); the header line says which.

Each measurement takes the best of ``--repeat`` runs, (a), (b) and (c) interleaved.  The
last line is ``RESULT {json}`` with every number.  About 3 minutes on a 2-core machine
(about 1 with the ``crc32c`` package).

    .venv/bin/python bench/bench_ingest.py [--megabytes 100] [--repeat 3] [--start-services]
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
import re
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
# The tool's summary line: "532 records sent, 412.3 records/sec (78.12 MB/sec), ..."
PERF_SUMMARY = re.compile(r"(\d+) records sent, ([\d.]+) records/sec")


@dataclass(frozen=True)
class Throughput:
    records: int
    payload_bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / MB / self.seconds

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    def as_json(self) -> dict[str, float]:
        return {"records": self.records, "payload_mb": round(self.payload_bytes / MB, 3),
                "seconds": round(self.seconds, 4), "mb_per_s": round(self.mb_per_s, 2),
                "records_per_s": round(self.records_per_s, 1)}


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
    publisher made (and connected) beforehand."""
    publisher = ChunkPublisher(settings)
    try:
        start = time.perf_counter()
        records, payload = send(publisher)
        publisher.flush()
        return Throughput(records, payload, time.perf_counter() - start)
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
    """Kafka's ProducerPerformance: ``records`` records of ``record_size`` bytes, no throttle."""
    cmd = ["java", "-cp", f"{kafka_libs()}/*", "org.apache.kafka.tools.ProducerPerformance",
           "--topic", topic, "--num-records", str(records), "--record-size", str(record_size),
           "--throughput", "-1",
           "--command-property", f"bootstrap.servers={bootstrap}", "acks=all",
           "enable.idempotence=true", "linger.ms=5", "compression.type=none"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    totals = [m for m in PERF_SUMMARY.finditer(proc.stdout) if int(m.group(1)) == records]
    if proc.returncode != 0 or not totals:
        raise SystemExit(f"ProducerPerformance failed (exit code {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rate = float(totals[-1].group(2))
    return Throughput(records, records * record_size, records / rate)


def best_of(repeat: int, endpoints: Endpoints,
            runs: dict[str, Callable[[str], Throughput]]) -> dict[str, Throughput]:
    """Each of ``runs`` (given a fresh one-partition topic) ``repeat`` times, interleaved;
    each one's highest MB/s."""
    best: dict[str, Throughput] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            topic = f"bench-ingest-{name}-{uuid.uuid4().hex[:8]}"
            with fresh_topic(endpoints.kafka_bootstrap, topic, partitions=1):
                result = run(topic)
            if name not in best or result.mb_per_s > best[name].mb_per_s:
                best[name] = result
    return best


def print_table(best: dict[str, Throughput], labels: dict[str, str]) -> None:
    baseline = best["baseline"].mb_per_s
    width = max(len(label) for label in labels.values())
    print(f"{'measurement':<{width}}  {'records':>7}  {'MB':>7}  {'seconds':>7}  {'MB/s':>7}  "
          f"{'records/s':>9}  {'ratio':>5}")
    for name, label in labels.items():
        t = best[name]
        print(f"{label:<{width}}  {t.records:>7}  {t.payload_bytes / MB:>7.1f}  {t.seconds:>7.2f}  "
              f"{t.mb_per_s:>7.1f}  {t.records_per_s:>9.1f}  {t.mb_per_s / baseline:>5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=100.0,
                        help="payload per measurement, MB (whole passes of the clip)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--start-services", action="store_true",
                        help="start a private Kafka and Redis even if the environment names some")
    args = parser.parse_args()
    if args.repeat < 1 or args.megabytes <= 0:
        parser.error("--repeat and --megabytes must be positive")

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

        best = best_of(args.repeat, endpoints, {
            "publish": lambda topic: publish_chunks(settings(topic), stream),
            "ingest": lambda topic: ingest_passes(settings(topic), spec, passes),
            "baseline": lambda topic: producer_perf(endpoints.kafka_bootstrap, topic,
                                                    len(stream), record_size),
        })

    print(f"clip {spec.target}: {len(chunks)} chunks, {clip_bytes / MB:.2f} MB a pass; "
          f"{passes} passes, {len(stream)} records of {record_size} bytes on average; "
          f"Kafka {endpoints.kafka_bootstrap}, acks=all, idempotent; best of {args.repeat}; "
          f"kafka-python CRC32C: {crc32c_implementation()}")
    print_table(best, {"publish": "facestream ChunkPublisher, pre-demuxed",
                       "ingest": "facestream ingest(), demux included",
                       "baseline": "Kafka ProducerPerformance (baseline)"})
    result = {
        "clip": CLIP, "passes": passes, "record_size": record_size, "repeat": args.repeat,
        "kafka_bootstrap": endpoints.kafka_bootstrap, "services_started": endpoints.started,
        "kafka_python_crc32c": crc32c_implementation(),
        **{name: t.as_json() for name, t in best.items()},
        "ratio_publish": round(best["publish"].mb_per_s / best["baseline"].mb_per_s, 3),
        "ratio_ingest": round(best["ingest"].mb_per_s / best["baseline"].mb_per_s, 3),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
