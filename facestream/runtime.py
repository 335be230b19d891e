"""Process-wide tuning that the entry points (CLI, workers, benchmarks) apply once."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
ARENAS = 2


def tune_allocator() -> bool:
    """Let glibc serve large buffers (decoded frames: 0.7 MB at 360p, 6 MB at 1080p) from
    the heap and reuse them, instead of a fresh mmap per frame.

    By default every allocation over the mmap threshold is a new mapping whose pages fault
    in and are zeroed on first touch; once a pipeline holds more than one frame at a time,
    that costs a quarter of decode time.  Those reused buffers are held per malloc arena,
    and glibc makes up to 8 arenas per core for threads (the worker's decode/face threads,
    ONNX Runtime's, PyAV's): each arena's high-water mark stays resident, so a long-running
    worker's memory climbed in steps; ``ARENAS`` arenas keep it flat (bench/bench_soak.py).
    Call before threads start.  Returns False where the C library has no ``mallopt`` (not
    glibc) and nothing was changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return (bool(mallopt(_M_MMAP_THRESHOLD, 64 << 20))
            and bool(mallopt(_M_TRIM_THRESHOLD, 128 << 20))
            and bool(mallopt(_M_ARENA_MAX, ARENAS)))
