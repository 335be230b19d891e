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
committed offset with fresh state).  Descriptions (follow mode) are never waited for: each
goes out in the first round (or idle poll) after it is written, and one still being written
is part of its stream's checkpointed state, which a successor asks for again.  Messages that are not chunks, and chunks that do not
decode, go to the dead-letter topic with the reason in header ``fs-error``; an error event
is written and the worker goes on with its other streams.

The two stages that cost most per frame, decoding a chunk and finding its faces, run on
``worker_threads`` threads (:class:`FaceStage`); everything else (offsets, stream states,
dead letters, events, checkpoints, commits) stays on the consuming thread, in message order,
so a threaded worker writes exactly the events, ids and checkpoints a single-threaded one does.

A round never waits long for a slow stream: its chunks are observed in the order they come
out of the face stage (a stream's own in order), and once the round has run
``round_max_s`` the events of the streams ready so far are delivered while a stream whose
chunk is still in the face stage carries it over, with its next messages, to a later round.
Such a stream is not checkpointed, and its partition's commit stays at or before its last
checkpoint, until the chunk's events are delivered; each stream's events, ids and order are
those of an unbounded round, only the rounds they go out in differ.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import av
import numpy as np

from facestream import events
from facestream.config import Settings
from facestream.errors import AssetError, FacestreamError, bounded
from facestream.ingest.broker import connect
from facestream.ingest.chunks import (Chunk, ChunkError, EndOfStream, MediaClock, PartAssembler,
                                      parse_message)
from facestream.ingest.sources import is_stream_id
from facestream.ingest.supervision import RateWindow, chunk_topic
from facestream.sinks.annotate import draw
from facestream.sinks.fanout import build_sink
from facestream.sinks.kafka_topic import EventsTopicUnavailable
from facestream.sinks.redis_stream import SinkUnavailable
from facestream.types import DecodedFrame, FaceDetections
from facestream.vision.decode import ChunkDecoder, FrameSampler
from facestream.vision.faces import FaceAnalyzer, FaceMemory, face_memory
from facestream.workers import checkpoint
from facestream.workers.dead_letters import BrokerUnavailable, DeadLetterSender, one_line
from facestream.workers.embedded import _caption
from facestream.workers.metrics import WorkerMetrics, serve
from facestream.workers.ordering import ChunkOrder
from facestream.workers.pipeline import StreamState

log = logging.getLogger(__name__)

ENDED_CHECKPOINT_TTL_S = 7 * 24 * 3600
# Failures of the worker's own environment: they pause the worker (retried) or stop it.
# Anything else raised while processing a message is that message's fault: dead letter.
_ENVIRONMENT = (SinkUnavailable, BrokerUnavailable, AssetError)


@dataclass
class _Stream:
    """A stream this worker owns.  Pickled whole into its checkpoint, but for ``clean``.

    While its decoder is in the middle of a GOP (a live source's unfinished chunks), the
    stream cannot be checkpointed as it is: ``clean`` is its last checkpoint taken between
    GOPs (offset, blob; blob None if it has none yet), which is saved instead and which the
    partition's commit does not pass, so a successor replays the GOP from its start."""

    decoder: ChunkDecoder
    state: StreamState
    next_offset: int = 0                 # after the last message of this stream processed
    dropped: int = 0                     # live chunks dropped because the worker was late
    ended_before: bool = False           # the stream had ended: only chunk 0 restarts it
    order: ChunkOrder = field(default_factory=ChunkOrder)
    clean: tuple[int, bytes | None] | None = None
    faces: FaceMemory | None = None      # the face stage's memory of its last frame (not
                                         # checkpointed)

    def __getstate__(self) -> dict:
        # A checkpoint is taken between GOPs, where the face stage detects afresh: its
        # memory is not needed there (and the checkpoint's format stays as it was).
        return {**self.__dict__, "clean": None, "faces": None}


@dataclass
class _Batch:
    """What one poll produced, in delivery order: events before the windows' analysis
    (errors, track starts), the windows, and events after (track ends)."""

    before: list = field(default_factory=list)
    windows: list = field(default_factory=list)      # (StreamState, FaceWindow)
    after: list = field(default_factory=list)
    touched: dict = field(default_factory=dict)      # stream id -> TopicPartition
    ended: dict = field(default_factory=dict)        # stream id -> offset after its end
    status: dict = field(default_factory=dict)       # stream id -> status fields to write

    def extend(self, other: "_Batch") -> None:
        """Append what ``other`` (a later message's share) produced."""
        self.before += other.before
        self.windows += other.windows
        self.after += other.after
        self.touched.update(other.touched)
        self.ended.update(other.ended)
        for stream_id, fields in other.status.items():
            self.set_status(stream_id, **fields)

    def set_status(self, stream_id: str, **fields: Any) -> None:
        self.status.setdefault(stream_id, {}).update(fields)


@dataclass(frozen=True, eq=False)
class _Seen:
    """One picked frame and its faces."""

    frame: DecodedFrame
    faces: FaceDetections
    seconds: float                 # wall seconds the face stage took
    detected: bool = True          # the detector ran (else its faces were followed)


@dataclass(frozen=True, eq=False)
class _Decoded:
    """A chunk's picked frames, each with its faces still being found."""

    frames: list                   # Future[_Seen], in presentation order
    seconds: float                 # wall seconds decoding took
    media_s: float                 # the stream's media clock after it (ChunkDecoder.clock_s)


@dataclass(eq=False)
class _InFlight:
    """A chunk admitted on the consuming thread and handed to the face stage."""

    stream: _Stream
    chunk: Any
    record: Any
    decoded: Future                # Future[_Decoded]
    acc: _Batch                    # its message's share of the round
    settled: bool = False          # observed into ``acc``
    failure: str | None = None     # why it was not analysed (dead-lettered when joined)

    def pending(self) -> list[Future]:
        """The futures observing it would wait on: its decoding, else its frames not done
        (none once it failed)."""
        if not self.decoded.done():
            return [self.decoded]
        if self.decoded.exception() is not None:
            return []
        return [f for f in self.decoded.result().frames if not f.done()]

    def ready(self) -> bool:
        """Whether observing it would not block."""
        return not self.pending()


class FaceStage:
    """Decodes chunks and finds the faces of their frames on ``threads`` threads.

    A chunk is decoded on one thread (its stream's :class:`ChunkDecoder` picks frames in
    order), then each of its frames is a task of its own, so even one stream's chunk uses
    every thread — unless the chunk comes with its stream's :class:`FaceMemory`: then each
    frame follows the faces of the one before (``detect_interval_s``), so they are found in
    order, one task for the chunk, and the threads share out the streams.  Each task checks
    a :class:`FaceAnalyzer` out of a fixed set, one per thread (MediaPipe graphs are not
    thread-safe): ``faces`` and ``threads - 1`` more made here from ``settings``.  With
    ``threads=1`` no thread is started and :meth:`submit` does the work before it returns.
    :attr:`lookahead` is how many chunks a caller should keep submitted ahead of the one it
    waits for: enough to keep the threads busy, few enough not to hold many chunks' frames
    (2 per thread beyond the first; 0 with one thread).

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

    def submit(self, decoder: ChunkDecoder, chunk, memory: FaceMemory | None = None) -> Future:
        """Future of the chunk's :class:`_Decoded`; it raises what ``decoder.decode`` raised
        (undecodable data).  The frames' futures raise what the face stage raised.
        ``memory``: the stream's, to follow its faces from frame to frame (the caller's
        contract above keeps a stream's chunks in order)."""
        return self._run(self._decode, decoder, chunk, memory)

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

    def _decode(self, decoder: ChunkDecoder, chunk, memory: FaceMemory | None) -> _Decoded:
        start = time.perf_counter()
        frames = decoder.decode(chunk)
        seconds = time.perf_counter() - start
        if memory is None:
            seen = [self._run(self._faces, frame) for frame in frames]
        else:
            seen = [Future() for _ in frames]
            self._run(self._follow, frames, seen, memory)
        return _Decoded(seen, seconds, decoder.clock_s)

    def _follow(self, frames: list[DecodedFrame], seen: list[Future],
                memory: FaceMemory) -> None:
        """The faces of one chunk's frames in order, each following the one before; a
        frame that fails makes the next one detect afresh."""
        for frame, done in zip(frames, seen):
            try:
                done.set_result(self._faces(frame, memory))
            except Exception as exc:
                memory.forget()
                done.set_exception(exc)

    def _faces(self, frame: DecodedFrame, memory: FaceMemory | None = None) -> _Seen:
        analyzer = self._analyzers.get()
        try:
            start = time.perf_counter()
            if memory is None:
                return _Seen(frame, analyzer(frame.image), time.perf_counter() - start)
            detections = memory.detections
            faces = analyzer.follow(frame, memory)
            return _Seen(frame, faces, time.perf_counter() - start,
                         memory.detections > detections)
        finally:
            self._analyzers.put(analyzer)


@dataclass
class WorkerReport:
    messages: int = 0
    chunks: int = 0
    frames: int = 0
    events: int = 0
    dead_letters: int = 0
    out_of_order: int = 0                 # chunks late, duplicated, missing or mistimed
    streams_ended: int = 0
    resumed: int = 0
    skipped: int = 0                      # messages already covered by a checkpoint
    dropped_chunks: int = 0               # live chunks dropped: the worker fell behind
    media_clocks: int = 0                 # MediaClock markers applied (a live source was down)


class Worker:
    """Blocking :meth:`run` loop; stop it with :meth:`stop` (from a signal or another thread).

    Every message from the wire is either processed or dead-lettered with a one-line reason
    and a ``facestream.stream.error`` event (docs/RELIABILITY.md); nothing a message holds
    stops the worker.  Only its environment can pause it (Redis or the broker away: retried
    with backoff, ``/readyz`` says so) or stop it (model files).  ``clock`` is the wall
    clock (``time.time``) that lateness and orphaned parts are judged by.
    """

    def __init__(self, settings: Settings, *, models=None, consumer=None, sink=None,
                 dlq_producer=None, clock: Callable[[], float] = time.time) -> None:
        from facestream.workers.compose import Models

        self.settings = settings
        self._owns_models = models is None
        self.models = models or Models.load(settings)
        self.consumer = consumer or _make_consumer(settings)
        # Redis, plus the events topic and webhooks when their settings are set.
        self.sink = sink or build_sink(settings)
        self._dead_letters = DeadLetterSender(settings, dlq_producer)
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._owner: dict[str, Any] = {}          # stream id -> TopicPartition
        self._ended: set[str] = set()              # streams ended while this worker ran
        self._consumed: dict[Any, int] = {}        # TopicPartition -> offset after the last processed
        self._committed: dict[Any, int] = {}       # TopicPartition -> offset last committed
        self._revoked: set = set()                 # in a rebalance: partitions given up
        self._assembler = PartAssembler()
        self._stop = threading.Event()
        self.report = WorkerReport()
        self.metrics = WorkerMetrics()
        self.metrics.watch_language(self.models.analyzer)
        self._health_checked = -float("inf")
        self._face_stage = FaceStage(self.models.faces, settings,
                                     threads=worker_threads(settings))
        # Chunks of streams registered for this worker's profile (compact: the video topic).
        self.topic = chunk_topic(settings.video_topic, settings.profile)
        self._settings_by_fps: dict[float, Settings] = {}
        self._rates: dict[str, RateWindow] = {}          # stream id -> its events per second
        self._status_at: dict[str, float] = {}           # stream id -> live fields written
        self._captions: dict[str, dict[str, str]] = {}   # stream id -> track id -> label
        self._snapshot_at: dict[str, float] = {}         # stream id -> last snapshot taken
        self._snapshots: dict[str, tuple] = {}           # stream id -> (image, boxes) due
        # Rounds: chunks in the face stage (stream id -> its one chunk there), the messages'
        # shares not delivered yet (message order, each with its chunk, if any), and the
        # messages of a stream with a chunk still there (held back, in order).
        self._in_flight: dict[str, _InFlight] = {}
        self._shares: list[tuple[_Batch, _InFlight | None]] = []
        self._held: dict[str, list] = {}                 # stream id -> [(tp, record)]
        self.consumer.subscribe([self.topic], listener=_rebalance_listener(self))

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, until: Callable[["Worker"], bool] | None = None) -> WorkerReport:
        """Consume until :meth:`stop` is called or ``until(self)`` is true.  On stop, the
        round in progress is finished, delivered and committed, and so are the chunks and
        messages rounds carried over, the descriptions being written are waited for and
        delivered, then the group is left."""
        server = serve(self.metrics, self.settings.metrics_port) if self.settings.metrics_port else None
        try:
            while not self._stop.is_set() and not (until and until(self)):
                carried = self._carried()
                batch = self.consumer.poll(timeout_ms=0 if carried else 500, max_records=32)
                self.metrics.ready = True           # joined the group
                if batch:
                    self._process(batch)
                elif carried:
                    self._rounds([])                # what came out of the face stage
                else:
                    self._flush_descriptions()
                self._expire_parts()
                self._observe_health()
            self._drain()
            # The descriptions still being written are delivered before the group is left
            # (a worker killed instead leaves them to its successors: see _descriptions).
            self._flush_descriptions(wait=True)
        finally:
            self._face_stage.close()
            if self._owns_models:
                self.models.close()
            self._dead_letters.close()
            close_sink = getattr(self.sink, "close", None)
            if close_sink is not None:
                close_sink()
            self.consumer.close(autocommit=False)
            if server is not None:
                server.shutdown()
                server.server_close()
        return self.report

    def _observe_health(self, every_s: float = 2.0) -> None:
        """Every ``every_s``: whether Redis and the broker answer (for ``/readyz``, busy or
        idle), the consumer lag behind the last commit, and the stream gauges."""
        now = time.monotonic()
        if now - self._health_checked < every_s:
            return
        self._health_checked = now
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        self.metrics.redis_ok = self.sink.ping()
        try:
            assignment = list(self.consumer.assignment())
            probe = assignment or [TopicPartition(self.topic, p) for p in
                                   self.consumer.partitions_for_topic(self.topic) or ()]
            ends = self.consumer.end_offsets(probe, timeout_ms=2000) if probe else {}
            self.metrics.broker_ok = True
            for tp in assignment:
                done = self._committed.get(tp)
                done = self.consumer.position(tp) if done is None else done
                self.metrics.lag.labels(f"{tp.topic}/{tp.partition}").set(max(0, ends[tp] - done))
        except KafkaError as exc:          # the broker is away; measure next time
            if self.metrics.broker_ok:
                log.warning("broker not reachable: %s", bounded(str(exc), 200))
            self.metrics.broker_ok = False
        self.metrics.streams.set(len(self._streams))
        self.metrics.open_windows.set(sum(s.state.windower.open_count
                                          for s in self._streams.values()))

    def _partitions_revoked(self, revoked) -> None:
        """Called inside ``poll`` when the group rebalances: the partitions may come back
        (:meth:`_partitions_assigned` decides)."""
        self._revoked |= set(revoked)

    def _partitions_assigned(self, assigned) -> None:
        """Forget the streams of the partitions revoked and not assigned again: another
        worker takes them over from their checkpoints.  Partitions that stay keep their
        streams as they are, since the consumer keeps their positions too (it does not
        read them again from the committed offset)."""
        self.metrics.rebalances.inc()
        self.metrics.partitions.set(len(assigned))
        lost, self._revoked = self._revoked - set(assigned), set()
        for tp in lost:
            self._consumed.pop(tp, None)
            self._committed.pop(tp, None)
        gone = {s for s, tp in self._owner.items() if tp in lost}
        for stream_id in gone:
            self._streams.pop(stream_id, None)
            del self._owner[stream_id]
            self._in_flight.pop(stream_id, None)     # left behind by a rebalance in a poll
        self._held = {s: [(tp, r) for tp, r in held if tp not in lost]
                      for s, held in self._held.items()}
        self._held = {s: held for s, held in self._held.items() if held}
        self._shares = [(share, job) for share, job in self._shares
                        if job is None or job.stream.state.stream_id not in gone]
        self._assembler.forget(gone)

    def _rebalance_pending(self) -> bool:
        """True once the group coordinator asked this member to rejoin (a worker joined,
        left or died).  kafka-python learns it from a heartbeat but only acts on it in the
        next poll, so a worker that finishes a long poll first keeps every stream of the
        group waiting; it is read from the consumer's coordinator (kafka-python 3.x)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        need_rejoin = getattr(coordinator, "need_rejoin", None)
        try:
            return bool(need_rejoin()) if need_rejoin else False
        except Exception:              # another kafka-python: poll as usual
            return False

    # -- one poll ------------------------------------------------------------------------

    def _process(self, batch: dict) -> None:
        """A poll's messages in rounds: one message from each partition per round, so every
        round batches the models across streams and its events go out a chunk after its
        video came in, not after the whole poll.  A rebalance (or a stop) ends the poll
        after the round in progress; the messages not processed are read again (on a
        rebalance, the chunks carried over are finished first: their streams may move)."""
        queues = [(tp, list(records)) for tp, records in batch.items()]
        for step in range(max(len(records) for _, records in queues)):
            self._rounds([(tp, records[step]) for tp, records in queues
                          if step < len(records)])
            if self._stop.is_set():
                return
            if self._rebalance_pending():
                for tp, records in queues:
                    if step + 1 < len(records) and tp in self.consumer.assignment():
                        self.consumer.seek(tp, records[step + 1].offset)
                self._drain()
                return

    def _rounds(self, records: list) -> None:
        """One round: admit ``records``, deliver what is ready (a round of no new message
        that has nothing to deliver ends there)."""
        start = time.perf_counter()
        acc = self._round(records)
        if records or acc.touched or acc.before:
            self._finish(acc)
            self.metrics.round_seconds.observe(time.perf_counter() - start)

    def _carried(self) -> bool:
        """Whether chunks or messages wait for a later round."""
        return bool(self._shares or self._held)

    def _drain(self) -> None:
        """Rounds until nothing is carried over (before a stop or a rebalance)."""
        while self._carried():
            self._rounds([])

    def _finish(self, acc: _Batch) -> None:
        """Analyse a round's windows, deliver its events and status, checkpoint, commit."""
        self.metrics.windows.inc(len(acc.windows))
        if acc.windows:
            self.metrics.batch_windows.observe(len(acc.windows))
        with self.metrics.stage_seconds.labels("analyze").time():
            analysis = self._analyze(acc)
        produced = acc.before + analysis + acc.after
        self._live_status(produced, acc)
        # Per track: started, then its windows, then ended (a track ends in the round
        # that closes its last window).
        self._deliver(produced, acc.status)
        delivered = time.time()
        for _, window in acc.windows:
            if window.samples[-1].captured is not None:
                self.metrics.event_latency.labels(window.stream_id).observe(
                    max(0.0, delivered - window.samples[-1].captured))
        self._write_snapshots(analysis)
        # Then the descriptions written meanwhile (this round's or earlier ones'): the
        # worker does not wait for one (but for a window that shows it, see
        # WindowAnalyzer).  One still being written is in its stream's checkpointed state,
        # so a successor asks for it again (same event id).  A stream that ended has no
        # state left to hold them: its round waits for every description.
        self._descriptions(acc, wait=bool(acc.ended))
        self._checkpoint(acc)
        self._commit()

    def _descriptions(self, acc: _Batch, *, wait: bool = False) -> None:
        """Deliver the descriptions written since the last call (``wait``: all of them),
        and mark their streams for the checkpoint that follows (no longer pending)."""
        if not self.models.analyzer.follows:
            return
        described = self.models.analyzer.completed(wait=wait)
        if not described:
            return
        self._count_events(described)
        self._deliver(described, {})
        for event in described:
            stream_id = event["data"]["stream_id"]
            if stream_id in self._owner:
                acc.touched.setdefault(stream_id, self._owner[stream_id])

    def _flush_descriptions(self, *, wait: bool = False) -> None:
        """Between polls (idle) and on stop: deliver the descriptions written by now."""
        acc = _Batch()
        self._descriptions(acc, wait=wait)
        if acc.touched:
            self._checkpoint(acc)

    def _analyze(self, acc: _Batch) -> list[dict[str, Any]]:
        """The round's windows through the models in one batch.  Should the batch fail, each
        stream's windows are analysed on their own, so a window that breaks the models
        costs its stream an error event, not the round (nor the worker)."""
        try:
            return self.models.analyzer.analyze(acc.windows)
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            log.warning("analysis batch failed (%s); analysing stream by stream",
                        bounded(f"{type(exc).__name__}: {exc}", 200))
        out: list[dict[str, Any]] = []
        by_stream: dict[str, list] = {}
        for pair in acc.windows:
            by_stream.setdefault(pair[0].stream_id, []).append(pair)
        for stream_id, pairs in by_stream.items():
            try:
                out += self.models.analyzer.analyze(pairs)
            except _ENVIRONMENT:
                raise
            except Exception as exc:
                self.metrics.analysis_failures.inc(len(pairs))
                state = pairs[0][0]
                acc.before.append(self._error_event(
                    stream_id, f"{len(pairs)} windows could not be analysed: "
                    f"{type(exc).__name__}: {exc}", seq=self.report.messages,
                    time_s=state.last_time_s))
        return out

    def _round(self, records: list) -> _Batch:
        """One message per partition, after the messages held back for streams whose chunk
        left the face stage since.  Each is admitted here in order and its chunk handed to
        the face stage; the chunks' frames are observed here as they come out of it (a
        stream's own in order), each into its own message's share.  With ``round_max_s``,
        a stream whose chunk is still there when the round has run that long carries it
        over, and so do its next messages (held back).  The shares ready are joined in
        message order (a failed chunk dead-lettered there), then the parts given up
        meanwhile are dead-lettered.  For each stream, the result is what processing the
        messages one after the other would give (with one thread, it is how they are
        processed)."""
        bound = self.settings.round_max_s
        deadline = time.monotonic() + bound if bound else None
        held = [pair for stream_id in [s for s in self._held if s not in self._in_flight]
                for pair in self._held.pop(stream_id)]
        for tp, record in held + records:
            stream_id = _attributed(record)
            job = self._in_flight.get(stream_id)
            if stream_id in self._held or (bound and job is not None and not job.ready()):
                self._held.setdefault(stream_id, []).append((tp, record))
                continue
            self.report.messages += 1
            self.metrics.messages.inc()
            share = _Batch()
            job = self._admit(tp, record, share)
            self._shares.append((share, job))
            if job is not None:
                self._in_flight[job.stream.state.stream_id] = job
            self._settle_ready(keep=self._face_stage.lookahead)
        self._settle_ready(deadline=deadline)
        self.metrics.carried_chunks.inc(len(self._in_flight))
        acc = _Batch()
        waiting = []
        for share, job in self._shares:
            if job is not None and not job.settled:
                waiting.append((share, job))
                continue
            if job is not None and job.failure is not None:
                self._dead_letter(job.record, job.chunk.stream_id, job.failure, share)
            acc.extend(share)
        self._shares = waiting
        self._orphans(acc)
        return acc

    def _settle_ready(self, *, keep: int = 0, deadline: float | None = None) -> None:
        """Observe chunks as they come out of the face stage (the first admitted of those
        ready first) until at most ``keep`` are left in it, waiting for one when none is
        ready; with ``deadline`` (``time.monotonic``), waiting no longer than that."""
        while len(self._in_flight) > keep:
            job = next((j for j in self._in_flight.values() if j.ready()), None)
            if job is not None:
                self._settle(job.stream.state.stream_id)
                continue
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return
            wait([f for j in self._in_flight.values() for f in j.pending()], timeout,
                 return_when=FIRST_COMPLETED)

    def _settle(self, stream_id: str) -> None:
        """Observe the stream's chunk still in the face stage, if any (waiting for it),
        before its next message is looked at."""
        job = self._in_flight.pop(stream_id, None)
        if job is not None:
            self._observe(job)

    def _admit(self, tp, record, acc: _Batch) -> _InFlight | None:
        """Everything about a message but decoding and faces; the chunk to decode, if any.
        Whatever the message holds, it ends here processed, waiting for its other parts, or
        dead-lettered."""
        # A message held back is admitted after later ones of its partition.
        self._consumed[tp] = max(self._consumed.get(tp, 0), record.offset + 1)
        stream_id = _attributed(record)
        try:
            message = parse_message(record.headers, record.value, key=record.key)
        except ChunkError as exc:
            self._settle(stream_id)
            self._dead_letter(record, stream_id, f"not a chunk: {exc}", acc)
            return None
        self._settle(message.stream_id)
        try:
            return self._take(tp, record, message, acc)
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            log.warning("message %s/%d@%d could not be processed: %s", record.topic,
                        record.partition, record.offset,
                        bounded(f"{type(exc).__name__}: {exc}", 300))
            log.debug("traceback", exc_info=True)
            self._dead_letter(record, stream_id, f"could not be processed: "
                              f"{type(exc).__name__}: {exc}", acc)
            return None

    def _take(self, tp, record, message: Chunk | EndOfStream | MediaClock,
              acc: _Batch) -> _InFlight | None:
        stream = self._stream(message.stream_id, tp, acc, fps=getattr(message, "fps", None))
        if record.offset < stream.next_offset:
            self.report.skipped += 1           # already in the checkpoint's state
            return None
        if stream.clean is None:              # no checkpoint yet: a successor starts here
            stream.clean = (record.offset, None)
        stream.next_offset = record.offset + 1
        acc.touched[message.stream_id] = tp
        if isinstance(message, EndOfStream):
            self._end(stream, acc)
            return None
        if isinstance(message, MediaClock):
            self._media_clock(stream, message, acc)
            return None
        chunk = self._assembler.add(message, token=record, now=self._clock())
        if chunk is None:                       # a part: wait for the rest
            return None
        if chunk.profile is not None and chunk.profile != self.settings.profile:
            self._dead_letter(record, chunk.stream_id,
                              f"stream {chunk.stream_id} is registered for profile "
                              f"{chunk.profile}; this worker runs {self.settings.profile} "
                              f"(publish it to {chunk_topic(self.settings.video_topic, chunk.profile)}"
                              f", which workers of profile {chunk.profile} read)", acc)
            return None
        if stream.ended_before:
            if chunk.seq != 0:
                self._dead_letter(record, chunk.stream_id,
                                  f"stream {chunk.stream_id} has ended (finished or removed "
                                  f"from the registry): chunk {chunk.seq} refused; a restarted "
                                  "stream starts again at chunk 0", acc)
                return None
            stream.ended_before = False
            acc.set_status(chunk.stream_id, worker_state="running", worker=_worker_name())
        if not self._in_order(stream, chunk, record, acc):
            return None
        if chunk.fps is not None and chunk.fps != stream.decoder.sampler.fps:
            # The stream's registered rate changed without a restart: sample at the new one.
            stream.decoder.sampler = FrameSampler(chunk.fps)
        if chunk.live and self._behind(record):
            self._drop(stream, chunk, acc)
            return None
        if chunk.continued and not stream.decoder.mid_gop:
            # The GOP's first chunk was dropped, lost or never decoded: nothing to continue.
            self._drop(stream, chunk, acc)
            return None
        if stream.faces is None:
            stream.faces = face_memory(self.settings)
        return _InFlight(stream, chunk, record,
                         self._face_stage.submit(stream.decoder, chunk, stream.faces), acc)

    def _media_clock(self, stream: _Stream, marker: MediaClock, acc: _Batch) -> None:
        """The stream's source is down: its windows that end by the media time it will
        resume at close now.  Only right after the chunk the marker follows and between
        GOPs (where the decoder holds no frame back); otherwise the windows close as usual,
        when frames come again."""
        if (stream.ended_before or stream.decoder.mid_gop
                or stream.order.next_seq != marker.last_seq + 1):
            return
        self.report.media_clocks += 1
        self.metrics.media_clocks.inc()
        acc.windows += [(stream.state, w) for w in stream.state.advance(marker.media_s)]

    def _in_order(self, stream: _Stream, chunk: Chunk, record, acc: _Batch) -> bool:
        """Apply the chunk order policy (:mod:`facestream.workers.ordering`): a gap is
        reported, a restart restarts the stream, a refused chunk is dead-lettered.  True:
        analyse the chunk."""
        verdict = stream.order.judge(chunk.seq, chunk.start_s, (record.timestamp or 0) / 1000)
        if verdict.kind is not None:
            self._count_order(verdict.kind)
        if not verdict.accept:
            self._dead_letter(record, chunk.stream_id, verdict.message, acc)
        elif verdict.kind == "restart":
            self._restart(stream, acc, fps=chunk.fps)
        elif verdict.kind == "gap":
            stream.decoder.abandon()      # a GOP open across the gap is missing packets
            acc.before.append(self._error_event(chunk.stream_id, verdict.message,
                                                seq=record.offset,
                                                time_s=stream.state.last_time_s))
        return verdict.accept

    def _count_order(self, kind: str) -> None:
        self.report.out_of_order += 1
        self.metrics.out_of_order.labels(kind).inc()

    def _restart(self, stream: _Stream, acc: _Batch, *, fps: float | None = None) -> None:
        """Chunk 0 again without an end: the publisher restarted.  The old session's tracks
        end and the stream starts afresh (at ``fps``, the chunk's registered rate)."""
        closed, ended = stream.state.finish()
        acc.windows += [(stream.state, w) for w in closed]
        acc.after += ended
        stream_id = stream.state.stream_id
        stream.decoder, stream.state = self._fresh(stream_id, fps)
        stream.faces = None

    def _fresh(self, stream_id: str, fps: float | None) -> tuple[ChunkDecoder, StreamState]:
        """A new stream's decoder and state, sampling at ``fps`` (the stream's registered
        rate, from its chunks' ``fs-fps``) or at the worker's own."""
        settings = self._settings_for(fps)
        return ChunkDecoder(stream_id, fps=settings.fps), StreamState(stream_id, settings)

    def _settings_for(self, fps: float | None) -> Settings:
        """The settings a stream at ``fps`` is analysed with: the worker's, at that rate; a
        track survives at least two missed frames (``track_max_lost_s`` >= 2 / fps) and a
        window holds at least one frame (``window_s`` >= 1 / fps)."""
        if fps is None or fps == self.settings.fps:
            return self.settings
        if fps not in self._settings_by_fps:
            self._settings_by_fps[fps] = dataclasses.replace(
                self.settings, fps=fps, window_s=max(self.settings.window_s, 1.0 / fps),
                track_max_lost_s=min(30.0, max(self.settings.track_max_lost_s, 2.0 / fps)))
        return self._settings_by_fps[fps]

    def _orphans(self, acc: _Batch) -> None:
        """Dead-letter every part of the split chunks given up (their offsets can then be
        committed)."""
        for orphan in self._assembler.take_orphans():
            self.metrics.orphan_parts.inc(len(orphan.tokens))
            for record in orphan.tokens:
                self._dead_letter(record, orphan.stream_id, orphan.reason, acc)
            if orphan.stream_id in self._owner:       # its checkpoint moves past the parts
                acc.touched[orphan.stream_id] = self._owner[orphan.stream_id]

    def _expire_parts(self) -> None:
        self._assembler.expire(self._clock(), self.settings.orphan_part_timeout_s)
        acc = _Batch()
        self._orphans(acc)
        if acc.before:
            self._finish(acc)

    def _observe(self, job: _InFlight) -> None:
        """Wait for a chunk's frames and faces (blocking) and track them.  A chunk that does
        not decode, or whose frames break the face stage or the tracker, is dead-lettered
        when its share is joined (so in message order); frames tracked before the failure
        stay tracked."""
        job.settled = True
        stream, acc = job.stream, job.acc
        try:
            decoded = job.decoded.result()
            self.metrics.stage_seconds.labels("decode").observe(decoded.seconds)
            self.report.chunks += 1
            self.metrics.chunks.inc()
            for future in decoded.frames:
                seen = future.result()
                self.metrics.stage_seconds.labels("faces").observe(seen.seconds)
                self.metrics.frames.inc()
                self.metrics.detected_frames.inc(seen.detected)
                self.metrics.faces.inc(len(seen.faces))
                started, closed, ended = stream.state.observe(seen.frame, seen.faces)
                self._snapshot_due(stream, seen.frame)
                acc.before += started
                acc.windows += [(stream.state, w) for w in closed]
                acc.after += ended
                self.report.frames += 1
            # Every frame of the chunk is decoded: windows that end by the end of its last
            # frame close now, not when their track's next sample comes (a chunk later, or
            # more): with the chunk that holds their last frame.
            acc.windows += [(stream.state, w) for w in stream.state.advance(decoded.media_s)]
        except _ENVIRONMENT:
            raise
        except Exception as exc:
            job.failure = f"chunk {job.chunk.seq} does not decode: {_reason(exc)}"

    # -- what the worker adds to a stream's status, and its snapshot --------------------------

    def _count_events(self, produced: list[dict[str, Any]]) -> None:
        for event in produced:
            stream_id = event["data"]["stream_id"]
            rate = self._rates.get(stream_id)
            if rate is None:
                rate = self._rates[stream_id] = RateWindow(5.0, time.monotonic)
            rate.add(1)

    def _live_status(self, produced: list[dict[str, Any]], acc: _Batch,
                     every_s: float = 1.0) -> None:
        """Count the round's events per stream, and add to the round's status, at most
        every ``every_s`` per stream, the worker's fields: ``worker``, ``events_per_s``,
        ``faces`` (tracks on screen), ``worker_at``."""
        self._count_events(produced)
        now = time.monotonic()
        for stream_id in acc.touched:
            stream = self._streams.get(stream_id)
            if stream is None or now - self._status_at.get(stream_id, -every_s) < every_s:
                continue
            self._status_at[stream_id] = now
            rate = self._rates.get(stream_id)
            faces = sum(1 for t in stream.state.tracker.active
                        if t.track_id is not None and t.last_time_s == stream.state.last_time_s)
            acc.set_status(stream_id, worker=_worker_name(),
                           events_per_s=f"{rate.rate() if rate else 0.0:.2f}", faces=faces,
                           worker_at=f"{self._clock():.3f}")

    def _snapshot_due(self, stream: _Stream, frame) -> None:
        """Keep ``frame`` and its tracks' boxes as the stream's next snapshot if one is due
        (at most one per ``snapshot_interval_s``); nothing is drawn or encoded here."""
        interval = self.settings.snapshot_interval_s
        if not interval:
            return
        stream_id = stream.state.stream_id
        if time.monotonic() - self._snapshot_at.get(stream_id, -interval) < interval:
            return
        boxes = [(track.track_id, np.array(track.box, dtype=float))
                 for track in stream.state.tracker.active
                 if track.track_id is not None and track.last_time_s == frame.time_s]
        self._snapshots[stream_id] = (frame.image, boxes)

    def _write_snapshots(self, analysis: list[dict[str, Any]]) -> None:
        """Draw the due snapshots (boxes, track ids, each track's latest expression, gender
        and age), encode them as JPEG and store them (one try: a snapshot that fails is
        replaced by the next)."""
        for event in analysis:
            if event["type"] == events.FACE_ANALYSIS:
                _caption(self._captions.setdefault(event["data"]["stream_id"], {}), [event])
        if not self._snapshots:
            return
        store = getattr(self.sink, "snapshot", None)
        due, self._snapshots = self._snapshots, {}
        for stream_id, (image, boxes) in due.items():
            self._snapshot_at[stream_id] = time.monotonic()
            if store is None:
                continue
            captions = self._captions.get(stream_id, {})
            with self.metrics.stage_seconds.labels("snapshot").time():
                jpeg = snapshot_jpeg(image, [(tid, box, captions.get(tid, tid))
                                             for tid, box in boxes])
                if not store(stream_id, jpeg, self.settings.snapshot_ttl_s):
                    log.debug("snapshot of %s not stored", stream_id)

    def _behind(self, record) -> bool:
        """True if the message reached us more than live_max_lag_s after it was produced."""
        produced = (record.timestamp or 0) / 1000
        return produced > 0 and self._clock() - produced > self.settings.live_max_lag_s

    def _drop(self, stream: _Stream, chunk: Chunk, acc: _Batch) -> None:
        """Skip a live chunk the worker is too late for: the oldest video goes first, so
        the stream catches up with the camera instead of lagging more and more."""
        try:
            stamps = [p.pts for p in chunk.packets() if p.pts is not None]
        except ChunkError:
            stamps = []                # never decoded: its framing does not matter
        seconds = float((max(stamps) - chunk.first_pts) * chunk.time_base) if stamps else 0.0
        stream.decoder.abandon()          # the rest of its GOP cannot be decoded without it
        stream.dropped += 1
        self.report.dropped_chunks += 1
        self.metrics.dropped_chunks.inc()
        self.metrics.dropped_seconds.inc(max(seconds, 0.0))
        acc.set_status(stream.state.stream_id, dropped_chunks=stream.dropped)

    def _deliver(self, batch: list[dict[str, Any]], status: dict[str, dict]) -> None:
        """Write events and status to Redis (and to the events topic and webhooks, when
        set: :mod:`facestream.sinks.fanout`); while one is down, retry with backoff (nothing
        is committed meanwhile)."""
        if not batch and not status:
            return
        with self.metrics.stage_seconds.labels("redis").time():
            self.report.events += self._until_available(lambda: self.sink.write(batch, status))
        for event in batch:
            self.metrics.events.labels(event["type"]).inc()

    def _until_available(self, call: Callable[[], Any]) -> Any:
        """``call()``, retried with capped exponential backoff while Redis or the broker is
        unavailable.  Only a stop request ends the wait (re-raising the last error)."""
        for attempt in itertools.count():
            try:
                result = call()
                self.metrics.redis_ok = True
                return result
            except (SinkUnavailable, BrokerUnavailable) as exc:
                if isinstance(exc, EventsTopicUnavailable):
                    self.metrics.broker_ok = False
                elif isinstance(exc, SinkUnavailable):
                    self.metrics.redis_ok = False
                    self.metrics.redis_retries.inc()
                else:
                    self.metrics.broker_ok = False
                delay = min(8.0, 0.25 * 2 ** attempt)
                log.warning("%s; retrying in %.1fs", exc, delay)
                if self._stop.wait(delay):
                    raise

    def _checkpoint(self, acc: _Batch) -> None:
        saves: dict[str, tuple[bytes, int | None]] = {}
        for stream_id in acc.touched:
            stream = self._streams.get(stream_id)
            if stream is None or self._busy(stream_id):
                continue           # its last checkpoint stands until its chunk is delivered
            if stream.decoder.mid_gop:
                # Not a place to resume from: the last one between GOPs stands.
                if stream.clean is not None and stream.clean[1] is not None:
                    saves[self._checkpoint_key(stream_id)] = (stream.clean[1], None)
                continue
            offset = self._resume_offset(stream)
            blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, stream_id,
                                                          offset, stream))
            stream.clean = (offset, blob)
            saves[self._checkpoint_key(stream_id)] = (blob, None)
        for stream_id, offset in acc.ended.items():
            # An ended stream keeps a marker for a while, so a worker that replays the
            # messages before its end (after a crash) does not analyse them again.
            blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, stream_id,
                                                          offset, None))
            saves[self._checkpoint_key(stream_id)] = (blob, ENDED_CHECKPOINT_TTL_S)
        self._until_available(lambda: self.sink.checkpoints(saves))

    def _resume_offset(self, stream: _Stream) -> int:
        """Where a successor resumes the stream: its next message, or the first part of a
        chunk still being put together."""
        parts = self._assembler.tokens(stream.state.stream_id)
        return min([stream.next_offset, *(record.offset for record in parts)])

    def _commit(self) -> None:
        """Commit each partition up to the messages processed, but not past the first part
        of a chunk still being put together (it is in no checkpoint's state yet), nor past
        the start of a GOP still open (its stream's checkpoint is from before it), nor past
        the last checkpoint of a stream whose chunk a round carried over, nor past a message
        held back."""
        from kafka import OffsetAndMetadata

        positions = {}
        for tp in self.consumer.assignment():
            if tp not in self._consumed:
                continue
            waiting = [record.offset for stream_id, owner in self._owner.items() if owner == tp
                       for record in self._assembler.tokens(stream_id)]
            waiting += [self._streams[stream_id].clean[0]
                        for stream_id, owner in self._owner.items() if owner == tp
                        and (self._busy(stream_id) or self._streams[stream_id].decoder.mid_gop)
                        and self._streams[stream_id].clean is not None]
            waiting += [record.offset for held in self._held.values()
                        for owner, record in held if owner == tp]
            positions[tp] = OffsetAndMetadata(min([self._consumed[tp], *waiting]), "", -1)
        if not positions:
            return
        from kafka.errors import KafkaError

        try:
            self.consumer.commit(positions)
            self._committed.update({tp: o.offset for tp, o in positions.items()})
        except KafkaError as exc:
            # The broker is away or the group rebalanced under us.  Nothing is lost: the
            # checkpoints just written cover these offsets, and the next commit catches up.
            log.warning("offset commit skipped: %s", bounded(str(exc), 200))

    # -- streams ---------------------------------------------------------------------------

    def _busy(self, stream_id: str) -> bool:
        """Whether the stream has a chunk in the face stage: its decoder in use on another
        thread, its next offset past what was delivered.  (Its messages held back are not
        taken yet: its next offset is before them.)"""
        return stream_id in self._in_flight

    def _checkpoint_key(self, stream_id: str) -> str:
        # Offsets belong to a topic: the same stream id on another topic is another stream.
        return f"{self.settings.checkpoint_prefix}:{self.topic}:{stream_id}"

    def _stream(self, stream_id: str, tp, acc: _Batch, *, fps: float | None = None) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            key = self._checkpoint_key(stream_id)
            saved = self._until_available(lambda: self.sink.load_checkpoint(key))
            restored = checkpoint.loads(saved) if saved else None
            if restored is not None and restored.stream is not None:
                stream = restored.stream
                self.report.resumed += 1
                self.models.analyzer.resume(stream.state)
            else:
                stream = _Stream(*self._fresh(stream_id, fps))
            if restored is not None:
                stream.next_offset = restored.offset
            stream.clean = ((restored.offset, saved) if restored is not None
                            and restored.stream is not None else None)
            stream.ended_before = stream_id in self._ended or (
                restored is not None and restored.stream is None)
            self._streams[stream_id] = stream
            self._owner[stream_id] = tp
            if not stream.ended_before:       # replaying an ended stream's messages is not running it
                acc.set_status(stream_id, worker_state="running", worker=_worker_name())
        return stream

    def _end(self, stream: _Stream, acc: _Batch) -> None:
        """The publisher ended the stream: close every track.  (A GOP left open, its
        source gone mid-GOP, ends with what was decoded of it.)"""
        stream.decoder.abandon()
        closed, ended = stream.state.finish()
        acc.windows += [(stream.state, w) for w in closed]
        acc.after += ended
        acc.ended[stream.state.stream_id] = stream.next_offset
        del self._streams[stream.state.stream_id]
        del self._owner[stream.state.stream_id]
        self._ended.add(stream.state.stream_id)
        self.report.streams_ended += 1
        acc.set_status(stream.state.stream_id, worker_state="ended", faces=0)
        for table in (self._captions, self._snapshots):
            table.pop(stream.state.stream_id, None)

    def _dead_letter(self, record, stream_id: str, reason: str, acc: _Batch) -> None:
        """Send ``record`` to the dead-letter topic (waiting for the broker if it is away)
        and add the stream's error event and status to the round."""
        reason = one_line(reason)
        self.report.dead_letters += 1
        self.metrics.dead_letters.inc()
        self._until_available(lambda: self._dead_letters.send(record, reason))
        stream = self._streams.get(stream_id)
        acc.set_status(stream_id, worker_error=reason)
        acc.before.append(self._error_event(stream_id, reason, seq=record.offset,
                                            time_s=stream.state.last_time_s if stream else 0.0))

    def _error_event(self, stream_id: str, reason: str, *, seq: int,
                     time_s: float) -> dict[str, Any]:
        return events.stream_error(stream_id=stream_id, message=one_line(reason),
                                   time_s=time_s, seq=seq, profile=self.settings.profile,
                                   time_epoch=self._clock(), fatal=False)


