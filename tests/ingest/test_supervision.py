"""The camera supervisor's pieces without a broker: the stream state machine and its rates on
an injected clock, URL redaction, the profile's topic, the unbounded capped backoff, the
reconnect loop retrying a first open and stopping on request, and the supervisor's restart
delays (the whole supervisor against the real broker: tests/integration/test_supervisor.py)."""

from __future__ import annotations

import threading

import pytest

from facestream.errors import InputError, SourceDropped
from facestream.ingest import sources
from facestream.ingest.chunks import Chunk, ChunkError, Packet, count_packets, pack, parse_message
from facestream.errors import redact
from facestream.ingest.supervision import StreamStatus, chunk_topic
from facestream.retry import Backoff


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _status(clock: Clock) -> StreamStatus:
    return StreamStatus("cam", url="rtsp://admin:hunter2@cam.example.com/live", fps=2.0,
                        profile="compact", publisher="host:1", clock=lambda: 1000 + clock.t,
                        monotonic=clock, rate_span_s=5.0)


def test_state_machine_announces_each_change_and_each_reconnect_attempt():
    clock = Clock()
    status = _status(clock)
    seen = [status.connecting(), status.retrying(1, "Connection refused"),
            status.retrying(2, "Connection refused"), status.chunk(25, 1000),
            status.chunk(25, 1000), status.retrying(1, "stream ended"), status.chunk(25, 900),
            status.ended("the source ended"), status.ended("again"), status.removed()]
    moves = [(t.state, t.previous, t.attempt, t.seq) if t else None for t in seen]
    assert moves == [
        ("connecting", None, 0, 0),
        ("reconnecting", "connecting", 1, 1),
        ("reconnecting", "reconnecting", 2, 2),       # every attempt is announced
        ("live", "reconnecting", 0, 3),
        None,                                         # live stays live: nothing to say
        ("reconnecting", "live", 1, 4),
        ("live", "reconnecting", 0, 5),
        ("ended", "live", 0, 6),
        None,
        ("removed", "ended", 0, 7),
    ]
    assert seen[1].reason == "Connection refused"
    fields = status.fields()
    assert fields["state"] == "removed" and fields["frames"] == "75"
    assert fields["bytes"] == "2900" and fields["reconnects"] == "3"


def test_status_fields_follow_the_contract():
    clock = Clock()
    status = _status(clock)
    status.connecting()
    status.retrying(1, "Connection refused")
    fields = status.fields()
    assert set(fields) == {"state", "url", "fps", "profile", "last_error", "last_frame_at",
                           "frames", "bytes", "reconnects", "attempt", "frames_per_s",
                           "publisher", "updated_at"}
    assert fields["url"] == "rtsp://admin:***@cam.example.com/live"
    assert (fields["state"], fields["attempt"], fields["last_error"]) == (
        "reconnecting", "1", "Connection refused")
    assert fields["last_frame_at"] == "" and fields["fps"] == "2"
    status.chunk(10, 100)
    fields = status.fields()
    assert fields["last_error"] == "" and fields["attempt"] == "0"
    assert float(fields["last_frame_at"]) == 1000.0 and fields["updated_at"] == "1000.000"


def test_frames_per_second_is_a_rate_over_the_last_seconds():
    clock = Clock()
    status = _status(clock)
    for second in range(10):               # 25 frames a second for 10 s
        clock.t = second
        status.chunk(25, 1)
    assert status.frames_per_s() == pytest.approx(25.0)
    clock.t = 12.0                         # quiet since 9: only the chunks at 8 and 9 count
    assert status.frames_per_s() == pytest.approx(10.0)
    clock.t = 30.0
    assert status.frames_per_s() == 0.0


@pytest.mark.parametrize("url, shown", [
    ("rtsp://admin:hunter2@10.0.0.7:554/s?x=1", "rtsp://admin:***@10.0.0.7:554/s?x=1"),
    ("http://cam.example.com/live.ts", "http://cam.example.com/live.ts"),
    ("rtsp://viewer@cam/live", "rtsp://viewer@cam/live"),
    ("rtsp://u:p%40ss@[::1]:554/", "rtsp://u:***@[::1]:554/"),
])
def test_urls_are_shown_without_their_password(url, shown):
    assert redact(url) == shown


def test_each_profile_has_its_topic():
    assert chunk_topic("facestream.video", "compact") == "facestream.video"
    assert chunk_topic("facestream.video", None) == "facestream.video"
    assert chunk_topic("facestream.video", "facellava") == "facestream.video.facellava"


def test_an_unbounded_backoff_never_ends_and_stays_capped():
    delays = Backoff(None, 0.5, 30.0, jitter=0.2, seed=3).delays()
    taken = [next(delays) for _ in range(200)]
    assert all(d <= 30.0 * 1.2 for d in taken) and min(taken[20:]) >= 30.0 * 0.8
    assert taken[0] <= 0.5 * 1.2


