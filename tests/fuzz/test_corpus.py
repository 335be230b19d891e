"""Replays every corpus file of every fuzz target through its ``TestOneInput``, in plain
Python (no atheris): the seeds, and the ``regress-*`` inputs that once broke a contract.
``./dev fuzz`` runs the targets themselves, coverage-guided; this keeps what they found."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
TARGETS = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))


def _harness(target: str):
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(f"fuzz_{target}")


def test_every_target_has_a_corpus():
    assert TARGETS and all(sorted((CORPUS / t).glob("seed-*")) for t in TARGETS), TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays(target):
    harness = _harness(target)
    files = sorted(p for p in (CORPUS / target).iterdir() if p.is_file())
    failures = []
    for path in files:
        try:
            harness.TestOneInput(path.read_bytes())
        except Exception as exc:  # collected, then reported together: the test still fails
            failures.append(f"{path.name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)
