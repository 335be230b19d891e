"""Fuzz target ``dead_letters``: :func:`facestream.workers.dead_letters.dead_letter`.

Contract: for any consumer record (topic, partition, offset, key, value, headers of str names
and bytes-or-None values, as kafka-python gives them) and any reason, the dead letter's key,
value and headers (names counted as UTF-8) together take at most
``max(limit, key + the fs-* headers dead_letter adds)`` bytes: the limit, unless the headers
that say why and where cannot fit in it, in which case the original headers and value go
first.  Every header value is bytes and every name encodes as UTF-8; fs-error is one line of
at most MAX_REASON characters; the value is a prefix of the original; fs-source-* say where
it was read and how big it was; fs-truncated is 1 exactly when something was cut.

Input layout: limit (mode byte, number), partition, offset, topic, flags, key, reason,
header count, headers, then the value: the rest.

    python tests/fuzz/fuzz_dead_letters.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream.workers import dead_letters as dl
else:
    from facestream.workers import dead_letters as dl

# The worker's limit is max_message_bytes (10 kB .. 100 MB); 0 is the sender's fallback.
LIMITS = (0, 10_000, 1_000_000)
TOPICS = ("facestream.video", "t", "x" * 249)
ADDED = ("fs-error", "fs-source-topic", "fs-source-partition", "fs-source-offset",
         "fs-source-size", "fs-truncated")


def write_input(*, limit: int, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes | None]], reason: str, offset: int = 0,
                partition: int = 0, topic: str = "facestream.video") -> bytes:
    w = Writer()
    w.uint(0, 1).int_in(limit, 0, 2_000_000) if limit not in LIMITS else \
        w.uint(1, 1).pick(limit, LIMITS)
    w.int_in(partition, 0, 2 ** 31 - 1).int_in(offset, 0, 2 ** 63 - 1).pick(topic, TOPICS)
    w.uint((key is not None) | (value is None) << 1, 1)
    if key is not None:
        w.blob(key)
    w.text(reason).uint(len(headers), 1)
    for name, raw in headers:
        w.text(name).flag(raw is not None)
        if raw is not None:
            w.blob(raw)
    return w.raw(value or b"").bytes()


def size(name: str, raw: bytes) -> int:
    return len(name.encode("utf-8")) + len(raw)


def TestOneInput(data: bytes) -> None:
    p = Provider(data)
    limit = p.int_in(0, 2_000_000) if p.uint(1) % 2 == 0 else p.pick(LIMITS)
    partition, offset, topic = p.int_in(0, 2 ** 31 - 1), p.int_in(0, 2 ** 63 - 1), p.pick(TOPICS)
    flags = p.uint(1)
    key = p.blob(4096) if flags & 1 else None
    reason = p.text(4096)
    headers = []
    for _ in range(p.uint(1) % 64):
        # Names as kafka-python decodes them (strict UTF-8: no lone surrogates).
        name = p.text(300, surrogates=False)
        headers.append((name, p.blob(4096) if p.flag() else None))
    value = None if flags & 2 else p.rest()
    record = SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key,
                             value=value, headers=headers)

    letter = dl.dead_letter(record, reason, limit=limit)

    assert all(isinstance(n, str) and isinstance(v, bytes) for n, v in letter.headers)
    for n, _ in letter.headers:
        n.encode("utf-8")
    assert isinstance(letter.value, bytes) and (letter.key is None or isinstance(letter.key, bytes))
    # The original headers (an original may be called fs-error too), then the added ones.
    n_added = 6 if letter.headers[-1][0] == "fs-truncated" else 5
    added, copied = letter.headers[-n_added:], letter.headers[:-n_added]
    assert [n for n, _ in added] == list(ADDED[:n_added]), [n for n, _ in added]
    h = dict(added)
    original = value or b""
    assert h["fs-source-topic"] == topic.encode()
    assert h["fs-source-partition"] == str(partition).encode()
    assert h["fs-source-offset"] == str(offset).encode()
    assert h["fs-source-size"] == str(len(original)).encode()
    error = h["fs-error"].decode("utf-8")
    assert len(error) <= dl.MAX_REASON and "\n" not in error and "\r" not in error

    total = (len(letter.key or b"") + len(letter.value)
             + sum(size(n, v) for n, v in letter.headers))
    floor = len(letter.key or b"") + sum(size(n, v) for n, v in added)
    assert total <= max(limit, floor), f"{total} bytes, limit {limit} (fs-* and key: {floor})"

    assert original.startswith(letter.value)
    assert len(copied) <= dl.MAX_COPIED_HEADERS and all(len(n) <= 64 for n, _ in copied)
    cut = (len(letter.value) < len(original) or letter.key != key or len(copied) < len(headers)
           or any(v != (raw or b"") for (_, v), (_, raw) in zip(copied, headers)))
    assert (h.get("fs-truncated") == b"1") == cut, (h.get("fs-truncated"), cut)
    if key is not None:
        assert key.startswith(letter.key) and len(letter.key) <= dl.MAX_KEY


if __name__ == "__main__":
    atheris.instrument_all()        # the standard library's parsing too: more branches to see
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
