"""float32 arithmetic on Python floats, for the few scalars computed per face.

The detector boxes are float32, so their centres and sides are float32 operations.  On
NumPy scalars each costs ~0.1 µs warm and several times that right after a model has run
(cold caches), and a face's geometry takes a dozen.  A Python float operation rounded to
float32 gives NumPy's float32 result for +, -, *, / and sqrt: the double result, rounded
again, is the correctly rounded float32 one (53 >= 2 * 24 + 2 bits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct

import numpy as np

_pack, _unpack = struct.Struct("<f").pack, struct.Struct("<f").unpack


def _libm_atan2f():
    """The C library's ``atan2f`` (what MediaPipe's calculators call), or None."""
    try:
        function = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6").atan2f
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_float
    function.argtypes = (ctypes.c_float, ctypes.c_float)
    return function


_ATAN2F = _libm_atan2f()


def f32(value: float) -> float:
    """``value`` rounded to float32 (to nearest, ties to even), as a Python float.

    Finite values beyond float32's range raise OverflowError (NumPy gives inf): box
    geometry never comes near 3.4e38."""
    return _unpack(_pack(value))[0]


def atan2f(y: float, x: float) -> float:
    """float32 ``atan2(y, x)`` of float32 values, as C's ``atan2f`` gives it: not always the
    double result rounded (an ulp apart on about a fifth of inputs), and NumPy's float32
    ``arctan2`` may use its own vector code on some CPUs.  Where no C library is found,
    NumPy's."""
    if _ATAN2F is not None:
        return _ATAN2F(y, x)
    return float(np.arctan2(np.float32(y), np.float32(x)))
