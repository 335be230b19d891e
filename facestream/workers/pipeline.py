"""The stages between a decoded frame and its events, independent of transport.

* :class:`StreamState` — one stream's tracker and windows: frames and their faces in, track
  events and closed windows out.  Cheap; one per stream.
* :class:`WindowAnalyzer` — the models: turns closed windows of *any* streams into analysis
  events, running the encoder once per call over all of them and the language stage only for
  the windows the :class:`~facestream.workers.scheduler.ChangeScheduler` picks (new track,
  cheap signals moved, or too long since the last answer).  One per process.

The language stage is the profile's: SmolLM2 writing a sentence from the structured results
(``compact``), or Face-LLaVA answering task questions about the window's frames, whose parsed
answers replace the fields they cover (``facellava``).  Either way it has ``components`` and
``answer(items) -> list[Answer]``.

Descriptions never hold events back (``follow``, the compact profile's default): the
describer runs on a thread of its own, a window's event goes out when the window closes with
``description_follows: true``, and the sentence follows as a ``facestream.face.description``
event when it is written (:meth:`WindowAnalyzer.completed`).  A later window that reuses that
sentence waits for it, so every event's content is the same however fast the describer is;
only where the description events fall among the others varies.  Face-LLaVA's answers set
the event's fields, so its windows always wait for them (``inline``).

``facestream analyze`` (embedded) and the Kafka workers both drive these two classes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from facestream import events
from facestream.events import Described
from facestream.config import Settings
from facestream.types import (Answer, DecodedFrame, EncoderOutput, FaceDetections, FaceSample,
                              FaceWindow, LanguageStage, WindowEncoder)
from facestream.vision.tracker import Track, Tracker
from facestream.workers.scheduler import REUSE, Answered, ChangeScheduler, CheapSignals, Decision
from facestream.workers.windows import ClipHistory, Windower

log = logging.getLogger(__name__)


@dataclass
class TrackMemory:
    """What the analyzer remembers about a track between windows (checkpointed with the
    stream: plain data only)."""

    description: str | None = None
    answered: Answered | None = None     # the last described window: the scheduler's reference
    latest: EncoderOutput | None = None
    fields: dict[str, Any] | None = None   # the last answer's event fields (plain JSON data)


class StreamState:
    """Tracker and windower of one stream.  Not thread-safe."""

    def __init__(self, stream_id: str, settings: Settings, *, confirm_hits: int | None = None,
                 wall_origin: float | None = None) -> None:
        self.stream_id = stream_id
        self.profile = settings.profile
        self.tracker = Tracker(confirm_hits=confirm_hits or settings.track_confirm_hits,
                               max_lost_s=settings.track_max_lost_s,
                               min_iou=settings.track_min_iou)
        self.windower = Windower(stream_id, window_s=settings.window_s)
        # Face-LLaVA's video tasks reaching back past the window: the tracks' recent samples.
        self.clips = ClipHistory(settings.facellava_clip_s) if settings.facellava_clip_s else None
        self.memory: dict[str, TrackMemory] = {}     # live tracks only
        self.frame_size = (0, 0)
        self.last_time_s = 0.0
        self.wall_origin = wall_origin     # source wall clock at media time 0, if known
        # Tracks that ended with no window left open (the media clock had closed their last
        # one): the analyzer forgets their memory after the round's windows.
        self.ended_tracks: set[str] = set()
        # Descriptions asked for and not yet written (follow mode): checkpointed with the
        # stream, so a worker that takes it over asks for them again (WindowAnalyzer.resume).
        self.pending: list[_Job] = []
        self._first_seen: dict[int, tuple[float, int | None, float]] = {}
        self._last_pts: dict[int, int | None] = {}

    def observe(self, frame: DecodedFrame,
                faces: FaceDetections) -> tuple[list[dict[str, Any]], list[FaceWindow], list[dict[str, Any]]]:
        """One frame's faces -> (track.started events, closed windows, track.ended events)."""
        self.frame_size = (frame.width, frame.height)
        self.last_time_s = frame.time_s
        update = self.tracker.update(faces.boxes, frame.time_s)
        started = [self._track_event(events.TRACK_STARTED, t, frame.arrival) for t in update.started]
        windows: list[FaceWindow] = []
        for track, j in update.matches:
            self._first_seen.setdefault(track.key, (frame.time_s, frame.pts, frame.arrival))
            self._last_pts[track.key] = frame.pts
            sample = FaceSample(frame.time_s, frame.pts, frame.arrival, faces.boxes[j],
                                faces.landmarks[j], faces.mesh[j], faces.chips.take(j),
                                frame.captured)
            windows += self.windower.add(track, sample, self.frame_size)
        self.windower.discard_missing({t.key for t in self.tracker.active})
        ended = []
        for track in update.ended:
            windows += self._close(track)
            ended.append(self._track_event(events.TRACK_ENDED, track, frame.arrival, last=True))
        return started, self._clipped(windows), ended

    def advance(self, media_s: float) -> list[FaceWindow]:
        """The stream's media clock reached ``media_s``: the windows that ended by then."""
        return self._clipped(self.windower.advance(media_s, self.frame_size))

    def finish(self) -> tuple[list[FaceWindow], list[dict[str, Any]]]:
        """End of stream: every open window and the end of every track."""
        windows, ended = [], []
        now = time.time()
        for track in self.tracker.finish():
            windows += self._close(track)
            ended.append(self._track_event(events.TRACK_ENDED, track, now, last=True))
        return self._clipped(windows), ended

    def _close(self, track: Track) -> list[FaceWindow]:
        closed = self.windower.close(track, self.frame_size)
        if not closed and track.track_id is not None:
            self.ended_tracks.add(track.track_id)
            if self.clips is not None:
                self.clips.forget(track.track_id)
        return closed

    def _clipped(self, windows: list[FaceWindow]) -> list[FaceWindow]:
        """Closed windows, in order, each with its Face-LLaVA video clip where one is kept."""
        if self.clips is None:
            return windows
        return [self.clips.attach(w) for w in windows]

    def event_time(self, media_s: float, fallback_epoch: float) -> float:
        return self.wall_origin + media_s if self.wall_origin is not None else fallback_epoch

    def _track_event(self, kind: str, track: Track, arrival: float, *, last: bool = False) -> dict[str, Any]:
        assert track.track_id is not None
        first_s, first_pts, first_arrival = self._first_seen.get(
            track.key, (track.first_time_s, None, arrival))
        time_s = track.last_time_s if last else first_s
        pts = self._last_pts.pop(track.key, None) if last else first_pts
        if last:
            self._first_seen.pop(track.key, None)
        return events.track_event(kind, stream_id=self.stream_id, track_id=track.track_id,
                                  time_s=time_s, pts=pts, profile=self.profile,
                                  time_epoch=self.event_time(time_s, arrival if last else first_arrival))


