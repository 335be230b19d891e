"""Parse what the user typed into a :class:`SourceSpec`.

A source is a video file, an image file (analysed as a one-frame clip), an ``rtsp://`` /
``rtmp://`` / ``http(s)://`` URL, or a webcam (``webcam:0``).  Only the spec is made here;
:mod:`facestream.workers.decode` opens it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from facestream.errors import InputError, bounded

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

    text: str                 # as the user gave it
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
        raise InputError(f"source {bounded(repr(text), 80)}: cannot be used "
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
        return SourceSpec(text, "url", text, None, stream_id_from(stem))
    if scheme == "file":
        text = urlparse(text).path
    elif len(scheme) > 1 and "://" in text:
        raise InputError(f"source {text}: unsupported scheme {scheme!r}; use a file, "
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
