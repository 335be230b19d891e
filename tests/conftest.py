"""Shared fixtures (shared functions live in tests/helpers.py).  Model files and sample media come from `facestream models pull
--samples` (the README's test command runs it first); a test that needs them fails, with
that command named, when they are absent — it never skips."""

from __future__ import annotations

from pathlib import Path

import pytest

from facestream.config import Settings

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
    from facestream.workers.compose import Models

    return Models.load(Settings.load({"describe": False}))


@pytest.fixture(scope="session")
def models_with_llm(settings):
    from facestream.workers.compose import Models

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
