"""Fuzz target ``events``: the event builders :func:`facestream.events.stream_error` and
:func:`facestream.events.track_event`.

Contract (decided here; the callers' domain):

* ``stream_id`` is a stream id or ``events.UNATTRIBUTED``; ``track_id`` a non-empty name;
  ``profile`` one of the settings' profiles; ``message`` any non-empty str, lone surrogates
  included (it carries exception and OS text, which Python decodes with surrogateescape);
* the numbers may be anything.  ``time_s`` must round (to the millisecond the event keeps)
  to a finite number >= 0 and ``time_epoch`` must be a finite time in years 1..9999: outside
  that the builder raises ValueError saying which number is wrong (short), never an event
  that breaks the schema or JSON (NaN, Infinity);
* an event it returns holds against ``events.validator()`` and serialises as the sinks
  write it: ``json.dumps(..., ensure_ascii=False, allow_nan=False)`` encoded as UTF-8, and
  reads back equal.  Ids are deterministic.

Input layout: builder (1 byte), stream id (mode byte, text), the strings, then the numbers.

    python tests/fuzz/fuzz_events.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import json
import math
import sys

from _fuzzlib import Provider, Writer

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream import events
        from facestream.ingest.sources import is_stream_id, stream_id_from
else:
    from facestream import events
    from facestream.ingest.sources import is_stream_id, stream_id_from

PROFILES = ("compact", "facellava")
EPOCH_MIN = -62135596800.0          # 0001-01-01T00:00:00Z
EPOCH_MAX = 253402300800.0          # 10000-01-01T00:00:00Z
PTS = (-(2 ** 63), 2 ** 63 - 1)
MAX_ERROR = 300


def write_stream_error(*, stream_id: str | None, message: str, time_s: float, seq: int,
                       time_epoch: float, fatal: bool, profile: str = "compact") -> bytes:
    w = Writer().uint(0, 1)
    w.uint(0, 1) if stream_id is None else w.uint(1, 1).text(stream_id)
    w.pick(profile, PROFILES).text(message)
    return (w.double(time_s).int_in(seq, *PTS).flag(False).double(time_epoch).flag(fatal)
            .bytes())


def write_track_event(*, ended: bool, stream_id: str | None, track_id: str, time_s: float,
                      pts: int | None, time_epoch: float, profile: str = "compact") -> bytes:
    w = Writer().uint(1 + ended, 1)
    w.uint(0, 1) if stream_id is None else w.uint(1, 1).text(stream_id)
    w.pick(profile, PROFILES).text(track_id).double(time_s)
    w.flag(pts is not None)
    if pts is not None:
        w.int_in(pts, *PTS)
    return w.flag(False).double(time_epoch).bytes()


def _epoch(p: Provider) -> float:
    """Any double, or (the flag set) a time in years 1..9999 to the microsecond."""
    if not p.flag():
        return p.double()
    return p.int_in(int(EPOCH_MIN), int(EPOCH_MAX) - 1) + p.uint(3) % 1_000_000 / 1e6


def _out_of_domain(time_s: float, time_epoch: float) -> bool | None:
    """True if the builder must refuse the numbers, False if it must not, None on an edge."""
    if not math.isfinite(time_s) or not math.isfinite(time_epoch):
        return True
    if round(time_s, 3) < 0:
        return True
    if min(abs(time_epoch - EPOCH_MIN), abs(time_epoch - EPOCH_MAX)) < 1:
        return None
    return not EPOCH_MIN <= time_epoch < EPOCH_MAX


def TestOneInput(data: bytes) -> None:
    p = Provider(data)
    builder = p.uint(1) % 3
    if p.uint(1) % 4 == 0:
        stream_id = events.UNATTRIBUTED
    else:
        stream_id = p.text(200, surrogates=False)
        stream_id = stream_id if is_stream_id(stream_id) else stream_id_from(stream_id)
    profile = p.pick(PROFILES)
    if builder == 0:
        message = p.text(2000)
        time_s, seq, time_epoch, fatal = p.double(), p.int_in(*PTS), _epoch(p), p.flag()
        if not message:
            return                      # no caller reports an empty error (schema: minLength 1)
        build = lambda: events.stream_error(stream_id=stream_id, message=message,  # noqa: E731
                                            time_s=time_s, seq=seq, profile=profile,
                                            time_epoch=time_epoch, fatal=fatal)
    else:
        kind = events.TRACK_STARTED if builder == 1 else events.TRACK_ENDED
        track_id = p.text(64, surrogates=False)
        time_s = p.double()
        pts = p.int_in(*PTS) if p.flag() else None
        time_epoch = _epoch(p)
        if not track_id:
            return                      # tracks are named t1, t2, ... (schema: minLength 1)
        build = lambda: events.track_event(kind, stream_id=stream_id,  # noqa: E731
                                           track_id=track_id, time_s=time_s, pts=pts,
                                           profile=profile, time_epoch=time_epoch)
    refuse = _out_of_domain(time_s, time_epoch)
    try:
        event = build()
    except ValueError as exc:
        assert refuse is not False, f"refused in-domain numbers ({time_s!r}, {time_epoch!r}): {exc}"
        assert len(str(exc)) <= MAX_ERROR and str(exc), str(exc)[:400]
        return
    assert refuse is not True, f"built an event from ({time_s!r}, {time_epoch!r})"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in events.validator().iter_errors(event)]
    assert not errors, errors
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert json.loads(text) == event
    assert build()["id"] == event["id"]


if __name__ == "__main__":
    atheris.instrument_all()        # the standard library's parsing too: more branches to see
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
