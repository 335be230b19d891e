"""The images' HEALTHCHECK: GET /healthz of whichever facestream command is the container's
main process, on the port that command serves it on.

``facestream worker`` serves it on FACESTREAM_METRICS_PORT (9400), ``facestream ingest
--from-registry`` (the supervisor) on FACESTREAM_SUPERVISOR_METRICS_PORT (9401),
``facestream serve`` on FACESTREAM_API_PORT (8080).  Any other command (``analyze``,
``models list``) has no endpoint and counts as healthy while it runs.  Exit 0: healthy,
1: not (one line on stdout says why; Docker keeps it in the container's health log).
"""

from __future__ import annotations

import os
import sys
import urllib.request

# command -> (variable naming the port, its default); -1 or 0 in the variable: no endpoint
PORTS = {"worker": ("FACESTREAM_METRICS_PORT", 9400),
         "ingest": ("FACESTREAM_SUPERVISOR_METRICS_PORT", 9401),
         "serve": ("FACESTREAM_API_PORT", 8080)}


def health(argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
    """(exit status, why) for a main process started as ``argv`` with ``environ``."""
    command = next((a for a in argv[1:] if a in PORTS), None)
    if command is None:
        return 0, "no endpoint to ask"
    variable, default = PORTS[command]
    port = int(environ.get(variable) or default)
    if port <= 0:
        return 0, f"{variable}={port}: endpoints off"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as reply:
            return (0, "ok") if reply.status == 200 else (1, f"HTTP {reply.status}")
    except OSError as exc:
        return 1, f"facestream {command}: /healthz on port {port}: {exc}"


def main() -> int:
    with open("/proc/1/cmdline", "rb") as f:
        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    status, why = health(argv, dict(os.environ))
    if status:
        print(why)
    return status


if __name__ == "__main__":
    sys.exit(main())
