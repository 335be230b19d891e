"""The error tree.

Two kinds of failure and nothing in between:

* recoverable, data-shaped problems (a bad chunk, a dropped camera, a damaged tail) become
  error events or warnings and processing goes on;
* ``FacestreamError`` subclasses stop the thing they concern.  The CLI turns them into a
  one-line message and an exit code; nothing else should catch them broadly.

Messages say what was expected, what came, and what to do.
"""

from __future__ import annotations

import re


class FacestreamError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class InputError(FacestreamError):
    """A source that cannot be used: missing, empty, not video, unsupported codec, no answer."""

    exit_code = 2


class SourceDropped(InputError):
    """A live source stopped delivering and reconnecting did not bring it back."""


class AssetError(FacestreamError):
    """A model file is missing or corrupt; the message names the command that fixes it."""

    exit_code = 2


class ConfigError(FacestreamError):
    """Settings that cannot be right: unknown keys, values out of range, conflicting fields."""

    exit_code = 2


def bounded(text: str, limit: int = 300) -> str:
    """``text`` cut to at most ``limit`` characters, saying how much was left out: error
    text that quotes what came from outside (a header, a key) must not grow with it."""
    if len(text) <= limit:
        return text
    tail = f"... [{len(text) - limit} more characters]"
    return text[:max(0, limit - len(tail))] + tail


_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``
    (``rtsp://admin:secret@cam/`` -> ``rtsp://admin:***@cam/``): for camera and service
    URLs in messages, status and API answers."""
    return _CREDENTIALS.sub(r"\g<head>:***@", text)
