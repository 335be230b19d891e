"""``facestream worker``: Kafka in, the pipeline's stages, Redis out.

One process consumes the video topic in the consumer group; Kafka gives it some partitions,
hence some streams, each decoded by its own :class:`ChunkDecoder` and tracked by its own
:class:`StreamState`.  Every poll's closed windows, from all streams, go through the
:class:`WindowAnalyzer` together (one encoder batch, one LLM batch).

Delivery is at-least-once: an offset is committed only when every event derived from its
chunk is in Redis — the chunk's frames are all in windows already written, and the decoder
holds none of them back.  Messages that are not chunks, and chunks that do not decode, go to
the dead-letter topic with the reason in header ``fs-error``, an error event is written, and
the worker goes on with its other streams.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import av

from facestream import events
from facestream.config import Settings
from facestream.errors import InputError
from facestream.ingest.chunks import ChunkError, EndOfStream, PartAssembler, parse_message
from facestream.ingest.sources import stream_id_from
from facestream.workers.decode import ChunkDecoder
from facestream.workers.pipeline import PROFILE, StreamState
from facestream.workers.redis_sink import RedisSink, SinkUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Stream:
    """A stream this worker owns: its decoder, tracks and the offsets not yet safe."""

    decoder: ChunkDecoder
    state: StreamState
    partition: Any                                   # kafka TopicPartition
    # (offset, media time of the chunk's last decoded frame or None), oldest first
    chunks: deque = field(default_factory=deque)


@dataclass
class _Batch:
    """What one poll produced, in delivery order: events before the windows' analysis
    (errors, track starts), the windows, and events after (track ends)."""

    before: list = field(default_factory=list)
    windows: list = field(default_factory=list)      # (StreamState, FaceWindow)
    after: list = field(default_factory=list)


@dataclass
class WorkerReport:
    messages: int = 0
    chunks: int = 0
    frames: int = 0
    events: int = 0
    dead_letters: int = 0
    streams_ended: int = 0


class Worker:
    """Blocking :meth:`run` loop; stop it with :meth:`stop` (from a signal or another thread)."""

    def __init__(self, settings: Settings, *, models=None, consumer=None, sink=None,
                 dlq_producer=None, on_event: Callable[[dict], None] | None = None) -> None:
        from facestream.workers.embedded import Models

        self.settings = settings
        self.models = models or Models.load(settings)
        self.consumer = consumer or _make_consumer(settings)
        self.sink = sink or RedisSink(settings)
        self._dlq = dlq_producer
        self._streams: dict[str, _Stream] = {}
        self._assembler = PartAssembler()
        self._stop = threading.Event()
        self._on_event = on_event
        self.report = WorkerReport()
        self.consumer.subscribe([settings.video_topic], listener=_rebalance_listener(self))

    def _partitions_revoked(self, revoked) -> None:
        """Another worker takes these streams over from the last committed offsets: forget
        their state (the new owner rebuilds it from the next keyframe chunk)."""
        revoked = set(revoked)
        for stream_id in [s for s, st in self._streams.items() if st.partition in revoked]:
            del self._streams[stream_id]

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, until: Callable[["Worker"], bool] | None = None) -> WorkerReport:
        """Consume until :meth:`stop` is called or ``until(self)`` is true."""
        try:
            while not self._stop.is_set() and not (until and until(self)):
                batch = self.consumer.poll(timeout_ms=500, max_records=64)
                if batch:
                    self._process(batch)
        finally:
            self.consumer.close(autocommit=False)
        return self.report

    # -- one poll ------------------------------------------------------------------------

    def _process(self, batch: dict) -> None:
        acc = _Batch()
        for tp, records in batch.items():
            for record in records:
                self.report.messages += 1
                self._record(tp, record, acc)
        analysis = self.models.analyzer.analyze(acc.windows)
        # Per track: started, then its windows, then ended (a track ends in the poll that
        # closes its last window).
        self._deliver(acc.before + analysis + acc.after)
        self._commit()

    def _record(self, tp, record, acc: "_Batch") -> None:
        key = (record.key or b"").decode(errors="replace")
        try:
            message = parse_message(record.headers, record.value)
        except ChunkError as exc:
            self._dead_letter(record, stream_id_from(key), f"not a chunk: {exc}", acc)
            return
        stream = self._stream(message.stream_id, tp)
        if isinstance(message, EndOfStream):
            self._end(stream, acc)
            return
        chunk = self._assembler.add(message)
        if chunk is None:
            stream.chunks.append((record.offset, None))       # a part: wait for the rest
            return
        try:
            frames = stream.decoder.decode(chunk)
        except (av.error.FFmpegError, ChunkError, InputError) as exc:
            self._dead_letter(record, chunk.stream_id,
                              f"chunk {chunk.seq} does not decode: {exc}", acc)
            return
        self.report.chunks += 1
        self._frames(stream, frames, acc)
        stream.chunks.append((record.offset, frames[-1].time_s if frames else None))

    def _frames(self, stream: "_Stream", frames, acc: "_Batch") -> None:
        for frame in frames:
            started, closed, ended = stream.state.observe(frame, self.models.faces(frame.image))
            acc.before += started
            acc.windows += [(stream.state, w) for w in closed]
            acc.after += ended
            self.report.frames += 1

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Write to Redis; while it is down, retry with backoff (nothing is committed)."""
        if not batch:
            return
        attempt = 0
        while True:
            try:
                self.report.events += self.sink.write(batch)
                break
            except SinkUnavailable as exc:
                delay = min(8.0, 0.25 * 2 ** attempt)
                attempt += 1
                log.warning("%s; retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise
        if self._on_event:
            for event in batch:
                self._on_event(event)

    def _commit(self) -> None:
        """Commit, per partition, up to the oldest chunk whose events are not all written."""
        from kafka import OffsetAndMetadata

        safe: dict[Any, int] = {}
        for stream in self._streams.values():
            open_s = stream.state.windower.earliest_open_s()
            # The newest chunk stays pending: the decoder may still hold some of its frames.
            while len(stream.chunks) > 1:
                offset, last = stream.chunks[0]
                if last is not None and open_s is not None and last >= open_s:
                    break
                stream.chunks.popleft()
            first_pending = stream.chunks[0][0] if stream.chunks else None
            if first_pending is not None:
                safe[stream.partition] = min(safe.get(stream.partition, first_pending), first_pending)
        positions = {}
        for tp in self.consumer.assignment():
            position = self.consumer.position(tp)
            positions[tp] = OffsetAndMetadata(safe.get(tp, position), "", -1)
        if positions:
            self.consumer.commit(positions)

    # -- streams ---------------------------------------------------------------------------

    def _stream(self, stream_id: str, tp) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = _Stream(ChunkDecoder(stream_id, fps=self.settings.fps),
                             StreamState(stream_id, self.settings), tp)
            self._streams[stream_id] = stream
            self.sink.status(stream_id, state="running", since=time.time())
        return stream

    def _end(self, stream: "_Stream", acc: "_Batch") -> None:
        """The publisher ended the stream: flush the decoder, close every track."""
        self._frames(stream, stream.decoder.finish(), acc)
        closed, ended = stream.state.finish()
        acc.windows += [(stream.state, w) for w in closed]
        acc.after += ended
        del self._streams[stream.state.stream_id]
        self.report.streams_ended += 1
        self.sink.status(stream.state.stream_id, state="ended", ended=time.time())

    def _dead_letter(self, record, stream_id: str, reason: str, acc: "_Batch") -> None:
        self.report.dead_letters += 1
        producer = self._dlq_producer()
        headers = list(record.headers or []) + [("fs-error", reason.encode())]
        producer.send(self.settings.dlq_topic, key=record.key, value=record.value, headers=headers)
        producer.flush(timeout=30)
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.chunks.append((record.offset, None))
        self.sink.status(stream_id, last_error=reason)
        acc.before.append(events.stream_error(
            stream_id=stream_id, message=reason,
            time_s=stream.state.last_time_s if stream else 0.0,
            seq=record.offset, profile=PROFILE, time_epoch=time.time(), fatal=False))

    def _dlq_producer(self):
        if self._dlq is None:
            from kafka import KafkaProducer

            self._dlq = KafkaProducer(**self.settings.kafka_client_options(), acks="all",
                                      max_request_size=self.settings.max_message_bytes + 65_536)
        return self._dlq


def _rebalance_listener(worker: Worker):
    from kafka import ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            worker._partitions_revoked(revoked)

        def on_partitions_assigned(self, assigned) -> None:
            pass

    return Listener()


def _make_consumer(settings: Settings):
    from kafka import KafkaConsumer

    return KafkaConsumer(**settings.kafka_client_options(),
                         group_id=settings.consumer_group, enable_auto_commit=False,
                         auto_offset_reset="earliest",
                         max_partition_fetch_bytes=settings.max_message_bytes * 4,
                         fetch_max_bytes=settings.max_message_bytes * 16)
