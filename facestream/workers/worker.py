"""``facestream worker``: Kafka in, the pipeline's stages, Redis out.

One process consumes the video topic in the consumer group; Kafka gives it some partitions,
hence some streams, each decoded by its own :class:`ChunkDecoder` and tracked by its own
:class:`StreamState`.  Every poll's closed windows, from all streams, go through the
:class:`WindowAnalyzer` together (one encoder batch, one LLM batch).

Delivery is at-least-once, with the same event ids on redelivery:

1. a poll's events are written to Redis (retried with backoff while Redis is down; nothing
   is committed meanwhile);
2. then each touched stream's state is checkpointed to Redis with the offset after its last
   processed message (:mod:`facestream.workers.checkpoint`);
3. then the offsets are committed to Kafka.

A worker that crashes between 1 and 3 leaves events that its successor writes again, with
the same ids, because the successor resumes from the checkpoint (or, without one, from the
committed offset with fresh state).  Messages that are not chunks, and chunks that do not
decode, go to the dead-letter topic with the reason in header ``fs-error``; an error event
is written and the worker goes on with its other streams.

The two stages that cost most per frame, decoding a chunk and finding its faces, run on
``worker_threads`` threads (:class:`FaceStage`); everything else (offsets, stream states,
dead letters, events, checkpoints, commits) stays on the consuming thread, in message order,
so a threaded worker writes exactly the events, ids and checkpoints a single-threaded one does.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import av

from facestream import events
from facestream.config import Settings
from facestream.errors import InputError
from facestream.ingest.chunks import ChunkError, EndOfStream, PartAssembler, parse_message
from facestream.ingest.sources import stream_id_from
from facestream.workers import checkpoint
from facestream.workers.decode import ChunkDecoder, DecodedFrame
from facestream.workers.faces import FaceAnalyzer, FaceDetections
from facestream.workers.metrics import WorkerMetrics, serve
from facestream.workers.pipeline import StreamState
from facestream.workers.redis_sink import RedisSink, SinkUnavailable

log = logging.getLogger(__name__)

ENDED_CHECKPOINT_TTL_S = 7 * 24 * 3600


@dataclass
class _Stream:
    """A stream this worker owns.  Pickled whole into its checkpoint."""

    decoder: ChunkDecoder
    state: StreamState
    next_offset: int = 0                 # after the last message of this stream processed
    part_offset: int | None = None       # first part of a chunk still being reassembled
    dropped: int = 0                     # live chunks dropped because the worker was late
    ended_before: bool = False           # the stream had ended: only chunk 0 restarts it

    @property
    def resume_offset(self) -> int:
        return self.part_offset if self.part_offset is not None else self.next_offset


@dataclass
class _Batch:
    """What one poll produced, in delivery order: events before the windows' analysis
    (errors, track starts), the windows, and events after (track ends)."""

    before: list = field(default_factory=list)
    windows: list = field(default_factory=list)      # (StreamState, FaceWindow)
    after: list = field(default_factory=list)
    touched: dict = field(default_factory=dict)      # stream id -> TopicPartition
    ended: dict = field(default_factory=dict)        # stream id -> offset after its end

    def extend(self, other: "_Batch") -> None:
        """Append what ``other`` (a later message's share) produced."""
        self.before += other.before
        self.windows += other.windows
        self.after += other.after
        self.touched.update(other.touched)
        self.ended.update(other.ended)


@dataclass(frozen=True, eq=False)
class _Seen:
    """One picked frame and its faces."""

    frame: DecodedFrame
    faces: FaceDetections
    seconds: float                 # wall seconds the face stage took


@dataclass(frozen=True, eq=False)
class _Decoded:
    """A chunk's picked frames, each with its faces still being found."""

    frames: list                   # Future[_Seen], in presentation order
    seconds: float                 # wall seconds decoding took


@dataclass(frozen=True, eq=False)
class _InFlight:
    """A chunk admitted on the consuming thread and handed to the face stage."""

    stream: _Stream
    chunk: Any
    record: Any
    decoded: Future                # Future[_Decoded]
    acc: _Batch                    # its message's share of the round


class FaceStage:
    """Decodes chunks and finds the faces of their frames on ``threads`` threads.

    A chunk is decoded on one thread (its stream's :class:`ChunkDecoder` picks frames in
    order), then each of its frames is a task of its own, so even one stream's chunk uses
    every thread.  Each task checks a :class:`FaceAnalyzer` out of a fixed set, one per
    thread (MediaPipe graphs are not thread-safe): ``faces`` and ``threads - 1`` more made
    here from ``settings``.  With ``threads=1`` no thread is started and :meth:`submit` does
    the work before it returns.  :attr:`lookahead` is how many chunks a caller should keep
    submitted ahead of the one it waits for: enough to keep the threads busy, few enough
    not to hold many chunks' frames (2 per thread beyond the first; 0 with one thread).

    Not thread-safe: one caller.  The caller must not submit a decoder's next chunk before
    the future of its previous one and of that chunk's frames are done.
    """

    def __init__(self, faces: Callable[[Any], FaceDetections], settings: Settings, *,
                 threads: int) -> None:
        self.lookahead = 2 * (threads - 1)
        self._own = [FaceAnalyzer.from_settings(settings) for _ in range(threads - 1)]
        self._analyzers: queue.SimpleQueue = queue.SimpleQueue()
        for analyzer in [faces, *self._own]:
            self._analyzers.put(analyzer)
        self._pool = (ThreadPoolExecutor(threads, thread_name_prefix="facestream-faces")
                      if threads > 1 else None)

    def submit(self, decoder: ChunkDecoder, chunk) -> Future:
        """Future of the chunk's :class:`_Decoded`; it raises what ``decoder.decode`` raised
        (undecodable data).  The frames' futures raise what the face stage raised."""
        return self._run(self._decode, decoder, chunk)

    def close(self) -> None:
        """Wait for the tasks under way, drop the rest, close the analyzers made here."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for analyzer in self._own:
            analyzer.close()

    def _run(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def _decode(self, decoder: ChunkDecoder, chunk) -> _Decoded:
        start = time.perf_counter()
        frames = decoder.decode(chunk)
        seconds = time.perf_counter() - start
        return _Decoded([self._run(self._faces, frame) for frame in frames], seconds)

    def _faces(self, frame: DecodedFrame) -> _Seen:
        analyzer = self._analyzers.get()
        try:
            start = time.perf_counter()
            faces = analyzer(frame.image)
            return _Seen(frame, faces, time.perf_counter() - start)
        finally:
            self._analyzers.put(analyzer)


@dataclass
class WorkerReport:
    messages: int = 0
    chunks: int = 0
    frames: int = 0
    events: int = 0
    dead_letters: int = 0
    streams_ended: int = 0
    resumed: int = 0
    skipped: int = 0                      # messages already covered by a checkpoint
    dropped_chunks: int = 0               # live chunks dropped: the worker fell behind


class Worker:
    """Blocking :meth:`run` loop; stop it with :meth:`stop` (from a signal or another thread)."""

    def __init__(self, settings: Settings, *, models=None, consumer=None, sink=None,
                 dlq_producer=None) -> None:
        from facestream.workers.embedded import Models

        self.settings = settings
        self.models = models or Models.load(settings)
        self.consumer = consumer or _make_consumer(settings)
        self.sink = sink or RedisSink(settings)
        self._dlq = dlq_producer
        self._streams: dict[str, _Stream] = {}
        self._owner: dict[str, Any] = {}          # stream id -> TopicPartition
        self._ended: set[str] = set()              # streams ended while this worker ran
        self._consumed: dict[Any, int] = {}        # TopicPartition -> offset after the last processed
        self._assembler = PartAssembler()
        self._stop = threading.Event()
        self.report = WorkerReport()
        self.metrics = WorkerMetrics()
        self._lag_checked = 0.0
        self._face_stage = FaceStage(self.models.faces, settings,
                                     threads=worker_threads(settings))
        self.consumer.subscribe([settings.video_topic], listener=_rebalance_listener(self))

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, until: Callable[["Worker"], bool] | None = None) -> WorkerReport:
        """Consume until :meth:`stop` is called or ``until(self)`` is true.  On stop, the
        round in progress is finished, delivered and committed, then the group is left."""
        server = serve(self.metrics, self.settings.metrics_port) if self.settings.metrics_port else None
        try:
            while not self._stop.is_set() and not (until and until(self)):
                batch = self.consumer.poll(timeout_ms=500, max_records=32)
                self.metrics.ready = True           # joined the group
                if batch:
                    self._process(batch)
                self._observe_lag()
        finally:
            self._face_stage.close()
            self.consumer.close(autocommit=False)
            if server is not None:
                server.shutdown()
                server.server_close()
        return self.report

    def _observe_lag(self, every_s: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._lag_checked < every_s:
            return
        self._lag_checked = now
        from kafka.errors import KafkaError

        assignment = list(self.consumer.assignment())
        if assignment:
            try:
                ends = self.consumer.end_offsets(assignment)
                for tp in assignment:
                    self.metrics.lag.labels(f"{tp.topic}/{tp.partition}").set(
                        max(0, ends[tp] - self.consumer.position(tp)))
            except KafkaError as exc:          # the broker is away; measure next time
                log.warning("consumer lag not measured: %s", exc)
        self.metrics.streams.set(len(self._streams))
        self.metrics.open_windows.set(sum(s.state.windower.open_count
                                          for s in self._streams.values()))

    def _partitions_revoked(self, revoked) -> None:
        """Another worker takes these streams over from their checkpoints: forget them."""
        revoked = set(revoked)
        for tp in revoked:
            self._consumed.pop(tp, None)
        for stream_id in [s for s, tp in self._owner.items() if tp in revoked]:
            self._streams.pop(stream_id, None)
            del self._owner[stream_id]

    # -- one poll ------------------------------------------------------------------------

    def _process(self, batch: dict) -> None:
        """A poll's messages in rounds: one message from each partition per round, so every
        round batches the models across streams and its events go out a chunk after its
        video came in, not after the whole poll."""
        queues = [(tp, list(records)) for tp, records in batch.items()]
        for step in range(max(len(records) for _, records in queues)):
            acc = self._round([(tp, records[step]) for tp, records in queues
                               if step < len(records)])
            self.metrics.windows.inc(len(acc.windows))
            if acc.windows:
                self.metrics.batch_windows.observe(len(acc.windows))
            with self.metrics.stage_seconds.labels("analyze").time():
                analysis = self.models.analyzer.analyze(acc.windows)
            # Per track: started, then its windows, then ended (a track ends in the round
            # that closes its last window).
            self._deliver(acc.before + analysis + acc.after)
            self._checkpoint(acc)
            self._commit()
            if self._stop.is_set():
                return

    def _round(self, records: list) -> _Batch:
        """One message per partition.  Each is admitted here in order and its chunk handed
        to the face stage; the chunks' frames are observed here, oldest chunk first, while
        later ones are in the face stage, each into its own message's share; the shares are
        joined in message order.  The result is what processing the messages one after the
        other would give (with one thread, it is how they are processed)."""
        shares: list[_Batch] = []
        in_flight: dict[str, _InFlight] = {}        # stream id -> its chunk in the face stage
        for tp, record in records:
            self.report.messages += 1
            self.metrics.messages.inc()
            shares.append(_Batch())
            job = self._admit(tp, record, shares[-1], in_flight)
            if job is not None:
                in_flight[job.stream.state.stream_id] = job
            if len(in_flight) > self._face_stage.lookahead:
                self._settle(in_flight, next(iter(in_flight)))      # the oldest
        while in_flight:
            self._settle(in_flight, next(iter(in_flight)))
        acc = _Batch()
        for share in shares:
            acc.extend(share)
        return acc

    def _settle(self, in_flight: dict[str, _InFlight], stream_id: str) -> None:
        """Observe the stream's chunk still in the face stage, if any, before its next
        message is looked at (two messages of one stream in one round: rare, but possible)."""
        job = in_flight.pop(stream_id, None)
        if job is not None:
            self._observe(job)

    def _admit(self, tp, record, acc: _Batch,
               in_flight: dict[str, _InFlight]) -> _InFlight | None:
        """Everything about a message but decoding and faces; the chunk to decode, if any."""
        self._consumed[tp] = record.offset + 1
        key = (record.key or b"").decode(errors="replace")
        try:
            message = parse_message(record.headers, record.value)
        except ChunkError as exc:
            stream_id = stream_id_from(key)
            self._settle(in_flight, stream_id)
            self._dead_letter(record, stream_id, f"not a chunk: {exc}", acc)
            return None
        self._settle(in_flight, message.stream_id)
        stream = self._stream(message.stream_id, tp)
        if record.offset < stream.next_offset:
            self.report.skipped += 1           # already in the checkpoint's state
            return None
        stream.next_offset = record.offset + 1
        acc.touched[message.stream_id] = tp
        if isinstance(message, EndOfStream):
            self._end(stream, acc)
            return None
        chunk = self._assembler.add(message)
        if chunk is None:                       # a part: wait for the rest
            if stream.part_offset is None:
                stream.part_offset = record.offset
            return None
        stream.part_offset = None
        if stream.ended_before:
            if chunk.seq != 0:
                self._dead_letter(record, chunk.stream_id,
                                  f"stream {chunk.stream_id} has ended (finished or removed "
                                  f"from the registry): chunk {chunk.seq} refused; a restarted "
                                  "stream starts again at chunk 0", acc)
                return None
            stream.ended_before = False
        if chunk.live and self._behind(record):
            self._drop(stream, chunk)
            return None
        return _InFlight(stream, chunk, record, self._face_stage.submit(stream.decoder, chunk),
                         acc)

    def _observe(self, job: _InFlight) -> None:
        """Wait for a chunk's frames and faces (blocking) and track them."""
        stream, acc = job.stream, job.acc
        try:
            decoded = job.decoded.result()
        except (av.error.FFmpegError, ChunkError, InputError) as exc:
            self._dead_letter(job.record, job.chunk.stream_id,
                              f"chunk {job.chunk.seq} does not decode: {exc}", acc)
            return
        self.metrics.stage_seconds.labels("decode").observe(decoded.seconds)
        self.report.chunks += 1
        self.metrics.chunks.inc()
        for future in decoded.frames:
            seen = future.result()
            self.metrics.stage_seconds.labels("faces").observe(seen.seconds)
            self.metrics.frames.inc()
            self.metrics.faces.inc(len(seen.faces))
            started, closed, ended = stream.state.observe(seen.frame, seen.faces)
            acc.before += started
            acc.windows += [(stream.state, w) for w in closed]
            acc.after += ended
            self.report.frames += 1

    def _behind(self, record) -> bool:
        """True if the message reached us more than live_max_lag_s after it was produced."""
        produced = (record.timestamp or 0) / 1000
        return produced > 0 and time.time() - produced > self.settings.live_max_lag_s

    def _drop(self, stream: _Stream, chunk) -> None:
        """Skip a live chunk the worker is too late for: the oldest video goes first, so
        the stream catches up with the camera instead of lagging more and more."""
        stamps = [p.pts for p in chunk.packets() if p.pts is not None]
        seconds = float((max(stamps) - chunk.first_pts) * chunk.time_base) if stamps else 0.0
        stream.dropped += 1
        self.report.dropped_chunks += 1
        self.metrics.dropped_chunks.inc()
        self.metrics.dropped_seconds.inc(max(seconds, 0.0))
        self.sink.status(stream.state.stream_id, dropped_chunks=stream.dropped)

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        """Write to Redis; while it is down, retry with backoff (nothing is committed)."""
        if not batch:
            return
        with self.metrics.stage_seconds.labels("redis").time():
            self.report.events += self._until_redis_answers(lambda: self.sink.write(batch))
        for event in batch:
            self.metrics.events.labels(event["type"]).inc()

    def _until_redis_answers(self, call: Callable[[], Any]) -> Any:
        """``call()``, retried with capped exponential backoff while Redis is unavailable.
        Only a stop request ends the wait (re-raising the last error)."""
        for attempt in itertools.count():
            try:
                result = call()
                self.metrics.redis_ok = True
                return result
            except SinkUnavailable as exc:
                self.metrics.redis_ok = False
                self.metrics.redis_retries.inc()
                delay = min(8.0, 0.25 * 2 ** attempt)
                log.warning("%s; retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise

    def _checkpoint(self, acc: _Batch) -> None:
        saves: dict[str, tuple[bytes, int | None]] = {}
        for stream_id in acc.touched:
            stream = self._streams.get(stream_id)
            if stream is not None:
                blob = checkpoint.dumps(checkpoint.Checkpoint(
                    checkpoint.VERSION, stream_id, stream.resume_offset, stream))
                saves[self._checkpoint_key(stream_id)] = (blob, None)
        for stream_id, offset in acc.ended.items():
            # An ended stream keeps a marker for a while, so a worker that replays the
            # messages before its end (after a crash) does not analyse them again.
            blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, stream_id,
                                                          offset, None))
            saves[self._checkpoint_key(stream_id)] = (blob, ENDED_CHECKPOINT_TTL_S)
        self._until_redis_answers(lambda: self.sink.checkpoints(saves))

    def _commit(self) -> None:
        """Commit each partition up to the messages processed, but not past what its
        streams' checkpoints cover (a chunk still being reassembled from parts)."""
        from kafka import OffsetAndMetadata

        positions = {}
        for tp in self.consumer.assignment():
            if tp not in self._consumed:
                continue
            offset = self._consumed[tp]
            for stream_id, owner in self._owner.items():
                if owner == tp and stream_id in self._streams:
                    offset = min(offset, self._streams[stream_id].resume_offset)
            positions[tp] = OffsetAndMetadata(offset, "", -1)
        if not positions:
            return
        from kafka.errors import KafkaError

        try:
            self.consumer.commit(positions)
        except KafkaError as exc:
            # The broker is away or the group rebalanced under us.  Nothing is lost: the
            # checkpoints just written cover these offsets, and the next commit catches up.
            log.warning("offset commit skipped: %s", exc)

    # -- streams ---------------------------------------------------------------------------

    def _checkpoint_key(self, stream_id: str) -> str:
        # Offsets belong to a topic: the same stream id on another topic is another stream.
        return f"{self.settings.checkpoint_prefix}:{self.settings.video_topic}:{stream_id}"

    def _stream(self, stream_id: str, tp) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            key = self._checkpoint_key(stream_id)
            saved = self._until_redis_answers(lambda: self.sink.load_checkpoint(key))
            restored = checkpoint.loads(saved) if saved else None
            if restored is not None and restored.stream is not None:
                stream = restored.stream
                self.report.resumed += 1
            else:
                stream = _Stream(ChunkDecoder(stream_id, fps=self.settings.fps),
                                 StreamState(stream_id, self.settings))
            if restored is not None:
                stream.next_offset = restored.offset
                stream.part_offset = None
            stream.ended_before = stream_id in self._ended or (
                restored is not None and restored.stream is None)
            self._streams[stream_id] = stream
            self._owner[stream_id] = tp
            self.sink.status(stream_id, state="running", worker=_worker_name())
        return stream

    def _end(self, stream: _Stream, acc: _Batch) -> None:
        """The publisher ended the stream: close every track."""
        closed, ended = stream.state.finish()
        acc.windows += [(stream.state, w) for w in closed]
        acc.after += ended
        acc.ended[stream.state.stream_id] = stream.next_offset
        del self._streams[stream.state.stream_id]
        del self._owner[stream.state.stream_id]
        self._ended.add(stream.state.stream_id)
        self.report.streams_ended += 1
        self.sink.status(stream.state.stream_id, state="ended")

    def _dead_letter(self, record, stream_id: str, reason: str, acc: _Batch) -> None:
        self.report.dead_letters += 1
        self.metrics.dead_letters.inc()
        producer = self._dlq_producer()
        headers = list(record.headers or []) + [("fs-error", reason.encode())]
        producer.send(self.settings.dlq_topic, key=record.key, value=record.value, headers=headers)
        producer.flush(timeout=30)
        stream = self._streams.get(stream_id)
        self.sink.status(stream_id, last_error=reason)
        acc.before.append(events.stream_error(
            stream_id=stream_id, message=reason,
            time_s=stream.state.last_time_s if stream else 0.0,
            seq=record.offset, profile=self.settings.profile, time_epoch=time.time(), fatal=False))

    def _dlq_producer(self):
        if self._dlq is None:
            from kafka import KafkaProducer

            self._dlq = KafkaProducer(**self.settings.kafka_client_options(), acks="all",
                                      max_request_size=self.settings.max_message_bytes + 65_536)
        return self._dlq


def worker_threads(settings: Settings) -> int:
    """Threads of the worker's face stage: the setting, or min(2, usable CPU cores)."""
    return settings.worker_threads or min(2, len(os.sched_getaffinity(0)))


def _worker_name() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


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
