"""deploy/: the Helm chart's values are all documented (values.yaml comments, rendered into
docs/DEPLOY.md's table), and the images' HEALTHCHECK asks the right port of the right
command.  The chart itself, the compose file and the Dockerfiles are validated by
``./dev check-deploy`` (helm, kubectl-validate, the compose-spec schema, BuildKit's checks),
which needs Go-built tools and so stays out of the suite."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from facestream.workers.metrics import WorkerMetrics, serve
from tests.integration.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
# Values holding Kubernetes objects or free maps: documented as a whole, not key by key.
BLOCKS = {"resources", "nodeSelector", "tolerations", "affinity", "podSecurityContext",
          "securityContext", "livenessProbe", "readinessProbe", "startupProbe", "extraEnv",
          "podLabels", "podAnnotations", "labels", "imagePullSecrets", "settings"}


def value_paths(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in BLOCKS:
            paths += value_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_every_chart_value_is_documented_in_deploy_md():
    values = yaml.safe_load((REPO / "deploy/helm/facestream/values.yaml").read_text())
    documented = {}
    for line in (REPO / "docs/DEPLOY.md").read_text().splitlines():
        row = re.match(r"\| `([\w.]+)` \|[^|]*\| (.*) \|$", line)
        if row:
            documented[row.group(1)] = row.group(2).strip()
    paths = value_paths(values)
    assert len(paths) > 80
    undocumented = [p for p in paths if not documented.get(p)]
    assert undocumented == [], f"values without a row (and its words) in docs/DEPLOY.md: {undocumented}"
    stale = sorted(d for d in documented                  # a section's row is fine
                   if not any(p == d or p.startswith(f"{d}.") for p in paths))
    assert stale == [], f"docs/DEPLOY.md documents values the chart does not have: {stale}"


def _healthcheck():
    spec = importlib.util.spec_from_file_location("healthcheck", REPO / "deploy/docker/healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_image_healthcheck_asks_the_running_command_on_its_port():
    health = _healthcheck().health
    port = free_port()
    server = serve(WorkerMetrics(), port, host="127.0.0.1")
    try:
        worker = ["/opt/facestream/venv/bin/facestream", "worker"]
        assert health(worker, {"FACESTREAM_METRICS_PORT": str(port)}) == (0, "ok")
        status, why = health(["facestream", "serve"], {"FACESTREAM_API_PORT": str(free_port())})
        assert status == 1 and "facestream serve: /healthz on port" in why
        assert health(["facestream", "ingest", "--from-registry"],
                      {"FACESTREAM_SUPERVISOR_METRICS_PORT": "-1"})[0] == 0
        assert health(["facestream", "analyze", "clip.mp4"], {}) == (0, "no endpoint to ask")
    finally:
        server.shutdown()
        server.server_close()
