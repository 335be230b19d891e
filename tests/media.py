"""Media for tests: a video remuxed into a live-stream container, and an HTTP camera that
serves it as a live source would.  (Synthetic clips of faces moving along known paths are
:mod:`facestream.scenes`.)"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import av


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
    counts connections; each is counted before it is answered."""

    def __init__(self, payload: bytes, plan: list[float | None]) -> None:
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

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.ts"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
