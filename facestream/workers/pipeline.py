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

``facestream analyze`` (embedded) and the Kafka workers both drive these two classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from facestream import events
from facestream.events import Described
from facestream.config import Settings
from facestream.types import (Answer, DecodedFrame, EncoderOutput, FaceDetections, FaceSample,
                              FaceWindow, LanguageStage, WindowEncoder)
from facestream.vision.tracker import Track, Tracker
from facestream.workers.scheduler import REUSE, Answered, ChangeScheduler, CheapSignals, Decision
from facestream.workers.windows import Windower


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
        self.memory: dict[str, TrackMemory] = {}     # live tracks only
        self.frame_size = (0, 0)
        self.last_time_s = 0.0
        self.wall_origin = wall_origin     # source wall clock at media time 0, if known
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
                                faces.landmarks[j], faces.mesh[j], faces.chips.take(j))
            windows += self.windower.add(track, sample, self.frame_size)
        self.windower.discard_missing({t.key for t in self.tracker.active})
        ended = []
        for track in update.ended:
            windows += self.windower.close(track, self.frame_size)
            ended.append(self._track_event(events.TRACK_ENDED, track, frame.arrival, last=True))
        return started, windows, ended

    def finish(self) -> tuple[list[FaceWindow], list[dict[str, Any]]]:
        """End of stream: every open window and the end of every track."""
        windows, ended = [], []
        now = time.time()
        for track in self.tracker.finish():
            windows += self.windower.close(track, self.frame_size)
            ended.append(self._track_event(events.TRACK_ENDED, track, now, last=True))
        return windows, ended

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


class WindowAnalyzer:
    """Runs the visual stage and the language stage over windows from any number of streams.

    ``language`` (None: no LLM; events carry the cheap results only) is the profile's
    :class:`LanguageStage`; ``scheduler`` picks the windows it sees.  Events name
    ``profile``."""

    def __init__(self, encoder: WindowEncoder, language: LanguageStage | None = None, *,
                 scheduler: ChangeScheduler, profile: str = "compact") -> None:
        self.encoder = encoder
        self.language = language
        self.scheduler = scheduler
        self.profile = profile
        self.components = dict(encoder.components)
        if language is not None:
            self.components.update(language.components)
        self.llm_calls = 0
        self.llm_shed = 0
        self.descriptions_reused = 0

    def analyze(self, items: list[tuple[StreamState, FaceWindow]]) -> list[dict[str, Any]]:
        """Analysis events for the windows, in the order given.  Blocking."""
        if not items:
            return []
        outputs = self.encoder.encode([w for _, w in items])
        signals = [CheapSignals.from_window(w, out) for (_, w), out in zip(items, outputs)]
        decisions = [REUSE] * len(items)
        answers: dict[int, Answer] = {}
        if self.language is not None:
            # Decide in order, so that a later window of a track in the same batch is compared
            # with an earlier one that was picked; then describe the picked ones as one batch.
            answered: dict[tuple[int, str], Answered | None] = {}
            for i, ((state, w), sig) in enumerate(zip(items, signals)):
                key = (id(state), w.track_id)
                if key not in answered:
                    answered[key] = state.memory.get(w.track_id, TrackMemory()).answered
                decisions[i] = self.scheduler.decide(answered[key], sig, time_s=w.start_s)
                if decisions[i].fresh:
                    answered[key] = Answered(sig, w.start_s)
            due = [i for i, d in enumerate(decisions) if d.fresh]
            if due:
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
            if i in answers:
                memory.description = answers[i].description
                memory.fields = dict(answers[i].fields)
                memory.answered = Answered(signals[i], window.start_s)
            memory.latest = out
            result.append(self._event(state, window, out, signals=signals[i], memory=memory,
                                      decision=decisions[i]))
            if window.final:
                del state.memory[window.track_id]        # the track has ended
        return result

    def _event(self, state: StreamState, window: FaceWindow, out: EncoderOutput, *,
               signals: CheapSignals, memory: TrackMemory, decision: Decision) -> dict[str, Any]:
        described = self.language is not None and memory.answered is not None
        first = window.samples[0]
        return events.face_analysis(
            window, out, head_pose=signals.head_pose.as_dict(), profile=self.profile,
            components=self.components, trigger=decision.reason,
            time_epoch=state.event_time(first.time_s, first.arrival),
            answer=Described(memory.description, memory.answered.start_s, not decision.fresh,
                             memory.fields or {}) if described else None)
