"""Fuzz target ``message``: the video-topic message and header parser,
:func:`facestream.ingest.chunks.parse_message`.

Contract: for any headers (str name, bytes value), any value and any key it returns a Chunk,
an EndOfStream or a MediaClock, or raises ChunkError with a message of at most 300
characters; nothing else escapes.  A Chunk it returns keeps every bound at the top of chunks.py, and its headers
round-trip: ``parse_message(chunk.headers(), chunk.payload)`` gives back the same fields.

Input layout (see _fuzzlib.Provider): flags (bit 0: a key follows, bit 1: value is None),
[key blob], header count, per header (name, value blob), then the value: the rest.

    python tests/fuzz/fuzz_message.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import dataclasses
import sys

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream.ingest import chunks
        from facestream.ingest.sources import is_stream_id
else:
    from facestream.ingest import chunks
    from facestream.ingest.sources import is_stream_id

# Header names by index (the rest: a name from the input); fs-x is no header of the format.
NAMES = ("fs-stream", "fs-seq", "fs-part", "fs-codec", "fs-extradata", "fs-time-base",
         "fs-origin-pts", "fs-pts", "fs-size", "fs-format", "fs-live", "fs-end", "fs-x")
MAX_HEADERS = 24
MAX_ERROR = 300


def read_message(data: bytes):
    """(headers, value, key) from a fuzzer input."""
    p = Provider(data)
    flags = p.uint(1)
    key = p.blob(512) if flags & 1 else None
    headers = []
    for _ in range(p.uint(1) % (MAX_HEADERS + 1)):
        index = p.uint(1)
        name = NAMES[index] if index < len(NAMES) else p.text(80)
        headers.append((name, p.blob(chunks.MAX_EXTRADATA + 1)))
    value = None if flags & 2 else p.rest()
    return headers, value, key


def write_message(headers, value: bytes | None, key: bytes | None = None) -> bytes:
    """The input :func:`read_message` reads as (headers, value, key)."""
    w = Writer().uint((key is not None) | (value is None) << 1, 1)
    if key is not None:
        w.blob(key)
    w.uint(len(headers), 1)
    for name, raw in headers:
        if name in NAMES:
            w.uint(NAMES.index(name), 1)
        else:
            w.uint(255, 1).text(name)
        w.blob(raw)
    return w.raw(value or b"").bytes()


def fields_of(message) -> tuple:
    return tuple(getattr(message, f.name) for f in dataclasses.fields(message))


def check_chunk(chunk: "chunks.Chunk") -> None:
    assert is_stream_id(chunk.stream_id), chunk.stream_id
    assert 0 <= chunk.seq <= chunks.MAX_SEQ, chunk.seq
    assert 1 <= chunk.part <= chunk.parts <= chunks.MAX_PARTS, (chunk.part, chunk.parts)
    assert 1 <= chunk.width <= chunks.MAX_SIDE and 1 <= chunk.height <= chunks.MAX_SIDE
    assert chunk.codec in chunks.CODECS, chunk.codec
    assert len(chunk.extradata) <= chunks.MAX_EXTRADATA
    tb = chunk.time_base
    assert 0 < tb.numerator <= chunks.MAX_TIME_BASE_TERM, tb
    assert 0 < tb.denominator <= chunks.MAX_TIME_BASE_TERM, tb
    assert abs(chunk.start_s) <= chunks.MAX_MEDIA_S, chunk.start_s
    assert chunk.payload and isinstance(chunk.payload, bytes)
    assert isinstance(chunk.live, bool)


def check(headers, value, key) -> None:
    try:
        message = chunks.parse_message(headers, value, key=key)
    except chunks.ChunkError as exc:
        assert len(str(exc)) <= MAX_ERROR, f"{len(str(exc))} characters: {str(exc)[:400]}"
        return
    if key is not None:
        assert key == message.stream_id.encode()
    if isinstance(message, chunks.EndOfStream):
        assert is_stream_id(message.stream_id) and 0 <= message.last_seq <= chunks.MAX_SEQ
        again = chunks.parse_message(message.headers(), None, key=message.stream_id.encode())
        assert again == message, (again, message)
        return
    if isinstance(message, chunks.MediaClock):
        assert is_stream_id(message.stream_id) and 0 <= message.last_seq <= chunks.MAX_SEQ
        assert abs(message.media_us) <= chunks.MAX_MEDIA_S * 1e6
        again = chunks.parse_message(message.headers(), None, key=message.stream_id.encode())
        assert again == message, (again, message)
        return
    assert isinstance(message, chunks.Chunk), type(message)
    check_chunk(message)
    again = chunks.parse_message(message.headers(), message.payload,
                                 key=message.stream_id.encode())
    assert isinstance(again, chunks.Chunk) and fields_of(again) == fields_of(message), \
        (fields_of(again)[:-5], fields_of(message)[:-5])
    # The framing contract holds on whatever payload a message carried.
    try:
        packets = message.packets()
    except chunks.ChunkError as exc:
        assert len(str(exc)) <= MAX_ERROR, str(exc)[:400]
    else:
        assert packets and packets[0].keyframe


def TestOneInput(data: bytes) -> None:
    check(*read_message(data))


if __name__ == "__main__":
    atheris.instrument_all()        # the standard library's parsing too: more branches to see
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