@dataclass(eq=False)
class _Job:
    """One window's description being written on the describer's thread (plain data: it is
    checkpointed with its stream while pending).

    Its sentence reaches the track's memory once it is both written (``settled``) and
    ``installed`` (the analyzer has reached its window in the order of the windows), so a
    window that reuses a description always gets the one the scheduler compared it with."""

    state: StreamState
    window: FaceWindow
    output: EncoderOutput
    memory: TrackMemory
    answered: Answered            # the scheduler's reference for the track's next windows
    trigger: str | None
    previous: Answered | None = None     # put back should no description come
    installed: bool = False
    settled: bool = False
    answer: Answer | None = None


class WindowAnalyzer:
    """Runs the visual stage and the language stage over windows from any number of streams.

    ``language`` (None: no LLM; events carry the cheap results only) is the profile's
    :class:`LanguageStage`; ``scheduler`` picks the windows it sees.  Events name
    ``profile``.  ``follow``: descriptions are written on a thread of their own and published
    as their own events (:meth:`completed`); call :meth:`close` when done."""

    def __init__(self, encoder: WindowEncoder, language: LanguageStage | None = None, *,
                 scheduler: ChangeScheduler, profile: str = "compact",
                 follow: bool = False) -> None:
        self.encoder = encoder
        self.language = language
        self.scheduler = scheduler
        self.profile = profile
        self.components = dict(encoder.components)
        if language is not None:
            self.components.update(language.components)
        self.llm_calls = 0
        self.llm_shed = 0
        self.llm_failed = 0
        self.descriptions_reused = 0
        self._pool = (ThreadPoolExecutor(1, thread_name_prefix="facestream-describe")
                      if follow and language is not None else None)
        self._jobs: deque[tuple[Future, list[_Job]]] = deque()
        self._latest_job: dict[tuple[int, str], _Job] = {}
        self._ready: list[dict[str, Any]] = []

    @property
    def follows(self) -> bool:
        """Descriptions come as their own events, after their windows' events."""
        return self._pool is not None

    @property
    def describing(self) -> int:
        """Windows whose description is being written."""
        return sum(len(jobs) for _, jobs in self._jobs)

    def analyze(self, items: list[tuple[StreamState, FaceWindow]]) -> list[dict[str, Any]]:
        """Analysis events for the windows, in the order given.  Blocking."""
        if not items:
            return []
        outputs = self.encoder.encode([w for _, w in items])
        signals = [CheapSignals.from_window(w, out) for (_, w), out in zip(items, outputs)]
        decisions = [REUSE] * len(items)
        answers: dict[int, Answer] = {}
        submitted: dict[int, _Job] = {}
        if self.language is not None:
            decisions = self._decide(items, signals)
            due = [i for i, d in enumerate(decisions) if d.fresh]
            if due and self._pool is not None:
                submitted = self._submit(items, outputs, signals, decisions, due)
            elif due:
                picked = [(items[i][1], outputs[i]) for i in due]
                answers = {i: a for i, a in zip(due, self.language.answer(picked))
                           if a is not None}
                for i in set(due) - set(answers):    # shed: the window keeps the last answer
                    decisions[i] = REUSE
                self.llm_shed += len(due) - len(answers)
                self.llm_calls += len(due)
            self.descriptions_reused += len(items) - len(due)
        result = []
        for i, ((state, window), out) in enumerate(zip(items, outputs)):
            memory = state.memory.setdefault(window.track_id, TrackMemory())
            follows = i in submitted
            if follows:
                self._install(submitted[i])
            else:
                self._await_reference(state, window.track_id)
            if i in answers:
                memory.description = answers[i].description
                memory.fields = dict(answers[i].fields)
                memory.answered = Answered(signals[i], window.start_s)
            memory.latest = out
            result.append(self._event(state, window, out, signals=signals[i], memory=memory,
                                      decision=decisions[i], follows=follows))
            if window.final:
                del state.memory[window.track_id]        # the track has ended
        for state in {id(state): state for state, _ in items}.values():
            while state.ended_tracks:
                state.memory.pop(state.ended_tracks.pop(), None)
        return result

    def completed(self, *, wait: bool = False) -> list[dict[str, Any]]:
        """The description events written since the last call, in the order their windows
        were analysed; ``wait``: first wait until every description asked for is written.
        Never blocks otherwise."""
        while self._jobs and (wait or self._jobs[0][0].done()):
            self._settle_next()
        ready, self._ready = self._ready, []
        return ready

    def close(self) -> None:
        """Wait for the descriptions being written (collect them with :meth:`completed`),
        then stop the describer's thread."""
        if self._pool is not None:
            while self._jobs:
                self._settle_next()
            self._pool.shutdown(wait=True)

    def _decide(self, items: list[tuple[StreamState, FaceWindow]],
                signals: list[CheapSignals]) -> list[Decision]:
        """The scheduler's decision per window, in order, so that a later window of a track
        in the same batch is compared with an earlier one that was picked."""
        decisions = []
        answered: dict[tuple[int, str], Answered | None] = {}
        for (state, w), sig in zip(items, signals):
            key = (id(state), w.track_id)
            if key not in answered:
                answered[key] = state.memory.get(w.track_id, TrackMemory()).answered
            decision = self.scheduler.decide(answered[key], sig, time_s=w.start_s)
            if decision.fresh:
                answered[key] = Answered(sig, w.start_s)
            decisions.append(decision)
        return decisions

    def _submit(self, items, outputs, signals, decisions, due: list[int]) -> dict[int, _Job]:
        """Hand the picked windows to the describer's thread as one batch."""
        assert self._pool is not None and self.language is not None
        jobs = {}
        for i in due:
            state, window = items[i]
            memory = state.memory.setdefault(window.track_id, TrackMemory())
            jobs[i] = _Job(state, window, outputs[i], memory,
                           Answered(signals[i], window.start_s), decisions[i].reason)
            state.pending.append(jobs[i])
        self._write(list(jobs.values()))
        return jobs

    def resume(self, state: StreamState) -> None:
        """Ask again for the descriptions ``state`` (restored from a checkpoint) was waiting
        for, as one batch; until they are written, windows that would show them wait, as
        they did on the worker that saved it.  Without a describer thread, they are
        dropped (the tracks keep their last written descriptions)."""
        jobs = [job for job in state.pending if not job.settled]
        if self._pool is None or not jobs:
            for job in jobs:
                if job.memory.answered is job.answered:
                    job.memory.answered = job.previous
            state.pending = []
            return
        for job in jobs:
            self._latest_job[(id(state), job.window.track_id)] = job
        self._write(jobs)

    def _write(self, jobs: list[_Job]) -> None:
        """Hand ``jobs`` to the describer's thread as one batch."""
        assert self._pool is not None and self.language is not None
        picked = [(job.window, job.output) for job in jobs]
        language = self.language

        def write() -> tuple[list[Answer | None], float]:
            started = time.monotonic()
            answers = language.answer(picked)
            return answers, time.monotonic() - started

        self._jobs.append((self._pool.submit(write), jobs))
        self.llm_calls += len(jobs)

    def _install(self, job: _Job) -> None:
        """The scheduler compares the track's next windows with ``job``'s from now on."""
        job.previous, job.memory.answered = job.memory.answered, job.answered
        job.installed = True
        self._latest_job[(id(job.state), job.window.track_id)] = job
        if job.settled:
            self._apply(job)

    def _await_reference(self, state: StreamState, track_id: str) -> None:
        """A window that shows the track's last description waits until it is written."""
        job = self._latest_job.get((id(state), track_id))
        while job is not None and not job.settled:
            self._settle_next()

    def _settle_next(self) -> None:
        """Wait for the oldest batch being described; its sentences go out as description
        events, and to the tracks' memories (:meth:`_apply`)."""
        future, jobs = self._jobs.popleft()
        try:
            answers, seconds = future.result()
        except Exception as exc:     # the describer failed: these windows go undescribed
            log.warning("descriptions of %d windows failed: %s", len(jobs),
                        f"{type(exc).__name__}: {exc}"[:200])
            answers, seconds = [None] * len(jobs), 0.0
            self.llm_failed += len(jobs)
        else:
            self.llm_shed += sum(a is None for a in answers)
        for job, answer in zip(jobs, answers):
            job.settled, job.answer = True, answer
            job.state.pending = [j for j in job.state.pending if j is not job]
            if job.installed:
                self._apply(job)
            if answer is None:
                continue
            first = job.window.samples[0]
            self._ready.append(events.face_description(
                job.window, description=answer.description, trigger=job.trigger,
                profile=self.profile, components=self.components,
                time_epoch=job.state.event_time(first.time_s, first.arrival),
                generation_ms=seconds * 1000))

    def _apply(self, job: _Job) -> None:
        """A written and installed description becomes the track's, unless a later window's
        has replaced it meanwhile; none written (shed, failed): the track's previous
        reference is put back, so its next window is compared with that one again."""
        key = (id(job.state), job.window.track_id)
        if self._latest_job.get(key) is job:
            del self._latest_job[key]
        if job.memory.answered is not job.answered:
            return
        if job.answer is None:
            job.memory.answered = job.previous
        else:
            job.memory.description = job.answer.description
            job.memory.fields = dict(job.answer.fields)

    def _event(self, state: StreamState, window: FaceWindow, out: EncoderOutput, *,
               signals: CheapSignals, memory: TrackMemory, decision: Decision,
               follows: bool = False) -> dict[str, Any]:
        answer = None
        if follows:          # written for this window, not yet here
            answer = Described(None, window.start_s, False)
        elif self.language is not None and memory.answered is not None:
            answer = Described(memory.description, memory.answered.start_s, not decision.fresh,
                               memory.fields or {})
        first = window.samples[0]
        return events.face_analysis(
            window, out, head_pose=signals.head_pose.as_dict(), profile=self.profile,
            components=self.components, trigger=decision.reason,
            time_epoch=state.event_time(first.time_s, first.arrival), answer=answer,
            follows=follows)
