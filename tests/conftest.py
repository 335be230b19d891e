"""Shared fixtures.  Model files and sample media come from `facestream models pull
--samples` (the README's test command runs it first); a test that needs them fails, with
that command named, when they are absent — it never skips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from facestream.config import Settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def sample(settings):
    def resolve(name: str) -> Path:
        path = settings.cache_dir / "samples" / name
        if not path.is_file():
            pytest.fail(f"sample {path} missing: run `facestream models pull --samples`")
        return path
    return resolve


@pytest.fixture(scope="session")
def models(settings):
    """Models without the LLM (fast); the LLM has its own fixture."""
    from facestream.workers.embedded import Models

    return Models.load(Settings.load({"describe": False}))


@pytest.fixture(scope="session")
def models_with_llm(settings):
    from facestream.workers.embedded import Models

    return Models.load(Settings.load({"describe": True}))


@pytest.fixture(scope="session")
def face_analyzer(models):
    return models.faces


@pytest.fixture(scope="module")
def smol(settings):
    """The real SmolLM2-135M-Instruct (fp32) and its tokenizer, with torch on one intra-op
    thread while the module runs: on a shared 2-core box OpenMP spinning costs more than a
    second thread gives."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from facestream import assets

    path = settings.cache_dir / assets.SMOLLM_DIR
    if not (path / "model.safetensors").is_file():
        pytest.fail(f"{path} missing: run `facestream models pull`")
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model, tokenizer
    torch.set_num_threads(threads)


def run_cli(*args: str, timeout: float = 600, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the `facestream` command as a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "facestream", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd)


def check_events_file(path: Path) -> None:
    """``path`` holds at least one event and every event in it holds against the package's
    JSON Schema (``facestream.events.validator``) and the cross-field rules below; the
    failure lists every bad event by line.

    An empty file fails: every run this checks writes events (at least a track or an error),
    so no events means a broken run, which must not pass as "no event was invalid"."""
    from facestream import events

    lines = [(number, line) for number, line in enumerate(path.read_text().splitlines(), 1)
             if line.strip()]
    assert lines, f"{path}: no events; a run that analysed anything writes some"
    validator = events.validator()
    problems = []                       # (line number, event type, schema errors)
    seen: set[str] = set()
    for number, line in lines:
        event = json.loads(line)
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '<event>'}: {e.message}"
                  for e in validator.iter_errors(event)]
        if not errors:
            errors = _cross_field_problems(event, seen)
        if errors:
            kind = event.get("type") if isinstance(event, dict) else None
            problems.append((number, kind, errors))
    assert not problems, f"{path}: {len(problems)} of {len(lines)} events break the contract: " \
                         f"{problems[:5]}"


def _cross_field_problems(event: dict, seen: set[str]) -> list[str]:
    """What the JSON Schema cannot say: fields that must agree with each other, and ids
    unique within one run."""
    data, problems = event["data"], []
    if event["id"] in seen:
        problems.append(f"id {event['id']} twice in one run")
    seen.add(event["id"])
    if event["source"] != f"facestream://{data['stream_id']}":
        problems.append("source is not facestream://<data.stream_id>")
    if "track_id" in data and event.get("subject") != data["track_id"]:
        problems.append("subject is not data.track_id")
    if event["type"] == "facestream.face.analysis":
        window, (x1, y1, x2, y2) = data["window"], data["bbox"]
        if window["end_s"] < window["start_s"]:
            problems.append("window ends before it starts")
        if not (x2 > x1 and y2 > y1):
            problems.append("bbox is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1")
    return problems


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def analyze_in_process(path: Path, models, tmp_path: Path, *, stream_id: str | None = None,
                       **overrides):
    """facestream.workers.embedded.analyze with shared preloaded models."""
    from facestream.ingest.sources import parse_source
    from facestream.workers.embedded import analyze

    settings = Settings.load({"describe": models.analyzer.language is not None, **overrides})
    spec = parse_source(str(path))
    summary = analyze(spec, settings, out_dir=tmp_path, models=models, stream_id=stream_id)
    return summary, read_events(summary.events_path)
