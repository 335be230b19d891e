"""Fuzz target ``registry``: the stream registry's spec parser,
:meth:`facestream.ingest.registry.StreamSpec.from_json` then :func:`registry.validate`.

Contract: for any stream id (the record's key, decoded) and any value bytes it gives a spec
and a source, or raises SpecError whose message is at most 300 characters (the id and the
values come from the wire: they are quoted only in part); nothing else escapes.  An accepted
spec keeps the allow-list: no local file unless registry_allow_files, only the configured URL
schemes, and never a numeric host that is not a public address unless registry_allow_private.

No traffic: ``socket.getaddrinfo`` is replaced, in this process, by one that only parses
numeric hosts (AI_NUMERICHOST: "127.1", "2130706433", "::1" resolve as the real resolver
would; a name fails with gaierror, as an unresolvable one does).  Local-file sources are
only looked at (stat), never opened.

Input layout: settings (1 byte, index into SETTINGS), the stream id (text), then the value:
the rest.

    python tests/fuzz/fuzz_registry.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from urllib.parse import urlparse

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream.config import Settings
        from facestream.ingest import registry
        from facestream.ingest.sources import is_stream_id
else:
    from facestream.config import Settings
    from facestream.ingest import registry
    from facestream.ingest.sources import is_stream_id

_getaddrinfo = socket.getaddrinfo


def numeric_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    """getaddrinfo that never asks a resolver: numeric hosts only."""
    return _getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


def _settings(**overrides) -> "Settings":
    return Settings.load(overrides, environ={})


SETTINGS = (
    _settings(),
    _settings(registry_allow_files=True),
    _settings(registry_hosts="cams.example.com,10.0.0.7"),
    _settings(registry_allow_private=True, registry_schemes="rtsp,http,webcam,ftp"),
)
MAX_ERROR = 300


def write_input(stream_id: str, value: bytes, *, settings: int = 0) -> bytes:
    return Writer().int_in(settings, 0, len(SETTINGS) - 1).text(stream_id).raw(value).bytes()


def numeric_addresses(host: str) -> list[str] | None:
    try:
        return [info[4][0] for info in numeric_getaddrinfo(host, None)]
    except (socket.gaierror, UnicodeError, ValueError):
        return None


def check(stream_id: str, value: bytes, settings: "Settings") -> None:
    try:
        spec = registry.StreamSpec.from_json(stream_id, value)
        source = registry.validate(spec, settings)
    except registry.SpecError as exc:
        assert len(str(exc)) <= MAX_ERROR, f"{len(str(exc))} characters: {str(exc)[:400]!r}"
        return
    assert spec.stream_id == stream_id and is_stream_id(stream_id)
    assert 0.1 <= spec.fps <= 120 and spec.profile in registry.PROFILES
    # What the publisher will open (source.target), not what the spec's text looks like.
    if source.kind in ("file", "image"):
        assert settings.registry_allow_files, f"a local file got through: {spec.source!r}"
        return
    if source.kind == "webcam":
        assert "webcam" in settings.registry_schemes.split(","), spec.source
        return
    url = urlparse(source.target)
    assert url.scheme.lower() in settings.registry_schemes.split(","), spec.source
    host = (url.hostname or "").lower()
    if settings.registry_hosts:
        assert host in settings.registry_hosts.split(","), spec.source
    if not settings.registry_allow_private:
        for address in numeric_addresses(host) or ():
            assert ipaddress.ip_address(address.split("%")[0]).is_global, \
                f"private address {address} got through: {spec.source!r}"


def TestOneInput(data: bytes) -> None:
    p = Provider(data)
    settings = p.pick(SETTINGS)
    stream_id = p.text(2048, surrogates=False)     # keys are decoded with errors="replace"
    value = p.rest()
    socket.getaddrinfo = numeric_getaddrinfo
    try:
        check(stream_id, value, settings)
    finally:
        socket.getaddrinfo = _getaddrinfo


if __name__ == "__main__":
    # The parsing is mostly the standard library's (json, urllib.parse, ipaddress, pathlib):
    # instrument it too, so that the fuzzer sees its branches.
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
