"""Embedded mode: one source, every stage in one process, events to a JSONL file.

Decoding runs a few frames ahead in a thread (a bounded in-memory queue stands where Kafka
stands in the distributed mode); faces, tracks, windows and the encoder run on the calling
thread, descriptions on the describer's (their events are written as they are ready, after
the frame that closed their window).  The stages are the ones the workers use.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from facestream import __version__, events
from facestream.config import Settings
from facestream.errors import SourceDropped
from facestream.ingest.sources import SourceSpec, Stopped
from facestream.retry import Backoff
from facestream.sinks.annotate import Annotator, label_text, write_image
from facestream.sinks.jsonl import JsonlSink
from facestream.sinks.report import ReportSink, RunInfo
from facestream.types import DecodedFrame
from facestream.vision.decode import Decoder, SourcePause, StreamInfo
from facestream.vision.faces import face_memory
from facestream.workers.compose import Models
from facestream.workers.pipeline import StreamState


@dataclass
class Summary:
    stream_id: str
    events_path: Path
    annotated_path: Path | None
    info: StreamInfo
    report_path: Path | None = None
    media_s: float = 0.0
    wall_s: float = 0.0
    frames: int = 0
    windows: int = 0
    events: int = 0
    llm_calls: int = 0
    tracks: dict[str, str] = field(default_factory=dict)     # track id -> dominant expression
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False       # ended by ``stop`` (a camera's run is ended so)

    @property
    def speed(self) -> float:
        """Media seconds analysed per wall second."""
        return self.media_s / self.wall_s if self.wall_s > 0 else 0.0


_END = object()             # after a prefetched iterator's last item


class _Prefetch:
    """Iterates ``items`` run in a thread, ``depth`` items ahead; exceptions are re-raised
    in the iterating thread.  With ``stop`` set, iteration ends at once, even while the
    thread waits on its source (it ends itself when its next read returns)."""

    _POLL_S = 0.2           # how often a wait for the next item looks at ``stop``

    def __init__(self, items: Iterator[Any], *, depth: int = 4,
                 stop: threading.Event | None = None) -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop or threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="facestream-decode",
                                        daemon=True)

    @property
    def running(self) -> bool:
        """Whether the thread still runs (it may be reading the source)."""
        return self._thread.is_alive()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:     # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: Any) -> bool:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Any]:
        self._thread.start()
        try:
            while not self._stop.is_set():
                try:
                    item = self._queue.get(timeout=self._POLL_S)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item is _END:
                    return
                yield item
        finally:
            self._closing.set()
            self._thread.join(timeout=5)


def analyze(spec: SourceSpec, settings: Settings, *, out_dir: Path, stream_id: str | None = None,
            annotate: bool = False, report: bool = False, models: Models | None = None,
            progress: Callable[[float, float | None, int], None] | None = None,
            stop: threading.Event | None = None,
            on_wait: Callable[[str], None] | None = None) -> Summary:
    """Analyse ``spec`` into ``out_dir/events.jsonl`` (and with ``annotate``,
    ``annotated.mp4``, or ``annotated.jpg`` for a photo; with ``report``, ``report.html``).

    Raises InputError when the source cannot be used at all; damage skipped in the middle of
    a file, a damaged tail or a live source that drops after delivering frames is a warning
    in the summary and an error event.  While a live source is down, its error events are
    written at once and the windows that end before it can resume are analysed (it cannot
    resume before the wall time of the reconnect).  With ``stop`` set the run ends as if
    the source had ended there (the open windows are analysed, the report is written;
    ``Summary.stopped``): how a camera's run is ended.  ``on_wait`` hears, in one line, of
    each wait before a reconnect (why the source is down, how long until the next try).  The output files are opened when
    the first frame has been decoded, so a run that fails before (an unusable source,
    missing model files) leaves ``out_dir`` as it was, an earlier run's outputs included,
    and creates no folder.  The report is written only when the run succeeds (in one
    rename): a run that fails at any point leaves an earlier ``report.html`` as it was.
    """
    stream_id = stream_id or spec.name
    started = time.monotonic()
    stop = stop or threading.Event()
    # Error events, reported from the decoding thread too; written with the next events.
    errors: queue.SimpleQueue = queue.SimpleQueue()
    errors_seen = 0
    last_error = ""

    def report_error(message: str, *, fatal: bool = False) -> None:
        nonlocal errors_seen, last_error
        last_error = message
        errors.put(events.stream_error(
            stream_id=stream_id, message=message,
            time_s=max(0.0, decoder.report.last_time_s),      # frames before the start: 0
            seq=errors_seen, profile=settings.profile, time_epoch=time.time(), fatal=fatal))
        errors_seen += 1

    def error_events() -> list[dict[str, Any]]:
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        return reported

    backoff = Backoff(settings.reconnect_attempts, settings.reconnect_backoff_s,
                      settings.reconnect_backoff_max_s)
    decoder = Decoder(spec, stream_id=stream_id, fps=settings.fps, backoff=backoff,
                      timeout_s=settings.open_timeout_s, threads=settings.threads,
                      on_error=report_error, stop=stop)
    photo = spec.kind == "image"
    annotated_path = (out_dir / ("annotated.jpg" if photo else "annotated.mp4")) if annotate \
        else None
    sink: JsonlSink | None = None
    annotator = None
    reporter = ReportSink(out_dir / "report.html") if report else None

    def emit(frame: DecodedFrame | None, batch: list[dict[str, Any]]) -> None:
        """``batch`` to the events file (and the report).  The file (and the annotated
        video) is opened on first use: truncating an earlier run's files waits until this
        run has a frame to show for it."""
        nonlocal sink, annotator
        if sink is None:
            sink = JsonlSink(out_dir / "events.jsonl")
        if annotated_path is not None and not photo and annotator is None \
                and frame is not None:
            height, width = frame.image.shape[:2]
            annotator = Annotator(annotated_path, width=width, height=height)
        sink.write(batch)
        if reporter is not None:
            reporter.write(batch)

    try:
        owned = models is None
        models = models or Models.load(settings)
    except BaseException:
        decoder.close()
        raise
    frames = _Prefetch(decoder.frames(pauses=True), stop=stop)
    llm_calls_before = models.analyzer.llm_calls
    summary = Summary(stream_id, out_dir / "events.jsonl", annotated_path, decoder.info)
    labels: dict[str, Counter] = {}     # track id -> expression label counts, for the summary
    captions: dict[str, str] = {}       # track id -> its label on the annotated output
    still: tuple[Any, list[tuple[str, Any, str]]] | None = None    # a photo and its faces
    state = StreamState(stream_id, settings, confirm_hits=1 if photo else None)
    memory = face_memory(settings)      # faces followed between detections
    analysed_s = 0.0                    # media time of the last frame analysed

    def analysed(windows: list) -> list[dict[str, Any]]:
        """The closed ``windows``' analysis events, counted for the summary and captions."""
        analysis = models.analyzer.analyze([(state, w) for w in windows])
        _count_labels(labels, analysis)
        _caption(captions, analysis)
        summary.windows += len(windows)
        return analysis

    try:
        try:
            for frame in frames:
                if isinstance(frame, SourcePause):
                    if on_wait is not None:
                        on_wait(f"{last_error}; trying again in {frame.delay_s:.1f}s")
                    if summary.frames:          # else the run may still fail, writing nothing
                        emit(None, error_events() + analysed(state.advance(frame.resume_s))
                             + models.analyzer.completed())
                    continue
                faces = (models.faces(frame.image) if memory is None
                         else models.faces.follow(frame, memory))
                started_ev, windows, ended_ev = state.observe(frame, faces)
                emit(frame, error_events() + started_ev + analysed(windows) + ended_ev
                     + models.analyzer.completed())
                summary.frames += 1
                analysed_s = frame.time_s
                visible = (_overlay(state, captions) if reporter is not None
                           or annotated_path is not None else None)
                if reporter is not None:
                    reporter.frame(frame.image, visible)
                if annotator is not None:
                    annotator.write(frame.image, frame.time_s, visible)
                elif annotated_path is not None and photo:
                    # A photo's one window is analysed when the tracks close, below: its
                    # labels are drawn then.
                    still = (frame.image, visible)
                if progress is not None:
                    progress(frame.time_s, decoder.info.duration_s, summary.frames)
        except SourceDropped as exc:
            if decoder.report.picked == 0:
                raise
            summary.warnings.append(str(exc))
            report_error(str(exc), fatal=True)
        except Stopped:
            pass                                # stopped while waiting to reconnect
        summary.stopped = stop.is_set()
        damage = decoder.report.warning()     # skipped damage and/or a damaged tail
        if damage:
            summary.warnings.append(f"source {spec.text}: {damage}")
            report_error(damage)
        windows, ended_ev = state.finish()
        analysis = analysed(windows)
        # The last descriptions before the tracks' ends: the file closes with them.  (A run
        # stopped before its first frame writes nothing: an earlier run's files stay.)
        if summary.frames or not summary.stopped:
            emit(None, error_events() + analysis + models.analyzer.completed(wait=True)
                 + ended_ev)
        if still is not None:
            image, faces = still
            write_image(annotated_path, image,
                        [(tid, box, captions.get(tid, tid)) for tid, box, _ in faces])
    finally:
        if owned:
            models.close()
        if not frames.running:      # else its thread may still be in a read: it ends there
            decoder.close()
        if sink is not None:
            sink.close()
        if annotator is not None:
            annotator.close()
    summary.events = sink.count if sink is not None else 0
    if annotated_path is not None and not annotated_path.is_file():
        summary.annotated_path = None       # a video whose source gave no frame
    # Stopped: frames decoded ahead of the analysis were not analysed.
    summary.media_s = 0.0 if photo else analysed_s if summary.stopped \
        else decoder.report.last_time_s
    summary.wall_s = time.monotonic() - started
    summary.llm_calls = models.analyzer.llm_calls - llm_calls_before
    summary.tracks = {tid: counts.most_common(1)[0][0]
                      for tid, counts in sorted(labels.items(), key=lambda kv: int(kv[0][1:]))}
    if reporter is not None and (summary.frames or not summary.stopped):
        info = decoder.info
        summary.report_path = reporter.finish(RunInfo(
            source=spec.text, photo=photo, width=info.width, height=info.height,
            codec=info.codec, duration_s=None if photo else info.duration_s,
            analysed_s=summary.media_s, source_fps=info.average_fps,
            analysis_fps=settings.fps, window_s=settings.window_s, frames=summary.frames,
            windows=summary.windows, events=summary.events, profile=settings.profile,
            describe=settings.describe, version=__version__))
    return summary


def _count_labels(labels: dict[str, Counter], analysis: list[dict[str, Any]]) -> None:
    for event in analysis:
        data = event["data"]
        labels.setdefault(data["track_id"], Counter())[data["expression"]["label"]] += 1


def _caption(captions: dict[str, str], analysis: list[dict[str, Any]]) -> None:
    """Each analysed track's label for the annotated output, from its latest analysis."""
    for event in analysis:
        data = event["data"]
        attributes = data.get("attributes") or {}
        captions[data["track_id"]] = label_text(
            data["track_id"], (data.get("expression") or {}).get("label"),
            (attributes.get("gender") or {}).get("label"),
            (attributes.get("age") or {}).get("years"))


def _overlay(state: StreamState, captions: dict[str, str]) -> list[tuple[str, Any, str]]:
    """(track id, box, label) of each track seen in the latest frame; a track whose first
    window is not analysed yet is labelled with its id alone."""
    return [(track.track_id, track.box, captions.get(track.track_id, track.track_id))
            for track in state.tracker.active
            if track.track_id is not None and track.last_time_s == state.last_time_s]
