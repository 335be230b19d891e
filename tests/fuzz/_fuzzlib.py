"""What the fuzz harnesses share: a data provider that turns the fuzzer's bytes into typed
values, and the writer that does the reverse (``make_seeds.py`` encodes real chunks with it).

Why not ``atheris.FuzzedDataProvider``: every harness's ``TestOneInput`` must replay the
corpus in plain Python (``tests/fuzz/test_corpus.py``, part of the normal suite, where atheris
is not installed), and seeds made from real chunks need an encoding that can be written as
well as read.  This provider is both: fields are read off the front of the input, in order,
little-endian; a short input reads as zeros, so every byte string is a valid input.

Nothing here imports facestream: the harnesses import it inside ``atheris.instrument_imports``.
"""

from __future__ import annotations

import struct

_DOUBLE = struct.Struct("<d")
TEXT_MODES = 4          # latin-1, UTF-8 (surrogateescape), UTF-16 (lone surrogates), code points


def _width(span: int) -> int:
    """Bytes that hold a number below ``span``."""
    return max(1, ((span - 1).bit_length() + 7) // 8)


class Provider:
    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        out = self._data[self._pos:self._pos + max(0, n)]
        self._pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes), "little")

    def int_in(self, low: int, high: int) -> int:
        span = high - low + 1
        return low + self.uint(_width(span)) % span

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)

    def pick(self, options):
        return options[self.int_in(0, len(options) - 1)]

    def blob(self, max_len: int) -> bytes:
        """A length (uint32) and that many bytes, at most ``max_len``."""
        return self.take(min(self.uint(4), max_len))

    def double(self) -> float:
        """Any IEEE double: NaN, infinities, subnormals, -0.0 included."""
        return _DOUBLE.unpack(self.take(8).ljust(8, b"\0"))[0]

    def text(self, max_chars: int, *, surrogates: bool = True) -> str:
        """Any str of at most ``max_chars`` characters; with ``surrogates`` it may hold lone
        surrogates (as OS text decoded with surrogateescape does)."""
        mode = self.uint(1) % TEXT_MODES
        raw = self.blob(4 * max_chars)
        if mode == 0:
            text = raw.decode("latin-1")
        elif mode == 1:
            text = raw.decode("utf-8", "surrogateescape")
        elif mode == 2:
            text = raw[:len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")
        else:
            text = "".join(chr(int.from_bytes(raw[i:i + 3], "little") % 0x110000)
                           for i in range(0, len(raw) - 2, 3))
        if not surrogates:
            text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
        return text[:max_chars]


class Writer:
    """The inverse of :class:`Provider`: what make_seeds.py writes."""

    def __init__(self) -> None:
        self._out = bytearray()

    def bytes(self) -> bytes:
        return bytes(self._out)

    def raw(self, data: bytes) -> "Writer":
        self._out += data
        return self

    def uint(self, value: int, nbytes: int) -> "Writer":
        self._out += value.to_bytes(nbytes, "little")
        return self

    def int_in(self, value: int, low: int, high: int) -> "Writer":
        assert low <= value <= high
        return self.uint(value - low, _width(high - low + 1))

    def flag(self, value: bool) -> "Writer":
        return self.uint(int(value), 1)

    def pick(self, value, options) -> "Writer":
        return self.int_in(list(options).index(value), 0, len(options) - 1)

    def blob(self, data: bytes) -> "Writer":
        return self.uint(len(data), 4).raw(data)

    def double(self, value: float) -> "Writer":
        return self.raw(_DOUBLE.pack(value))

    def text(self, value: str) -> "Writer":
        return self.uint(1, 1).blob(value.encode("utf-8", "surrogateescape"))
