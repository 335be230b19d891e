"""Worker observability: Prometheus ``/metrics``, liveness ``/healthz``, readiness ``/readyz``.

Served from a daemon thread on ``metrics_port`` (0: off).  ``/readyz`` answers 200 once the
worker has joined its consumer group while Redis and the broker answer (the worker probes
both every two seconds, busy or idle), 503 otherwise, so an orchestrator sends no traffic to
(and does not count) a worker that cannot deliver.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from facestream.errors import ConfigError

_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)


class WorkerMetrics:
    """The worker's counters; every method is cheap and thread-safe."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages = Counter("facestream_messages", "Kafka messages processed", registry=r)
        self.chunks = Counter("facestream_chunks", "Video chunks decoded", registry=r)
        self.frames = Counter("facestream_frames", "Frames analysed", registry=r)
        self.detected_frames = Counter(
            "facestream_detected_frames", "Analysed frames the face detector ran on (on the "
            "others each face was followed from the frame before: detect_interval_s)",
            registry=r)
        self.faces = Counter("facestream_faces", "Faces found in analysed frames", registry=r)
        self.windows = Counter("facestream_windows", "Analysis windows closed", registry=r)
        self.events = Counter("facestream_events", "Events written to Redis", ["type"], registry=r)
        self.dropped_chunks = Counter("facestream_dropped_chunks",
                                      "Live chunks dropped because the worker fell behind",
                                      registry=r)
        self.dropped_seconds = Counter("facestream_dropped_media_seconds",
                                       "Media seconds of live video dropped", registry=r)
        self.dead_letters = Counter("facestream_dead_letters", "Messages sent to the DLQ",
                                    registry=r)
        self.out_of_order = Counter(
            "facestream_chunks_out_of_order", "Chunks out of a stream's order, by kind: gap "
            "(numbers skipped), late, duplicate, restart (chunk 0 again), backwards or jump "
            "(media time)", ["kind"], registry=r)
        self.orphan_parts = Counter("facestream_orphan_parts",
                                    "Parts of split chunks given up and dead-lettered",
                                    registry=r)
        self.analysis_failures = Counter("facestream_analysis_failures",
                                         "Windows the models failed on (error event written)",
                                         registry=r)
        self.redis_retries = Counter("facestream_redis_retries",
                                     "Redis calls retried while it was unavailable", registry=r)
        self.stage_seconds = Histogram("facestream_stage_seconds", "Time spent per stage call",
                                       ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.event_latency = Histogram(
            "facestream_event_latency_seconds", "From the source producing a window's last "
            "frame to its analysis event being delivered, per stream (streams whose chunks "
            "carry fs-capture)", ["stream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.carried_chunks = Counter(
            "facestream_carried_chunks", "Chunks still in the face stage when a round "
            "delivered its events after round_max_s (each counts once per round it waits)",
            registry=r)
        self.media_clocks = Counter(
            "facestream_media_clocks", "MediaClock markers applied: a live source was down and "
            "its windows closed without waiting for it", registry=r)
        self.round_seconds = Histogram(
            "facestream_round_seconds", "Wall seconds of one round: its chunks decoded and "
            "their faces found, its windows analysed, its events delivered",
            buckets=_STAGE_BUCKETS, registry=r)
        self.batch_windows = Histogram("facestream_batch_windows",
                                       "Windows per model batch (all streams)",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.rebalances = Counter(
            "facestream_rebalances", "Partition assignments this worker received from its "
            "consumer group (its first join included): more than one means the group "
            "rebalanced", registry=r)
        self.partitions = Gauge("facestream_assigned_partitions",
                                "Video-topic partitions this worker holds", registry=r)
        self.streams = Gauge("facestream_streams", "Streams this worker owns", registry=r)
        self.open_windows = Gauge("facestream_open_windows",
                                  "Tracks with a window still collecting frames", registry=r)
        self.lag = Gauge("facestream_consumer_lag", "Messages behind the end of the log",
                         ["partition"], registry=r)
        self.ready = False             # joined the consumer group
        self.redis_ok = True           # Redis answered the last call or probe
        self.broker_ok = True          # the broker answered the last probe

    def watch_language(self, analyzer: Any) -> None:
        """Export the language stage of ``analyzer`` (a
        :class:`~facestream.workers.pipeline.WindowAnalyzer`), read at each scrape: see
        :class:`LanguageCollector`.  Call once."""
        self.registry.register(LanguageCollector(analyzer))

    @property
    def readiness(self) -> bool:
        return self.ready and self.redis_ok and self.broker_ok

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class LanguageCollector(Collector):
    """The LLM side of a worker, read when ``/metrics`` is scraped (nothing on the hot path):
    the analyzer's counts of windows asked of the LLM, shed under load, failed and reused
    (plain integers its consuming thread updates), and the queue of the language stage's
    engine, in-process or remote (its ``stats``, which are thread-safe).  A worker without a
    language stage (``describe`` off) exports zeros, so the series always exist."""

    def __init__(self, analyzer: Any) -> None:
        self._analyzer = analyzer

    def collect(self) -> Iterator[Metric]:
        a = self._analyzer
        engine = a.language.stats if a.language is not None else {}
        yield CounterMetricFamily("facestream_llm_requests",
                                  "Windows sent to the LLM for a fresh description or answer",
                                  value=a.llm_calls)
        yield CounterMetricFamily("facestream_llm_shed",
                                  "Windows the LLM engine shed because its queue was full "
                                  "(they keep the track's last description)", value=a.llm_shed)
        yield CounterMetricFamily("facestream_llm_failed",
                                  "Windows whose LLM call failed (they go undescribed; the "
                                  "worker logs a warning)",
                                  value=a.llm_failed)
        yield CounterMetricFamily("facestream_descriptions_reused",
                                  "Windows that reused their track's last description",
                                  value=a.descriptions_reused)
        yield GaugeMetricFamily("facestream_llm_queued",
                                "LLM requests waiting for a slot (in-process engine) or for "
                                "their turn at the LLM server", value=engine.get("queued", 0))
        yield GaugeMetricFamily("facestream_llm_running",
                                "LLM requests being generated", value=engine.get("running", 0))
        yield CounterMetricFamily("facestream_llm_generated_tokens",
                                  "Tokens the in-process LLM engine generated",
                                  value=engine.get("tokens", 0))
        yield CounterMetricFamily("facestream_llm_draft_tokens",
                                  "Speculative tokens the in-process llama.cpp engine drafted "
                                  "from its recent answers (llm_draft_tokens)",
                                  value=engine.get("drafted", 0))
        yield CounterMetricFamily("facestream_llm_draft_accepted_tokens",
                                  "Drafted tokens the model agreed with (each saved one pass "
                                  "over the weights)", value=engine.get("draft_accepted", 0))


def serve(metrics: WorkerMetrics, port: int, *, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the HTTP endpoints in a daemon thread; returns the server (``.shutdown()``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._reply(200, b"ok\n")
            elif self.path == "/readyz":
                ready = metrics.readiness
                self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError(f"metrics port {port}: {exc.strerror}; set FACESTREAM_METRICS_PORT "
                          "to a free port, or 0 to turn the endpoints off") from None
    threading.Thread(target=server.serve_forever, name="facestream-metrics", daemon=True).start()
    return server
