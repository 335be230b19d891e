"""Media for tests: a video remuxed into a live-stream container, an HTTP camera that
serves it as a live source would, an RTSP loopback (FFmpeg's RTSP demuxer as the server, a
sender pushing H.264 to it), and a two-person clip built from a group photo.
(Synthetic clips of faces moving along known paths are :mod:`facestream.scenes`.)"""

from __future__ import annotations

import http.server
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from facestream.scenes import face_patch, load_rgb, moving_faces, write_clip

# The two-person clip: the second person walks in at this media second.
SECOND_FACE_AT_S = 1.5


def remux_video(source: Path, target, *, container_format: str) -> None:
    """``source``'s video packets, not re-encoded, into ``target`` (a path or a binary file
    object) as ``container_format`` (mpegts, h264, ...)."""
    target = str(target) if isinstance(target, Path) else target
    with av.open(str(source)) as src, av.open(target, "w", format=container_format) as dst:
        video = src.streams.video[0]
        stream = dst.add_stream_from_template(video)
        for packet in src.demux(video):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)


class HttpCamera:
    """An HTTP 'camera' serving an MPEG-TS stream with no length (as live sources do).

    ``plan`` says what each successive connection gets: a fraction of the stream, then the
    connection closes; or None for 503 (camera down, answered at once).  ``requests``
    counts connections; each is counted before it is answered.  ``port`` 0 picks a free one;
    another serves on that port (a camera that was down comes up where it was expected)."""

    def __init__(self, payload: bytes, plan: list[float | None], *, port: int = 0) -> None:
        self.payload, self.plan, self.requests = payload, list(plan), 0
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                with outer.lock:
                    step = outer.plan[min(outer.requests, len(outer.plan) - 1)]
                    outer.requests += 1
                if step is None:
                    self.send_error(503, "camera offline")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()
                try:
                    self.wfile.write(outer.payload[: int(len(outer.payload) * step)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def rtsp_listen(url: str, *, timeout_s: float) -> av.container.InputContainer:
    """FFmpeg's RTSP demuxer as a server at ``url`` (``rtsp://127.0.0.1:PORT/path``), waiting
    at most ``timeout_s`` for a sender to ANNOUNCE and RECORD; interleaved over TCP.

    Bounded by FFmpeg's own options, not PyAV's ``timeout``: that one installs an interrupt
    callback that takes the GIL, which a sender in the same process holds through its RTSP
    handshake (PyAV runs ``avformat_write_header`` with it), so the two would deadlock."""
    return av.open(url, options={"rtsp_flags": "listen", "listen_timeout": str(int(timeout_s)),
                                 "rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1e6))})


def rtsp_push(url: str, *, frames: int, fps: int = 25, gop: int = 25, origin_us: int,
              timeout_s: float, rtpflags: str | None = None) -> None:
    """Push ``frames`` H.264 frames (64x64, no B-frames, a keyframe every ``gop``; frame i
    at media time i/fps) to the RTSP server at ``url``, as fast as they encode.

    ``origin_us`` (whole milliseconds, unix microseconds) is the sender's wall clock of media
    time 0: FFmpeg's ``start_time_realtime``, which the RTP muxer's RTCP sender report (sent
    with its first packet) maps onto its RTP timestamps.  ``rtpflags`` goes to the RTP muxer
    (``skip_rtcp``: no sender report at all).  The server may not listen yet: a refused
    connection is tried again until ``timeout_s`` has passed."""
    options = {"rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1e6)),
               **({"rtpflags": rtpflags} if rtpflags else {})}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _push(url, options, frames=frames, fps=fps, gop=gop, origin_us=origin_us)
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _push(url: str, options: dict[str, str], *, frames: int, fps: int, gop: int,
          origin_us: int) -> None:
    with av.open(url, "w", format="rtsp", options=options,
                 container_options={"start_time_realtime": str(origin_us)}) as out:
        stream = out.add_stream("libx264", rate=fps, options={
            "bf": "0", "tune": "zerolatency", "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"})
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), (i * 7) % 256, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def two_people_clip(group_photo: Path, faces, target: Path, *, seconds: float = 4.0) -> Path:
    """A 640x360, 25 fps H.264 clip of two faces cut from ``group_photo`` (its first and
    fourth face as ``faces`` (a :class:`~facestream.vision.faces.FaceAnalyzer`) finds them):
    the first sways on the left for the whole clip, the second stands on the right from
    :data:`SECOND_FACE_AT_S` on."""
    photo = load_rgb(group_photo)
    found = faces(photo)
    patches = [face_patch(photo, tuple(int(v) for v in found.boxes[i]), size)
               for i, size in ((0, 120), (3, 140))]

    def left(t: float) -> tuple[float, float]:
        return 170 + 40 * (t / seconds), 180.0

    def right(t: float) -> tuple[float, float]:
        return (470.0, 170.0) if t >= SECOND_FACE_AT_S else (-1000.0, -1000.0)

    frames, _ = moving_faces(patches, [left, right], width=640, height=360, seconds=seconds,
                             fps=25)
    return write_clip(target, frames, fps=25)
