"""Media for tests: a video remuxed into a live-stream container, an HTTP camera that
serves it as a live source would, an RTSP camera (RTSP 1.0, RTP interleaved, H.264), an
RTSP loopback (FFmpeg's RTSP demuxer as the server, a sender pushing H.264 to it), and a
two-person clip built from a group photo.
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


class RtspCamera:
    """An RTSP camera on loopback: RTSP 1.0 (RFC 2326) with RTP interleaved on the TCP
    connection, H.264 packetized as RFC 6184 says (single NAL units, FU-A fragments above
    1,400 bytes, the marker bit on an access unit's last packet, a 90 kHz clock), the SPS and
    PPS in the SDP's ``sprop-parameter-sets``: what FFmpeg's RTSP client (facestream's, with
    ``rtsp_transport=tcp``) meets at a real camera.

    ``frames`` (RGB uint8 arrays) are encoded once (libx264, no B-frames, a keyframe every
    ``gop``).  ``plan`` says what each successive connection gets, as
    :class:`HttpCamera`'s does: a fraction of the frames (sent as fast as the socket takes
    them), then the connection closes; or None for 503 to DESCRIBE (the camera is down).
    ``requests`` counts DESCRIBEs."""

    _MTU = 1400

    def __init__(self, frames: list[np.ndarray], plan: list[float | None], *, fps: int = 25,
                 gop: int = 25) -> None:
        import base64
        import socket

        self.plan, self.requests, self.fps = list(plan), 0, fps
        self.units = self._encode(frames, fps=fps, gop=gop)      # [(pts, [nal, ...]), ...]
        nals = [nal for _, unit in self.units for nal in unit]
        sps = next(n for n in nals if n[0] & 0x1F == 7)
        pps = next(n for n in nals if n[0] & 0x1F == 8)
        self._sprop = ",".join(base64.b64encode(n).decode() for n in (sps, pps))
        self.lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"rtsp://127.0.0.1:{self._server.getsockname()[1]}/live"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _encode(frames: list[np.ndarray], *, fps: int, gop: int) -> list[tuple[int, list[bytes]]]:
        height, width = frames[0].shape[:2]
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base, codec.framerate = Fraction(1, fps), Fraction(fps)
        codec.options = {"bf": "0", "tune": "zerolatency", "preset": "veryfast",
                         "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        packets = []
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            packets += codec.encode(frame)
        packets += codec.encode(None)
        units = []
        for packet in packets:                  # Annex B: NAL units after start codes
            data = bytes(packet)
            parts = [p for p in data.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01")
                     .split(b"\x00\x00\x01") if p]
            units.append((packet.pts, parts))
        return units

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                method, url, headers = self._request(reader)
                if method is None:
                    return
                cseq = headers.get("cseq", "0")
                if method == "OPTIONS":
                    self._reply(conn, cseq, "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN")
                elif method == "DESCRIBE":
                    with self.lock:
                        step = self.plan[min(self.requests, len(self.plan) - 1)]
                        self.requests += 1
                    if step is None:
                        self._reply(conn, cseq, status="503 Service Unavailable")
                        return
                    sdp = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=facestream test camera\r\n"
                           "c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
                           "a=rtpmap:96 H264/90000\r\n"
                           f"a=fmtp:96 packetization-mode=1;sprop-parameter-sets={self._sprop}"
                           "\r\na=control:trackID=0\r\n")
                    self._reply(conn, cseq, f"Content-Base: {self.url}/\r\n"
                                "Content-Type: application/sdp", body=sdp.encode())
                elif method == "SETUP":
                    self._reply(conn, cseq, f"Transport: {headers.get('transport', '')}\r\n"
                                "Session: 12345678;timeout=60")
                elif method == "PLAY":
                    self._reply(conn, cseq, "Session: 12345678\r\nRange: npt=0.000-\r\n"
                                f"RTP-Info: url={self.url}/trackID=0;seq=0;rtptime={0x1234567}")
                    self._play(conn, step)
                    return                          # the camera drops: close the connection
                else:
                    self._reply(conn, cseq, "Session: 12345678")
        except OSError:
            pass
        finally:
            reader.close()
            conn.close()

    @staticmethod
    def _request(reader) -> tuple[str | None, str, dict[str, str]]:
        """The next RTSP request on the connection, skipping interleaved frames (the
        client's RTCP reports); (None, ...) at the end of the connection."""
        while True:
            first = reader.read(1)
            if not first:
                return None, "", {}
            if first == b"$":                       # $, channel, 16-bit length, data
                header = reader.read(3)
                reader.read(int.from_bytes(header[1:3], "big"))
                continue
            line = (first + reader.readline()).decode("latin-1").strip()
            if not line:
                continue
            headers = {}
            while (row := reader.readline().decode("latin-1").strip()):
                name, _, value = row.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("content-length", "0").isdigit():
                reader.read(int(headers.get("content-length", "0")))
            method, url = (line.split() + ["", ""])[:2]
            return method, url, headers

    @staticmethod
    def _reply(conn, cseq: str, headers: str = "", *, status: str = "200 OK",
               body: bytes = b"") -> None:
        head = f"RTSP/1.0 {status}\r\nCSeq: {cseq}\r\n"
        if headers:
            head += headers + "\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n" if body else "\r\n"
        conn.sendall(head.encode() + body)

    def _play(self, conn, share: float) -> None:
        seq = 0
        for pts, nals in self.units[:int(len(self.units) * share)]:
            stamp = (0x1234567 + pts * 90000 // self.fps) & 0xFFFFFFFF
            payloads = []
            for nal in nals:
                if len(nal) <= self._MTU:
                    payloads.append(nal)
                    continue
                indicator = (nal[0] & 0xE0) | 28                    # FU-A
                body = nal[1:]
                chunks = [body[i:i + self._MTU] for i in range(0, len(body), self._MTU)]
                for j, chunk in enumerate(chunks):
                    header = (nal[0] & 0x1F) | (0x80 if j == 0 else 0) \
                        | (0x40 if j == len(chunks) - 1 else 0)
                    payloads.append(bytes([indicator, header]) + chunk)
            for k, payload in enumerate(payloads):
                marker = 0x80 if k == len(payloads) - 1 else 0
                rtp = bytes([0x80, marker | 96]) + seq.to_bytes(2, "big") \
                    + stamp.to_bytes(4, "big") + (0x5EED).to_bytes(4, "big") + payload
                conn.sendall(b"$\x00" + len(rtp).to_bytes(2, "big") + rtp)
                seq = (seq + 1) & 0xFFFF

    def close(self) -> None:
        self._closed = True
        self._server.close()
