"""Fuzz target ``client``: :meth:`facestream.client.Event.from_json`, which a downstream
service (and :class:`~facestream.client.EventSubscriber`) runs on the ``event`` field of every
Redis entry it reads.

Contract:

* any bytes give an :class:`Event` or raise :class:`EventError`, never anything else (an
  exception escaping would stop a subscriber on one bad entry instead of dead-lettering it);
* the error's message is one line (``str.splitlines``) of 1..300 characters;
* an event it returns holds against ``events.validator()``, has a time with its offset,
  and reads back equal from its own ``to_json()``.

Input layout: the bytes themselves (the entry's ``event`` field).

    python tests/fuzz/fuzz_client.py CORPUS_DIR... [libFuzzer flags]
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["facestream"]):
        from facestream import events
        from facestream.client import Event, EventError
else:
    from facestream import events
    from facestream.client import Event, EventError

MAX_ERROR = 300


def TestOneInput(data: bytes) -> None:
    try:
        event = Event.from_json(data)
    except EventError as exc:
        message = str(exc)
        assert 1 <= len(message) <= MAX_ERROR, message[:400]
        assert len(message.splitlines()) == 1, repr(message[:400])
        return
    assert events.validator().is_valid(dict(event.raw))
    assert event.time.tzinfo is not None
    assert Event.from_json(event.to_json()) == event


if __name__ == "__main__":
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
