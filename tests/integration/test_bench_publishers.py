"""The benchmarks' own publishers still speak the ingest API (they subclass
``ChunkPublisher``; a signature change once broke ``bench_distributed.py`` unseen, since no
test runs the benchmarks themselves).  Real broker: the clip is published as fast as it is
read."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from facestream.ingest.sources import parse_source

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_bench_distributed_publisher_records_every_chunk_it_sends(isolated, sample):
    settings, _ = isolated
    bench = bench_module("bench_distributed")
    spec = parse_source(str(sample(bench.CLIP)))
    sent = bench.publish_one(spec, settings, "bench-s1", realtime=False, delay_s=0)
    pts = [first for first, _ in sent]
    assert len(sent) >= 3 and pts == sorted(pts) and pts[0] == 0, sent
    times = [t for _, t in sent]
    assert times == sorted(times)
