"""The Grafana dashboard (deploy/grafana/dashboards/facestream.json) against reality: every
metric its PromQL queries name is exported on the /metrics of a real worker (and, for the
supervisor's row, of a real camera supervisor), scraped after real video went through.

The metric names are read out of each panel's ``expr``: what remains of the query once
strings, label matchers, range selectors and ``by``/``without`` lists are removed, minus
PromQL's functions and keywords.  An exported name is a sample's full name, so a histogram's
``_bucket``/``_sum``/``_count`` and a counter's ``_total`` are matched as Prometheus stores
them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import run_cli
from tests.integration.helpers import free_port, http, metric, stream_status, wait

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/facestream.json"
SUPERVISOR_ROW = "Supervisor (camera ingest)"
PROMQL_WORDS = {
    # functions the dashboard may use
    "sum", "count", "avg", "min", "max", "rate", "irate", "increase", "histogram_quantile",
    "clamp_min", "clamp_max", "topk", "bottomk", "abs", "vector", "scalar", "time",
    # keywords
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool",
}


def dashboard_queries() -> dict[str, list[str]]:
    """Every panel's queries, by the title of the row the panel is under."""
    rows: dict[str, list[str]] = {}
    title = ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] == "row":
            title = panel["title"]
            continue
        rows.setdefault(title, []).extend(t["expr"] for t in panel["targets"])
    return rows


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads; fails on a word it cannot place."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", bare)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    names = {w for w in words if w.startswith("facestream_")}
    unknown = words - names - PROMQL_WORDS
    assert not unknown, f"query {expr!r} uses {sorted(unknown)}: not a facestream metric"
    return names


def exported_names(exposition: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name for family in text_string_to_metric_families(exposition)
            for sample in family.samples}


def missing(names: set[str], port: int) -> set[str]:
    status, text = http(port, "/metrics")
    return names - exported_names(text) if status == 200 else names


def absent_after(names: set[str], port: int, process: subprocess.Popen,
                 timeout_s: float) -> set[str]:
    """The names still missing from /metrics once all appeared, ``process`` exited or
    ``timeout_s`` passed (gauges are refreshed every few seconds, labelled series appear with
    their first sample)."""
    deadline = time.monotonic() + timeout_s
    while (absent := missing(names, port)) and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    return absent


def test_metric_names_are_read_out_of_queries():
    assert metric_names('histogram_quantile(0.95, sum by (le, stage) '
                        '(rate(facestream_stage_seconds_bucket{stage="faces"}[5m])))') == {
        "facestream_stage_seconds_bucket"}
    assert metric_names("sum(rate(facestream_a_total[1m])) / sum(facestream_b)") == {
        "facestream_a_total", "facestream_b"}
    with pytest.raises(AssertionError, match="not a facestream metric"):
        metric_names("count(up == 1)")


def test_every_worker_and_llm_metric_of_the_dashboard_is_on_a_real_worker(isolated, sample,
                                                                          tmp_path):
    """A worker with its language stage (SmolLM2 on llama.cpp) analyses a real clip; its
    /metrics then holds every name the dashboard's worker and LLM rows query."""
    settings, env = isolated
    rows = dashboard_queries()
    wanted = {n for title, exprs in rows.items() if title != SUPERVISOR_ROW
              for e in exprs for n in metric_names(e)}
    assert {"facestream_llm_queued", "facestream_llm_shed_total",
            "facestream_stage_seconds_bucket", "facestream_consumer_lag"} <= wanted
    stream_id = f"dash-{uuid.uuid4().hex[:6]}"
    published = run_cli("ingest", str(sample("single_face.mp4")), "--stream-id", stream_id,
                        env=env, timeout=120)
    assert published.returncode == 0, published.stderr
    port = free_port()
    log_path = tmp_path / "worker.log"
    with open(log_path, "w") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "facestream", "worker"],
            env={**os.environ, **env, "FACESTREAM_DESCRIBE": "true",
                 "FACESTREAM_METRICS_PORT": str(port)},
            stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        wait(lambda: stream_status(settings, stream_id).get("worker_state") == "ended"
             or worker.poll() is not None, 180, "the worker to analyse the clip")
        assert worker.poll() is None, log_path.read_text()
        absent = absent_after(wanted, port, worker, 30)
        assert not absent, f"the dashboard queries metrics the worker does not export: {absent}"
        text = http(port, "/metrics")[1]
        assert metric(text, "facestream_llm_requests_total") >= 1, \
            "the language stage described no window: the LLM row would show nothing real"
        assert metric(text, "facestream_llm_generated_tokens_total") >= 1, \
            "the describer generated no token: its token panel would show nothing real"
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_every_supervisor_metric_of_the_dashboard_is_on_a_real_supervisor(isolated, sample):
    """A camera supervisor publishes a registered clip and keeps retrying a camera that
    refuses connections; its /metrics then holds every name the supervisor row queries."""
    settings, env = isolated
    wanted = {n for e in dashboard_queries()[SUPERVISOR_ROW] for n in metric_names(e)}
    tag = uuid.uuid4().hex[:6]
    port = free_port()
    env = {**env, "FACESTREAM_REGISTRY_TOPIC": f"it-{tag}.streams",
           "FACESTREAM_REGISTRY_ALLOW_FILES": "1", "FACESTREAM_REGISTRY_ALLOW_PRIVATE": "1",
           "FACESTREAM_SUPERVISOR_METRICS_PORT": str(port)}
    for stream_id, source in ((f"clip-{tag}", str(sample("single_face.mp4"))),
                              (f"down-{tag}", "rtsp://127.0.0.1:9/camera")):
        added = run_cli("streams", "add", stream_id, source, env=env)
        assert added.returncode == 0, added.stderr
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "facestream", "ingest", "--from-registry"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        absent = absent_after(wanted, port, supervisor, 120)
        assert supervisor.poll() is None, supervisor.stderr.read()
        assert not absent, f"the dashboard queries metrics the supervisor does not export: {absent}"
    finally:
        supervisor.terminate()
        supervisor.communicate(timeout=60)
