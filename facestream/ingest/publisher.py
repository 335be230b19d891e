"""``facestream ingest``: the edge publisher.

Demuxes a source with PyAV (no re-encoding), cuts it at keyframes into chunks of whole GOPs
(:mod:`facestream.ingest.chunks`) and produces them to the video topic, keyed by stream id so
all chunks of a stream land on one partition, in order.  The producer is idempotent with
``acks=all``: a chunk is either in the log once or the publisher says it failed.

Files go as fast as the broker takes them unless ``realtime`` paces them at their own speed;
live sources are paced by the camera and reconnected with backoff when they drop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import av

from facestream.config import Settings
from facestream.errors import FacestreamError, InputError
from facestream.ingest.broker import connect
from facestream.ingest.chunks import Chunk, EndOfStream, MediaClock, gop_chunks
from facestream.ingest.sources import Reconnector, SourceSpec, Stopped
from facestream.retry import Backoff

# Kafka adds record and batch framing around a message: keep well under the broker limit.
_FRAMING_BYTES = 16_384
# A MediaClock is sent this far before the media time a reconnected source resumes at: its
# chunks' origin is rounded to their time base.
_CLOCK_MARGIN_S = 0.001


class BrokerError(FacestreamError):
    """The broker cannot be reached or refused the data: fatal for the publisher."""


@dataclass
class IngestReport:
    chunks: int = 0
    messages: int = 0
    bytes: int = 0
    media_s: float = 0.0
    reached_s: float = 0.0               # media time at the end of the last frame sent
    reconnects: int = 0
    clocks: int = 0                      # MediaClock markers sent while a source was down
    errors: list[str] = field(default_factory=list)


def make_producer(settings: Settings):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return connect(KafkaProducer, settings, acks="all", enable_idempotence=True,
                       linger_ms=5, max_request_size=settings.max_message_bytes + _FRAMING_BYTES,
                       key_serializer=str.encode)
    except KafkaError as exc:
        raise BrokerError(f"Kafka at {settings.kafka_bootstrap}: {exc}; is the broker running "
                          "(deploy/dev-services up) and FACESTREAM_KAFKA_BOOTSTRAP right?") from None


class ChunkPublisher:
    """Sends chunks; blocking on :meth:`flush`.  Not thread-safe."""

    def __init__(self, settings: Settings, producer=None) -> None:
        self._settings = settings
        self._producer = producer or make_producer(settings)
        self._max = settings.max_message_bytes

    def publish(self, chunk: Chunk, *, topic: str | None = None) -> int:
        """Queue a chunk (split if needed) to ``topic`` (default: the video topic); returns
        the number of messages."""
        parts = chunk.split(self._max)
        for part in parts:
            self._producer.send(topic or self._settings.video_topic, key=part.stream_id,
                                value=part.payload, headers=part.headers())
        return len(parts)

    def end(self, stream_id: str, last_seq: int, *, topic: str | None = None) -> None:
        """Tell the workers the stream is over (they close its tracks and windows)."""
        marker = EndOfStream(stream_id, last_seq)
        self._producer.send(topic or self._settings.video_topic, key=stream_id, value=b"",
                            headers=marker.headers())

    def clock(self, marker: MediaClock, *, topic: str | None = None) -> None:
        """Tell the workers where the stream's media time will go on (its source is down)."""
        self._producer.send(topic or self._settings.video_topic, key=marker.stream_id,
                            value=b"", headers=marker.headers())

    def flush(self, timeout_s: float = 60.0) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            raise BrokerError(f"Kafka at {self._settings.kafka_bootstrap}: {exc}") from None

    def close(self) -> None:
        self._producer.close(timeout=10)


