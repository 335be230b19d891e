"""Sources: what the user typed as a :class:`SourceSpec`, and how a source is opened.

A source is a video file, an image file (analysed as a one-frame clip), an ``rtsp://`` /
``rtmp://`` / ``http(s)://`` URL, or a webcam (``webcam:0``).  :func:`open_container` opens
one for demuxing; :class:`Reconnector` is the one reconnect loop of a live source, shared by
the decoder (embedded mode) and the chunk publisher (``ingest``).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Iterator, Literal
from urllib.parse import urlparse

import av

from facestream.errors import InputError, SourceDropped, bounded, redact
from facestream.retry import Backoff

SourceKind = Literal["file", "image", "url", "webcam"]
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
URL_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "udp", "srt"})
_WEBCAM = re.compile(r"^webcam:(\d+)$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# A stream id names Kafka keys, Redis keys and folders: letters, digits, '.', '_', '-', not
# starting with '.' or '-', at most 128 characters.
STREAM_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class SourceSpec:
    """A source, resolved.  ``target`` and ``format`` are what the demuxer opens."""

    text: str                 # as the user gave it, any password as *** (for messages)
    kind: SourceKind
    target: str               # file path, URL or device
    format: str | None        # forced demuxer (webcams), else probed
    name: str                 # short name: default stream id and output folder

    @property
    def live(self) -> bool:
        """Live sources can drop and are reconnected; files end."""
        return self.kind in ("url", "webcam")


def parse_source(text: str) -> SourceSpec:
    """Resolve ``text``; raises InputError for a missing file, an unknown scheme, or text
    that names nothing usable (an unknown ``~user``, a name too long for the system)."""
    try:
        return _parse_source(text)
    except (OSError, RuntimeError, ValueError) as exc:
        raise InputError(f"source {bounded(repr(redact(text)), 80)}: cannot be used "
                         f"({bounded(str(exc) or type(exc).__name__, 80)})") from None


def _parse_source(text: str) -> SourceSpec:
    text = text.strip()
    if not text:
        raise InputError("source is empty: give a video file, an image, a URL or webcam:N")
    if m := _WEBCAM.match(text):
        index = int(m.group(1))
        if sys.platform == "darwin":
            return SourceSpec(text, "webcam", str(index), "avfoundation", f"webcam{index}")
        return SourceSpec(text, "webcam", f"/dev/video{index}", "v4l2", f"webcam{index}")
    scheme = urlparse(text).scheme.lower()
    if scheme in URL_SCHEMES:
        parsed = urlparse(text)
        stem = Path(parsed.path).stem or parsed.hostname or "stream"
        return SourceSpec(redact(text), "url", text, None, stream_id_from(stem))
    if scheme == "file":
        text = urlparse(text).path
    elif len(scheme) > 1 and "://" in text:
        raise InputError(f"source {redact(text)}: unsupported scheme {scheme!r}; use a file, "
                         f"webcam:N or one of {', '.join(sorted(URL_SCHEMES))}")
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"source {text}: no such file")
    if path.is_dir():
        raise InputError(f"source {text}: is a directory, not a video or image file")
    if path.stat().st_size == 0:
        raise InputError(f"source {text}: file is empty")
    kind: SourceKind = "image" if path.suffix.lower() in IMAGE_SUFFIXES else "file"
    return SourceSpec(text, kind, str(path), None, stream_id_from(path.stem))


def stream_id_from(name: str) -> str:
    """A stream id made from a name the user chose (a file name, a URL path): unsafe
    characters become '-'.  Only for names typed by a person; an id that arrives on the
    wire is checked with :func:`is_stream_id` and refused, never rewritten."""
    cleaned = _UNSAFE.sub("-", name).strip("-.")
    return cleaned[:128].rstrip("-.") or "stream"


def is_stream_id(text: str) -> bool:
    return STREAM_ID.fullmatch(text) is not None


def open_container(spec: SourceSpec, *, timeout_s: float) -> av.container.InputContainer:
    """Open a source for demuxing; InputError with the reason when it cannot be used."""
    options = {}
    if spec.kind == "url":
        if spec.target.startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"
    try:
        container = av.open(spec.target, mode="r", format=spec.format, options=options,
                            timeout=timeout_s if spec.live else None)
    except FileNotFoundError:
        raise InputError(f"source {spec.text}: no such file or device") from None
    except av.error.FFmpegError as exc:
        raise InputError(f"source {spec.text}: cannot open ({error_reason(exc)})") from None
    except OSError as exc:
        raise InputError(f"source {spec.text}: cannot open ({exc.strerror or exc})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"source {spec.text}: no video stream (is it a video or image file?)")
    return container

def error_reason(exc: Exception) -> str:
    """The first clause of an FFmpeg or OS error, for one-line messages."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(";")[0].strip().rstrip(".") or type(exc).__name__