def test_the_reconnector_retries_a_first_open_for_as_long_as_it_takes(monkeypatch):
    """The supervisor's loop: a camera down at start is retried (each try announced with
    its attempt and reason, delays capped), far past the one-shot limit, until it opens."""
    tries = []

    def open_container(spec, *, timeout_s):
        tries.append(spec.text)
        if len(tries) <= 40:
            raise InputError(f"source {spec.text}: cannot open (Connection refused)")
        return "container"

    monkeypatch.setattr(sources, "open_container", open_container)
    slept, retries = [], []
    link = sources.Reconnector(sources.parse_source("rtsp://cam.example.com/live"),
                               timeout_s=1, backoff=Backoff(None, 0.5, 8.0, seed=1),
                               sleep=slept.append,
                               on_retry=lambda a, reason, d: retries.append((a, reason)))
    assert link.open(retry=True) == "container"
    assert len(tries) == 41 and link.reconnects == 40
    assert [a for a, _ in retries] == list(range(1, 41))
    assert retries[0][1].endswith("cannot open (Connection refused)")
    assert max(slept) <= 8.0 * 1.2 and len(slept) == 40


def test_the_one_shot_limit_still_gives_up(monkeypatch):
    def refuse(spec, *, timeout_s):
        raise InputError("cannot open (Connection refused)")

    monkeypatch.setattr(sources, "open_container", refuse)
    link = sources.Reconnector(sources.parse_source("rtsp://cam.example.com/live"),
                               timeout_s=1, backoff=Backoff(5, 0.01, 0.01), sleep=lambda s: None)
    with pytest.raises(InputError):
        link.open()                          # without retry: the first failure is final
    with pytest.raises(SourceDropped, match="gave up after 5 reconnects"):
        link.open(retry=True)


def test_a_stop_interrupts_the_wait_between_reconnects(monkeypatch):
    def refuse(spec, *, timeout_s):
        raise InputError("cannot open (Connection refused)")

    monkeypatch.setattr(sources, "open_container", refuse)
    stop = threading.Event()
    link = sources.Reconnector(sources.parse_source("rtsp://cam.example.com/live"),
                               timeout_s=1, backoff=Backoff(None, 3600, 3600), stop=stop,
                               on_retry=lambda a, r, d: stop.set())
    with pytest.raises(sources.Stopped):
        link.open(retry=True)                # returns at once, not after an hour


def test_chunks_carry_the_streams_fps_and_profile():
    payload = pack([Packet(0, 0, 1, True, b"key"), Packet(1, 1, 1, False, b"p"),
                    Packet(2, 2, 1, False, b"")])
    assert count_packets(payload) == 3
    from fractions import Fraction

    chunk = Chunk("cam", 0, "h264", b"", Fraction(1, 90000), 0, 0, 640, 360, payload,
                  fps=2.5, profile="facellava")
    parsed = parse_message(chunk.headers(), chunk.payload, key=b"cam")
    assert (parsed.fps, parsed.profile) == (2.5, "facellava")
    plain = Chunk("cam", 0, "h264", b"", Fraction(1, 90000), 0, 0, 640, 360, payload)
    assert "fs-fps" not in dict(plain.headers())
    assert parse_message(plain.headers(), payload).fps is None
    for bad, message in ((b"500", "outside"), (b"nan", "not a number"), (b"0.01", "outside")):
        headers = [h for h in chunk.headers() if h[0] != "fs-fps"] + [("fs-fps", bad)]
        with pytest.raises(ChunkError, match=message):
            parse_message(headers, payload)


def test_restart_delays_grow_with_deaths_in_a_row():
    from facestream.config import Settings
    from facestream.workers.supervisor import Supervisor

    supervisor = Supervisor(Settings.load({"reconnect_backoff_s": 1.0,
                                           "supervisor_backoff_max_s": 8.0}))
    delays = [supervisor.restart_delay(n) for n in (1, 2, 3, 4, 5, 9)]
    nominal = [1, 2, 4, 8, 8, 8]
    for delay, want in zip(delays, nominal):
        assert 0.8 * want <= delay <= 1.2 * want


def test_events_tail_shows_a_status_event_in_one_line():
    from facestream import events
    from facestream.sinks.tail import format_event

    event = events.stream_status(stream_id="cam1", state="reconnecting", previous="live",
                                 reason="source http://cam/x: cannot open (Connection refused)",
                                 attempt=3, seq=4, url="http://cam/x", fps=2.0,
                                 profile="compact", publisher="host:1", time_epoch=1.7e9)
    events.validator().validate(event)
    assert format_event(event).endswith(
        " cam1 RECONNECTING (attempt 3): source http://cam/x: cannot open (Connection refused)")
    again = events.stream_status(stream_id="cam1", state="reconnecting", previous="live",
                                 reason="x", attempt=3, seq=4, url="", fps=2.0,
                                 profile="compact", publisher="host:1", time_epoch=1.7e9)
    other = events.stream_status(stream_id="cam1", state="reconnecting", previous="live",
                                 reason="x", attempt=3, seq=5, url="", fps=2.0,
                                 profile="compact", publisher="host:1", time_epoch=1.7e9)
    assert event["id"] == again["id"] != other["id"]
