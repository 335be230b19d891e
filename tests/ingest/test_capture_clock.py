"""Capture times from the source's own wall clock: a real RTSP loopback (FFmpeg's RTSP
demuxer as the server, an RTSP sender whose RTCP sender report carries its NTP wall clock),
cut into chunks as the publisher cuts a live source."""

from __future__ import annotations

import logging
import re
import threading
import time

import av
import pytest

from facestream.ingest.chunks import MAX_SOURCE_SKEW_S, gop_chunks
from tests.integration.helpers import free_port
from tests.media import rtsp_listen, rtsp_push

FPS, GOP, FRAMES = 25, 25, 75          # three one-second GOPs
TIMEOUT_S = 20.0


def _loopback(origin_us: int, clock, **push) -> tuple[list, int | None]:
    """The chunks (whole-GOP, as live) of ``FRAMES`` frames pushed over RTSP by a sender
    whose media time 0 is ``origin_us`` on its wall clock, and the wall clock the server's
    demuxer reported at the end; ``clock`` is the ingest clock."""
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    got: dict = {}

    def receive() -> None:
        try:
            with rtsp_listen(url, timeout_s=TIMEOUT_S) as container:
                got["chunks"] = list(gop_chunks(container, stream_id="cam", min_chunk_s=0.5,
                                                max_chunk_s=5.0, clock=clock))
                got["realtime"] = container.start_time_realtime
        except Exception as exc:             # reported by the test thread below
            got["error"] = exc

    server = threading.Thread(target=receive, daemon=True)
    server.start()
    try:
        rtsp_push(url, frames=FRAMES, fps=FPS, gop=GOP, origin_us=origin_us,
                  timeout_s=TIMEOUT_S, **push)
    finally:
        server.join(TIMEOUT_S)
    assert not server.is_alive(), "the RTSP server did not finish"
    assert "error" not in got, got.get("error")
    chunks = got["chunks"]
    assert len(chunks) == FRAMES // GOP and not any(c.continued for c in chunks)
    # Interleaved over TCP nothing is lost: the n-th packet is the sender's frame n.
    assert sum(len(c.packets()) for c in chunks) == FRAMES
    return chunks, got["realtime"]


def _first_frames(chunks) -> list[int]:
    """The sender's frame number of each chunk's first pts (its ``fs-pts``)."""
    out, n = [], 0
    for chunk in chunks:
        pts = [p.pts for p in chunk.packets()]
        out.append(n + pts.index(chunk.first_pts))
        n += len(pts)
    return out


def _origin_us(offset_s: float = 0.0) -> int:
    """A sender origin near now (+ ``offset_s``), in whole milliseconds as FFmpeg keeps it."""
    return int((time.time() + offset_s) * 1000) * 1000


def test_rtsp_chunks_carry_the_senders_wall_clock_from_its_rtcp_sender_report():
    """Each chunk's capture is the sender's wall clock for its first frame: its origin plus
    the frame's media time (the sender runs ahead of real time, so ingest times differ by
    up to 2 s).  The ingest clock stands at the origin: however slow the machine, the
    source's clock stays within MAX_SOURCE_SKEW_S of it."""
    origin_us = _origin_us()
    chunks, realtime = _loopback(origin_us, clock=lambda: origin_us / 1e6)
    assert realtime is not None
    frames = _first_frames(chunks)
    assert frames[1:] == [GOP, 2 * GOP]
    for chunk, frame in zip(chunks, frames):
        assert chunk.capture == pytest.approx(origin_us / 1e6 + frame / FPS, abs=1e-3)


def test_a_source_clock_far_from_the_ingest_clock_gives_way_to_the_ingest_time(caplog):
    """A sender whose clock is an hour ahead of ours (its RTCP report puts its frames an
    hour in our future): chunks get the ingest time, and the operator a warning that says
    why."""
    ingest_s = time.time()
    with caplog.at_level(logging.WARNING, logger="facestream.ingest.chunks"):
        chunks, _ = _loopback(_origin_us(3600.0), clock=lambda: ingest_s)
    assert [c.capture for c in chunks] == [ingest_s] * len(chunks)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "NTP" in warnings[0]
    assert f"more than {MAX_SOURCE_SKEW_S:g} s" in warnings[0]
    skew = float(re.search(r"clock is ([-+][0-9.]+) s", warnings[0]).group(1))
    assert 3599 < skew < 3601


def test_without_an_rtcp_sender_report_chunks_get_the_ingest_time():
    """A sender that sends no RTCP: the demuxer knows no wall clock, each chunk's capture is
    the ingest clock when its first packet came out."""
    ticks = iter(range(1000, 2000))
    chunks, realtime = _loopback(_origin_us(), clock=lambda: float(next(ticks)),
                                 rtpflags="skip_rtcp")
    assert realtime is None
    assert [c.capture for c in chunks] == [1000.0, 1001.0, 1002.0]


class _ClockFromPacket:
    """NOT RTSP: a real demuxed file whose container starts reporting a wall clock
    (``start_time_realtime``) only from its ``at``-th packet on, as RTSP does when the first
    RTCP sender report comes some packets into the stream.  Everything else is the file's."""

    def __init__(self, container, at: int, realtime_us: int) -> None:
        self._container, self._at, self._realtime_us, self._read = container, at, realtime_us, 0
        self.streams = container.streams

    @property
    def start_time_realtime(self) -> int | None:
        return self._realtime_us if self._read >= self._at else None

    def demux(self, stream):
        for packet in self._container.demux(stream):
            self._read += 1
            yield packet


def test_a_wall_clock_that_appears_mid_stream_stamps_the_chunks_from_then_on_not_rtsp(
        sample, caplog):
    """Not RTSP (a file whose wall clock is held back, as a late first sender report
    would be): chunks before it carry the ingest time, chunks after it the source's clock
    at their first pts, and each change is logged once."""
    ticks = iter(range(1000, 2000))       # half-seconds, as the chunks' media advances
    with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container, \
            caplog.at_level(logging.DEBUG, logger="facestream.ingest.chunks"):
        stream = container.streams.video[0]
        late = _ClockFromPacket(container, at=40, realtime_us=500_250_000)
        chunks = list(gop_chunks(late, stream_id="s", max_chunk_s=0.5,
                                 clock=lambda: next(ticks) / 2))
        time_base = stream.time_base
    # A chunk is made when the packet after it is read: the first one made at or after
    # packet 40 is the first one stamped by the source's clock.
    read = 0
    for switched, chunk in enumerate(chunks):
        read += len(chunk.packets())
        if read + 1 >= 40:
            break
    assert 0 < switched < len(chunks) - 1
    own = [500.25 + float(c.first_pts * time_base) for c in chunks]
    assert [c.capture for c in chunks[:switched]] == [(1000 + i) / 2 for i in range(switched)]
    assert [c.capture for c in chunks[switched:]] == pytest.approx(own[switched:], abs=1e-6)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "ingest times" in said[0] and "source's own clock" in said[1]
