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
SHARED_CHECKER = REPO.parent / "shared" / "tools" / "check_events.py"


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
    """Every event in ``path`` holds against the package's JSON Schema and, where the
    checkout sits beside the shared tools, against ``shared/tools/check_events.py``."""
    from facestream import events

    validator = events.validator()
    for event in read_events(path):
        errors = [e.message for e in validator.iter_errors(event)]
        assert not errors, (event["type"], errors)
    if SHARED_CHECKER.is_file():
        check = subprocess.run([sys.executable, str(SHARED_CHECKER), str(path)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


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
