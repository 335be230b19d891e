"""Redis over TLS with ACL users (``rediss://user:password@host/0``, docs/DEPLOY.md
"Security"), against a redis-server of the test's own on a free port: TLS only, a private CA
(given in the URL as ``ssl_ca_certs``), the default user off.  The worker's user may run
only the commands DEPLOY.md lists for workers, the reader's only those it lists for
downstream readers: a command the code needs beyond them fails the test (NOPERM)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from urllib.parse import quote

import pytest

from tests.helpers import analyze_in_process, run_cli
from tests.integration.helpers import events_in_redis, free_port, stream_status, wait

pytestmark = pytest.mark.integration

# The commands docs/DEPLOY.md gives each role (AUTH and HELLO are always allowed).
WORKER_COMMANDS = ("xadd", "xtrim", "hset", "set", "get", "expire", "ping", "multi", "exec")
READER_COMMANDS = ("xreadgroup", "xgroup", "xack", "xautoclaim", "xadd", "ping")
CLIP = "single_face.mp4"


class SecureRedis:
    """redis-server with TLS only and three ACL users: worker, reader (each limited to its
    role's commands on the test's keys) and admin (the test's own reads)."""

    def __init__(self, tmp_path, key_pattern: str) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is not installed: it makes the test's TLS certificates")
        self.port, self.dir = free_port(), tmp_path
        self.ca = tmp_path / "ca.pem"

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=facestream test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost")
        (tmp_path / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
        users = {"worker": ("w-secret", WORKER_COMMANDS), "reader": ("r-secret", READER_COMMANDS),
                 "admin": ("a-secret", ("@all",))}
        acl = []
        for name, (password, commands) in users.items():
            acl += ["--user", name, "on", f">{password}", f"~{key_pattern}", "resetchannels",
                    "-@all", *(f"+{c}" for c in commands)]
        self.passwords = {name: password for name, (password, _) in users.items()}
        binary = shutil.which("redis-server")
        assert binary, "redis-server not on PATH: deploy/dev-services installs it"
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
             "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), "--user", "default", "off", *acl],
            cwd=tmp_path, stdout=subprocess.DEVNULL)
        wait(self.answers, 30, "the TLS redis-server to answer")

    def url(self, user: str, password: str | None = None) -> str:
        password = self.passwords[user] if password is None else password
        return (f"rediss://{user}:{quote(password)}@localhost:{self.port}/0"
                f"?ssl_ca_certs={quote(str(self.ca))}")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url("admin"), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_workers_and_readers_need_only_their_documented_redis_commands_over_tls(
        isolated, models, sample, tmp_path):
    """A worker (`facestream worker`) with the worker's user delivers a stream's events
    (the same ids as the embedded mode), `events tail` with the reader's user reads them
    all; a wrong password is one line; no password is ever printed."""
    settings, env = isolated
    prefix = settings.events_stream.split(":")[0] + ":*"        # the test's keys: it:*
    secure = SecureRedis(tmp_path, prefix)
    stream_id = "secure"
    try:
        admin = replace(settings, redis_url=secure.url("admin"))
        published = run_cli("ingest", str(sample(CLIP)), "--stream-id", stream_id, env=env)
        assert published.returncode == 0, published.stderr

        worker = subprocess.Popen(
            [sys.executable, "-m", "facestream", "worker", "--no-describe"],
            env={**os.environ, **env, "FACESTREAM_REDIS_URL": secure.url("worker")},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait(lambda: stream_status(admin, stream_id).get("worker_state") == "ended"
                 or worker.poll() is not None, 180, "the worker to deliver the whole stream")
        finally:
            worker.send_signal(signal.SIGTERM)
            _, log = worker.communicate(timeout=60)
        assert worker.returncode == 0, log
        # Its start line names Redis without the password (nor is it anywhere else).
        assert f"events to rediss://worker:***@localhost:{secure.port}/0" in log, log
        assert secure.passwords["worker"] not in log
        key = f"{settings.events_stream}:{stream_id}"
        got = events_in_redis(admin, key)
        _, expected = analyze_in_process(sample(CLIP), models, tmp_path / "embedded",
                                         stream_id=stream_id)
        assert {e["id"] for e in got} == {e["id"] for e in expected}

        reader_env = {**env, "FACESTREAM_REDIS_URL": secure.url("reader")}
        tail = run_cli("events", "tail", "--stream", stream_id, "--json",
                       "--count", str(len(got)), env=reader_env, timeout=120)
        assert tail.returncode == 0, tail.stderr
        assert len(tail.stdout.splitlines()) == len(got)

        refused = run_cli("events", "tail", "--stream", stream_id, "--count", "1",
                          env={**env, "FACESTREAM_REDIS_URL": secure.url("reader", "wrong")},
                          timeout=120)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "wrong" not in lines[0] and "r-secret" not in lines[0], lines
    finally:
        secure.stop()
