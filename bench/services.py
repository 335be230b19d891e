"""Kafka and Redis for the benchmarks that need them (not a benchmark itself).

:func:`services` yields the addresses to use:

* with ``start=True`` (a script's ``--start-services``), or when the environment names no
  reachable pair, it starts a private Kafka broker and redis-server with
  ``deploy/dev-services up`` on alternate ports (Kafka 29092, controller 29093, Redis 26379)
  and its own run dir (``<tmp>/bench-services``), away from the developer's pair on
  9092/6379, and at the end stops them and deletes their run dir (Kafka data, logs) with
  ``deploy/dev-services clean``, unless they were already running before;
* otherwise it uses ``FACESTREAM_KAFKA_BOOTSTRAP`` and ``FACESTREAM_REDIS_URL``, which must
  both be set (the defaults are never assumed: they are someone's test services).

:func:`fresh_topic` makes a topic for one measurement and deletes it afterwards;
:func:`kafka_libs` is the folder of the Kafka jars that ``deploy/dev-services`` caches.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
DEV_SERVICES = REPO / "deploy" / "dev-services"
KAFKA_POM = REPO / "deploy" / "kafka" / "pom.xml"
OWN_SERVICES_ENV = {
    "FACESTREAM_SERVICES_RUN_DIR": str(Path(tempfile.gettempdir()) / "bench-services"),
    "FACESTREAM_KAFKA_PORT": "29092",
    "FACESTREAM_KAFKA_CONTROLLER_PORT": "29093",
    "FACESTREAM_REDIS_PORT": "26379",
}


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    redis_url: str
    started: bool          # deploy/dev-services was run for this benchmark

    def overrides(self) -> dict[str, str]:
        """Settings overrides that point facestream at these services."""
        return {"kafka_bootstrap": self.kafka_bootstrap, "redis_url": self.redis_url}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _from_environment() -> Endpoints | None:
    """The pair the environment names, if both are set and answer on TCP."""
    bootstrap = os.environ.get("FACESTREAM_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("FACESTREAM_REDIS_URL")
    if not bootstrap or not redis_url:
        return None
    kafka_host, kafka_port = bootstrap.split(",")[0].rsplit(":", 1)
    redis = urlparse(redis_url)
    if not (_reachable(kafka_host, int(kafka_port))
            and _reachable(redis.hostname or "localhost", redis.port or 6379)):
        return None
    return Endpoints(bootstrap, redis_url, started=False)


def _dev_services(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEV_SERVICES), command], env={**os.environ, **OWN_SERVICES_ENV},
                          capture_output=True, text=True, check=False)


def _start_own() -> tuple[Endpoints, bool]:
    """Start (or reuse) the private pair; True in second place if this call started it."""
    already_up = _dev_services("status").returncode == 0
    proc = _dev_services("up")
    if proc.returncode != 0:
        if not already_up:
            _dev_services("down")        # whichever of the two did start
        raise SystemExit(f"deploy/dev-services up failed:\n{proc.stderr.strip()}")
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return (Endpoints(found["FACESTREAM_KAFKA_BOOTSTRAP"], found["FACESTREAM_REDIS_URL"],
                      started=True), not already_up)


@contextmanager
def services(*, start: bool) -> Iterator[Endpoints]:
    """Kafka and Redis for one benchmark run (see the module docstring)."""
    found = None if start else _from_environment()
    if found is not None:
        yield found
        return
    ports = "/".join(OWN_SERVICES_ENV[f"FACESTREAM_{name}_PORT"] for name in ("KAFKA", "REDIS"))
    print(f"starting Kafka and Redis (deploy/dev-services up, ports {ports})", file=sys.stderr)
    endpoints, stop_after = _start_own()
    try:
        yield endpoints
    finally:
        if stop_after:
            _dev_services("clean")


@contextmanager
def fresh_topic(bootstrap: str, name: str, *, partitions: int) -> Iterator[str]:
    """A topic created for one measurement (so creating it is not timed) and deleted after."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(name, partitions, 1)], wait_for_metadata=True)
        try:
            yield name
        finally:
            admin.delete_topics([name])
    finally:
        admin.close()


def kafka_libs() -> Path:
    """The Kafka jars of the version deploy/kafka/pom.xml pins, as deploy/dev-services caches
    them (it fetches them on its first ``up``)."""
    version = re.search(r"<kafka.version>(.+?)</kafka.version>", KAFKA_POM.read_text()).group(1)
    cache = os.environ.get("FACESTREAM_SERVICES_DIR") or Path.home() / ".cache/facestream/services"
    libs = Path(cache) / f"kafka-{version}" / "libs"
    if not libs.is_dir():
        raise SystemExit(f"no Kafka jars in {libs}: run `deploy/dev-services up` once")
    return libs
