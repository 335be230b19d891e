"""float32 arithmetic on Python floats, for the few scalars computed per face.

The detector boxes are float32, so their centres and sides are float32 operations.  On
NumPy scalars each costs ~0.1 µs warm and several times that right after a model has run
(cold caches), and a face's geometry takes a dozen.  A Python float operation rounded to
float32 gives NumPy's float32 result for +, -, *, / and sqrt: the double result, rounded
again, is the correctly rounded float32 one (53 >= 2 * 24 + 2 bits).
"""

from __future__ import annotations

import struct

_pack, _unpack = struct.Struct("<f").pack, struct.Struct("<f").unpack


def f32(value: float) -> float:
    """``value`` rounded to float32 (to nearest, ties to even), as a Python float.

    Finite values beyond float32's range raise OverflowError (NumPy gives inf): box
    geometry never comes near 3.4e38."""
    return _unpack(_pack(value))[0]
