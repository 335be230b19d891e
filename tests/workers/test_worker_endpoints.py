"""The worker's HTTP endpoints (/metrics, /healthz, /readyz) listen only when
``metrics_port`` is set: with 0 the worker opens no listening socket at all."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from facestream.config import Settings
from facestream.workers.worker import Worker
from tests.helpers import MemoryProducer, MemorySink, OnePollConsumer
from tests.integration.helpers import free_port


def _listening() -> set[int]:
    """The TCP ports this process listens on (Linux: its socket inodes in /proc/self/fd,
    their LISTEN rows, state 0A, in /proc/net/tcp and tcp6)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue                            # closed meanwhile
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in mine:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("port", [0, "free"])
def test_the_endpoints_listen_only_with_a_metrics_port(models, port):
    port = free_port() if port == "free" else port
    before = _listening()
    seen: list[set[int]] = []
    answers: list[int] = []

    def look(worker: Worker) -> bool:
        seen.append(_listening() - before)
        if port:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
                answers.append(r.status)
        return True

    worker = Worker(Settings.load({"metrics_port": port, "describe": False}), models=models,
                    consumer=OnePollConsumer({}), sink=MemorySink(),
                    dlq_producer=MemoryProducer())
    worker.run(until=look)
    assert seen == [{port} if port else set()]
    assert answers == ([200] if port else [])
    assert port not in _listening() or not port        # closed when the worker stops