def ingest(spec: SourceSpec, settings: Settings, *, stream_id: str, realtime: bool = False,
           publisher: ChunkPublisher | None = None,
           on_error: Callable[[str], None] | None = None,
           stop: threading.Event | None = None, topic: str | None = None,
           fps: float | None = None, profile: str | None = None,
           backoff: Backoff | None = None, retry_open: bool = False,
           on_retry: Callable[[int, str, float], None] | None = None,
           on_chunk: Callable[[Chunk], None] | None = None) -> IngestReport:
    """Publish ``spec`` to ``topic`` (default: the video topic) until it ends (files), gives
    up (live) or ``stop`` is set; then tells the workers the stream is over.

    ``fps`` and ``profile`` go on every chunk (``fs-fps``, ``fs-profile``: the camera
    supervisor's per-stream settings).  ``backoff`` replaces the settings' reconnect backoff
    (the supervisor's has no end); ``retry_open`` retries a first open that fails as it
    would a drop; ``on_retry(attempt, reason, delay_s)`` hears of each wait before a
    reconnect, ``on_chunk(chunk)`` of each chunk once it is queued.  Before each reconnect
    wait, a :class:`MediaClock` tells the workers how far the stream's media time has gone
    (the windows that end by then close while the source is down).

    Blocking.  Raises InputError if the source cannot be used, SourceDropped when a live
    source stays down after the bounded reconnects, BrokerError when Kafka fails.
    """
    report = IngestReport()
    own = publisher is None
    publisher = publisher or ChunkPublisher(settings)
    started, started_epoch = time.monotonic(), time.time()
    last_seq = -1
    backoff = backoff or Backoff(settings.reconnect_attempts, settings.reconnect_backoff_s,
                                 settings.reconnect_backoff_max_s)

    def waiting(attempt: int, reason: str, delay_s: float) -> None:
        # The source is down and is not tried again for delay_s: what it sends if it is
        # back then starts no earlier than link.resume_s then (less a margin for the
        # origin's rounding to the time base), so the windows that end by then close now.
        if last_seq >= 0:
            resume_s = link.resume_s(report.reached_s, after_s=delay_s)
            resume_us = int((resume_s - _CLOCK_MARGIN_S) * 1e6)
            publisher.clock(MediaClock(stream_id, last_seq, resume_us), topic=topic)
            publisher.flush()
            report.clocks += 1
        if on_retry is not None:
            on_retry(attempt, reason, delay_s)

    link = Reconnector(spec, timeout_s=settings.open_timeout_s, backoff=backoff,
                       on_error=report.errors.append, on_retry=waiting, stop=stop)
    try:
        cut = settings.chunk_max_s if spec.live and settings.chunk_max_s > 0 else None
        for chunk in _source_chunks(spec, link, stream_id, report, on_error,
                                    retry_open=retry_open, max_chunk_s=cut):
            if stop is not None and stop.is_set():
                break
            if fps is not None or profile is not None:
                chunk = replace(chunk, fps=fps, profile=profile)
            last_seq = chunk.seq
            media_s = float((chunk.first_pts - chunk.origin_pts) * chunk.time_base)
            if realtime and (ahead := media_s - (time.monotonic() - started)) > 0:
                if stop is not None:
                    stop.wait(ahead)
                else:
                    time.sleep(ahead)
            if realtime and not spec.live:
                # A paced file stands for a camera: its frame at media time t is "captured"
                # at t after the start.
                chunk = replace(chunk, capture=started_epoch + media_s)
            report.messages += publisher.publish(chunk, topic=topic)
            report.chunks += 1
            report.bytes += len(chunk.payload)
            report.media_s = max(report.media_s, media_s)
            if on_chunk is not None:
                on_chunk(chunk)
    except Stopped:
        pass                           # stop was set while waiting to reconnect
    finally:
        if last_seq >= 0:
            publisher.end(stream_id, last_seq, topic=topic)
        publisher.flush()
        if own:
            publisher.close()
    return report


def _source_chunks(spec: SourceSpec, link: Reconnector, stream_id: str, report: IngestReport,
                   on_error: Callable[[str], None] | None, *, retry_open: bool = False,
                   max_chunk_s: float | None = None) -> Iterator[Chunk]:
    """Chunks of the source (``max_chunk_s``: see :func:`gop_chunks`); for a live source,
    across reconnects, with chunk numbers and media time running on (each connection's
    timestamps restart, so its chunks get an origin that places them after what came
    before)."""
    try:
        container = link.open(retry=retry_open)
    finally:
        report.reconnects = link.reconnects
    base_seq, following, offset_s = 0, 0, 0.0
    try:
        while True:
            try:
                for chunk in gop_chunks(container, stream_id=stream_id, max_chunk_s=max_chunk_s,
                                        clock=time.time if spec.live else None):
                    shift = round(offset_s / chunk.time_base) if offset_s else 0
                    chunk = replace(chunk, seq=chunk.seq + base_seq,
                                    origin_pts=chunk.origin_pts - shift, live=spec.live)
                    following = chunk.seq + 1
                    report.reached_s = max(report.reached_s, _end_s(chunk))
                    yield chunk
                    link.recovered()       # a good chunk resets the backoff
                if not spec.live:
                    return
                problem = "stream ended"
            except av.error.FFmpegError as exc:
                if not spec.live:
                    raise InputError(f"source {spec.text}: cannot read ({exc})") from None
                problem = str(exc)
            container.close()
            message = f"source {spec.text}: {problem}"
            report.errors.append(message)
            if on_error:
                on_error(message)
            try:
                container = link.reopen(message)
            finally:
                report.reconnects = link.reconnects
            base_seq = following
            # (workers refuse a chunk that starts before its predecessor)
            offset_s = link.resume_s(report.reached_s)
    finally:
        container.close()


def _end_s(chunk: Chunk) -> float:
    """Media seconds at which the chunk's last frame ends."""
    ends = [p.pts + p.duration for p in chunk.packets() if p.pts is not None]
    return float((max(ends) - chunk.origin_pts) * chunk.time_base) if ends else chunk.start_s