class Stopped(Exception):
    """The caller asked a :class:`Reconnector` to stop while it waited to reconnect."""


class Reconnector:
    """A source's connection, reopened with backoff when a live source drops.

    ``open()`` connects the first time (InputError when the source cannot be used; with
    ``retry=True`` a failed first open is retried like a drop).  After a drop,
    ``reopen(message)`` sleeps through the backoff's delays, trying again after each, and
    raises SourceDropped naming ``message`` once they are spent (an unbounded backoff never
    spends them); each failed try goes to ``on_error``, and ``on_retry(attempt, reason,
    delay_s)`` hears of each wait before it starts.  With ``stop`` set during a wait,
    :class:`Stopped` is raised.  ``recovered()`` (a good frame or chunk came through)
    restarts the backoff.  ``resume_s(reached_s)`` is where media time goes on after a
    reconnect: from where it stopped, at least as far as the wall clock went meanwhile (a
    source read faster than real time is ahead of the clock), so time never runs backwards
    across a reconnect.
    """

    def __init__(self, spec: SourceSpec, *, timeout_s: float, backoff: Backoff,
                 on_error: Callable[[str], None] | None = None,
                 on_retry: Callable[[int, str, float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 stop=None) -> None:
        self.spec = spec
        self.reconnects = 0
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._on_error = on_error or (lambda message: None)
        self._on_retry = on_retry or (lambda attempt, reason, delay: None)
        self._sleep = sleep
        self._clock = clock
        self._stop = stop
        self._delays: Iterator[float] = backoff.delays()
        self._attempt = 0                  # tries since the last good chunk
        self._started = clock()

    def open(self, *, retry: bool = False) -> av.container.InputContainer:
        self.restart_clock()
        try:
            return open_container(self.spec, timeout_s=self._timeout_s)
        except InputError as exc:
            if not retry:
                raise
            self._on_error(str(exc))
            container = self.reopen(str(exc), reason=str(exc))
            self.restart_clock()
            return container

    def restart_clock(self) -> None:
        """Count wall time for :meth:`resume_s` from now (when reading starts)."""
        self._started = self._clock()

    def recovered(self) -> None:
        self._delays = self._backoff.delays()
        self._attempt = 0

    def reopen(self, message: str, *, reason: str | None = None) -> av.container.InputContainer:
        steps = self.reopening(message, reason=reason)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    def reopening(self, message: str, *, reason: str | None = None
                  ) -> Generator[float, None, av.container.InputContainer]:
        """:meth:`reopen` step by step: yields each delay just before waiting it (so a
        caller that iterates can say, before the wait, where media time will resume:
        ``resume_s(reached_s, after_s=delay)``), and returns the container."""
        reason = reason or message
        for delay in self._delays:
            self._attempt += 1
            self._on_retry(self._attempt, reason, delay)
            yield delay
            self._wait(delay)
            self.reconnects += 1
            try:
                return open_container(self.spec, timeout_s=self._timeout_s)
            except InputError as exc:
                self._on_error(str(exc))
                reason = str(exc)
        raise SourceDropped(f"{message}; gave up after {self._backoff.attempts} reconnects")

    def _wait(self, delay: float) -> None:
        if self._stop is None:
            self._sleep(delay)
            return
        if self._stop.is_set() or self._stop.wait(delay):
            raise Stopped("stopped while waiting to reconnect")

    def resume_s(self, reached_s: float, *, after_s: float = 0.0) -> float:
        """Where media time goes on after a reconnect now (or ``after_s`` from now)."""
        return max(self._clock() - self._started + after_s, reached_s)
