"""The summary table that ends bench/gpu_check.sh.

Reads ``OUT/parts.tsv`` (one line per part the script ran: name, exit status, seconds,
time limit) and each part's output ``OUT/<name>.txt``; prints one line per part — ok, fail
(with the exit status) or timeout, its seconds and limit, and its key figures (a pytest
run: its summary line; bench_vision.py: each backend's rate at the largest batch;
bench_llm.py's shaped model: the engine's and HF's windows/s at the largest batch; anything
else, or a part stopped before its RESULT line: its last line) — then exactly one line
``gpu-windows-per-s: N``: the engine's windows/s at batch 64 with 64-token answers, from
bench_llm.py's ``RESULT`` line (``n/a`` when no part measured it).

    python3 bench/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PYTEST_SUMMARY = re.compile(r"\d+ (passed|failed|errors?|skipped|deselected)|no tests ran")
TIMED_OUT = (124, 137)      # timeout(1)'s status, and a kill after its grace period


def result(text: str) -> dict | None:
    """The last ``RESULT {json}`` line of a benchmark's output."""
    for line in reversed(text.splitlines()):
        if line.startswith("RESULT "):
            try:
                return json.loads(line[len("RESULT "):])
            except json.JSONDecodeError:
                return None
    return None


def status(rc: int) -> str:
    if rc == 0:
        return "ok"
    return "timeout" if rc in TIMED_OUT else f"fail (exit {rc})"


def figures(text: str) -> str:
    """A part's key figures, from its output."""
    found = result(text)
    if found is not None and "results" in found:                # bench_vision.py
        best: dict[str, dict] = {}
        for row in found["results"]:
            if row["batch"] >= best.get(row["backend"], {"batch": 0})["batch"]:
                best[row["backend"]] = row
        return "; ".join(
            f"{name} {row['windows_per_s']} {row['kind']} windows/s at batch {row['batch']}"
            for name, row in best.items()) or "no rows"
    if found is not None and found.get("bench") == "llm_shape":    # bench_llm.py
        batch = max((r["batch"] for r in found["rows"]), default=None)
        if batch is None:
            return "no rows"
        rate = {r["run"]: r["windows_per_s"] for r in found["rows"] if r["batch"] == batch}
        return (f"{found['shape']} shape, {found['answer_tokens']}-token answers, batch "
                f"{batch}: engine {rate.get('engine')} windows/s, HF {rate.get('hf')}")
    if found is not None and found.get("bench") == "llm_decode_step":   # bench_llm.py
        batch = max((r["batch"] for r in found["rows"]), default=None)
        if batch is None:
            return "no rows"
        return f"{found['shape']} shape, decode step at batch {batch}: " + ", ".join(
            f"{r['variant']} {r['ms_per_step']} ms" for r in found["rows"] if r["batch"] == batch)
    if found is not None and found.get("bench") == "llm_stall":        # bench_llm.py
        if not found["rows"]:
            return "no rows"
        return f"{found['shape']} shape, longest stall of a running answer: " + ", ".join(
            f"{_chunk(r['prefill_chunk'])} {r['max_stall_ms']} ms" for r in found["rows"])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tests = [line for line in lines if PYTEST_SUMMARY.search(line)]
    if tests:
        return tests[-1].strip("= ")
    return lines[-1] if lines else "no output"


def _chunk(prefill_chunk: int) -> str:
    return "whole prompts" if prefill_chunk == 0 else f"chunk {prefill_chunk}"


def windows_per_s(texts: list[str]) -> float | None:
    """The engine's windows/s at batch 64 with 64-token answers, from bench_llm.py's
    RESULT line in any of the outputs."""
    for text in texts:
        found = result(text)
        if found is None or found.get("bench") != "llm_shape" or found["answer_tokens"] != 64:
            continue
        for row in found["rows"]:
            if row["run"] == "engine" and row["batch"] == 64:
                return row["windows_per_s"]
    return None


def summary(out: Path) -> list[str]:
    """The table's lines for the parts recorded in ``out``."""
    parts = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines() if line]
    lines = [f"{'part':<16} {'status':<16} {'s':>5} {'limit':>5}  figures"]
    texts = []
    for name, rc, seconds, limit in parts:
        log = out / f"{name}.txt"
        text = log.read_text(errors="replace") if log.is_file() else ""
        texts.append(text)
        lines.append(f"{name:<16} {status(int(rc)):<16} {seconds:>5} {limit:>5}  "
                     f"{figures(text)}")
    rate = windows_per_s(texts)
    lines.append(f"gpu-windows-per-s: {'n/a' if rate is None else rate}")
    return lines


def main() -> int:
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "parts.tsv").is_file():
        print("usage: gpu_summary.py OUT (the folder where bench/gpu_check.sh wrote "
              "parts.tsv)", file=sys.stderr)
        return 2
    print("\n".join(summary(Path(sys.argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