def _attributed(record) -> str:
    """The stream a message's failure is reported under: its key if that is a stream id,
    else :data:`events.UNATTRIBUTED` (a bad key is never rewritten into a real stream's)."""
    try:
        key = (record.key or b"").decode("ascii")
    except UnicodeDecodeError:
        key = ""
    return key if is_stream_id(key) else events.UNATTRIBUTED


def _reason(exc: Exception) -> str:
    """What a failed chunk says: our own and FFmpeg's errors as they are, anything else
    (a fault in the face stage) with its type."""
    text = str(exc)
    if text and isinstance(exc, (ChunkError, av.error.FFmpegError, FacestreamError)):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def snapshot_jpeg(image, faces, *, quality: int = 85) -> bytes:
    """``image`` (RGB) with ``faces`` ((track id, box, label) each) drawn, as JPEG bytes."""
    import cv2

    bgr = cv2.cvtColor(draw(image, faces), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes()


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
            worker._partitions_assigned(assigned)

    return Listener()


def _make_consumer(settings: Settings):
    from kafka import KafkaConsumer

    return connect(KafkaConsumer, settings,
                   group_id=settings.consumer_group, enable_auto_commit=False,
                   group_instance_id=settings.kafka_group_instance_id or None,
                   session_timeout_ms=settings.kafka_session_timeout_ms,
                   heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
                   max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
                   auto_offset_reset="earliest",
                   max_partition_fetch_bytes=settings.max_message_bytes * 4,
                   fetch_max_bytes=settings.max_message_bytes * 16)
