"""What the camera supervisor knows about each stream, without any transport: its state
machine, counters and rates (:class:`StreamStatus`), where its chunks go
(:func:`chunk_topic`) and how its URL is shown (:func:`facestream.errors.redact`).

The supervisor (:mod:`facestream.workers.supervisor`) writes :meth:`StreamStatus.fields` to
the Redis hash ``{stream_status_prefix}:{id}`` and one ``facestream.stream.status`` event per
:class:`Transition` (docs/EVENTS.md, "Stream status").

States::

    connecting ──chunk──▶ live ──drop──▶ reconnecting ──chunk──▶ live
        │                  │                  │
        └──open fails──▶ reconnecting         └──limit reached──▶ failed
    live / connecting / reconnecting ──source ends──▶ ended
    any ──publisher crashed──▶ failed ──restart──▶ connecting
    any ──tombstone──▶ removed ──added again──▶ connecting

A reconnect attempt is a transition too (``reconnecting`` again, with the next ``attempt``
and its reason), so subscribers see every try.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from facestream.errors import redact

CONNECTING, LIVE, RECONNECTING, FAILED, ENDED, REMOVED = (
    "connecting", "live", "reconnecting", "failed", "ended", "removed")
STATES = (CONNECTING, LIVE, RECONNECTING, FAILED, ENDED, REMOVED)
DEFAULT_PROFILE = "compact"


def chunk_topic(video_topic: str, profile: str | None) -> str:
    """The topic a stream of ``profile`` is published to and workers of that profile read:
    ``video_topic`` for the default profile (compact) or none, ``{video_topic}.{profile}``
    for any other, so each chunk reaches only workers that run its profile."""
    if profile in (None, DEFAULT_PROFILE):
        return video_topic
    return f"{video_topic}.{profile}"


@dataclass(frozen=True)
class Transition:
    """A change of a stream's state (or, in ``reconnecting``, of its attempt)."""

    stream_id: str
    state: str
    previous: str | None
    reason: str
    attempt: int
    seq: int                  # this stream's transitions under this supervisor, from 0
    at: float                 # wall clock, epoch seconds


class StreamStatus:
    """One stream's state, counters and rates, as the supervisor keeps them.

    Publisher threads call :meth:`connecting`, :meth:`retrying`, :meth:`chunk`,
    :meth:`failed`, :meth:`ended`, :meth:`removed`; each returns the :class:`Transition` to
    announce, or None when the state did not change.  :meth:`fields` is the status hash.
    Thread-safe.  ``clock`` is the wall clock (epoch seconds), ``monotonic`` the rate's.
    """

    def __init__(self, stream_id: str, *, url: str, fps: float, profile: str,
                 publisher: str, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 rate_span_s: float = 5.0) -> None:
        self.stream_id = stream_id
        self.url = redact(url)
        self.fps = fps
        self.profile = profile
        self.publisher = publisher
        self.state: str | None = None
        self.last_error = ""
        self.last_frame_at: float | None = None
        self.frames = 0
        self.bytes = 0
        self.reconnects = 0
        self.attempt = 0
        self.restarts = 0
        self._seq = 0
        self._clock = clock
        self._lock = threading.Lock()
        self._frames = RateWindow(rate_span_s, monotonic)

    # -- transitions ------------------------------------------------------------------------

    def connecting(self, reason: str = "") -> Transition | None:
        with self._lock:
            self.attempt = 0
            return self._move(CONNECTING, reason)

    def retrying(self, attempt: int, reason: str) -> Transition | None:
        """A reconnect is about to be tried (after its delay): ``attempt`` from 1."""
        with self._lock:
            self.attempt = attempt
            self.reconnects += 1
            self.last_error = reason
            return self._move(RECONNECTING, reason, force=True)

    def chunk(self, frames: int, size: int) -> Transition | None:
        """A chunk of ``frames`` frames and ``size`` bytes was published."""
        with self._lock:
            self.frames += frames
            self.bytes += size
            self.last_frame_at = self._clock()
            self._frames.add(frames)
            if self.state == LIVE:
                return None
            self.attempt = 0
            self.last_error = ""
            return self._move(LIVE, "")

    def failed(self, reason: str) -> Transition | None:
        with self._lock:
            self.last_error = reason
            return self._move(FAILED, reason, force=True)

    def ended(self, reason: str) -> Transition | None:
        with self._lock:
            return self._move(ENDED, reason)

    def removed(self) -> Transition | None:
        with self._lock:
            return self._move(REMOVED, "removed from the registry")

    def _move(self, state: str, reason: str, *, force: bool = False) -> Transition | None:
        if state == self.state and not force:
            return None
        transition = Transition(self.stream_id, state, self.state, reason, self.attempt,
                                self._seq, self._clock())
        self._seq += 1
        self.state = state
        return transition

    # -- reading ------------------------------------------------------------------------------

    def frames_per_s(self) -> float:
        with self._lock:
            return self._frames.rate()

    def fields(self) -> dict[str, str]:
        """The status hash's supervisor fields, as strings."""
        with self._lock:
            return {
                "state": self.state or CONNECTING,
                "url": self.url,
                "fps": f"{self.fps:g}",
                "profile": self.profile,
                "last_error": self.last_error,
                "last_frame_at": "" if self.last_frame_at is None else f"{self.last_frame_at:.3f}",
                "frames": str(self.frames),
                "bytes": str(self.bytes),
                "reconnects": str(self.reconnects),
                "attempt": str(self.attempt),
                "frames_per_s": f"{self._frames.rate():.2f}",
                "publisher": self.publisher,
                "updated_at": f"{self._clock():.3f}",
            }


class RateWindow:
    """A count per second over the last ``span_s`` seconds (a sliding window of marks)."""

    def __init__(self, span_s: float, clock: Callable[[], float]) -> None:
        self._span = span_s
        self._clock = clock
        self._marks: deque[tuple[float, int]] = deque()     # (time, count added then)
        self._sum = 0

    def add(self, n: int) -> None:
        now = self._clock()
        self._marks.append((now, n))
        self._sum += n
        self._trim(now)

    def rate(self) -> float:
        self._trim(self._clock())
        return self._sum / self._span

    def _trim(self, now: float) -> None:
        while self._marks and self._marks[0][0] <= now - self._span:
            self._sum -= self._marks.popleft()[1]
