"""bench/gpu_check.sh without a GPU: the script parses, its parts' limits stay under
8 minutes, and its summary (bench/gpu_summary.py) reads what the benchmarks it runs really
print — bench_llm.py's shaped-model path and bench_vision.py, both run here on the CPU with
tiny shapes — and a pytest summary line, giving ok / fail / timeout per part and exactly one
``gpu-windows-per-s`` line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from facestream.llm import packed
from tests.helpers import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def summarise(out, parts: list[tuple[str, int, str]]) -> list[str]:
    """Write ``parts`` (name, exit status, output) as gpu_check.sh does, then summarise."""
    out.mkdir(exist_ok=True)
    with open(out / "parts.tsv", "w") as tsv:
        for name, rc, text in parts:
            (out / f"{name}.txt").write_text(text)
            tsv.write(f"{name}\t{rc}\t7\t60\n")
    result = run("bench/gpu_summary.py", str(out))
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_script_parses_and_its_limits_sum_under_8_minutes():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    limits = [int(n) for n in re.findall(r"^part \S+ (\d+) ", SCRIPT.read_text(), re.M)]
    assert len(limits) == 8 and sum(limits) < 480, limits


@pytest.mark.slow
def test_the_summary_reads_the_benchmarks_outputs(tmp_path):
    llm = run("bench/bench_llm.py", "--device", "cpu", "--model-shape", "tiny",
              "--batches", "64", "--answer-tokens", "64")
    assert llm.returncode == 0, llm.stderr
    vision = run("bench/bench_vision.py", "--device", "cpu", "--shape", "tiny",
                 "--kind", "video", "--batches", "1,2", "--backends", "eager", "--seconds", "0.05")
    assert vision.returncode == 0, vision.stderr
    decode = run("bench/bench_llm.py", "--decode-step", "--device", "cpu", "--model-shape",
                 "tiny", "--batches", "2", "--steps", "2", "--rounds", "1")
    assert decode.returncode == 0, decode.stderr
    stall = run("bench/bench_llm.py", "--stall", "--device", "cpu", "--model-shape", "tiny",
                "--stall-running", "2", "--stall-admitted", "2", "--stall-chunks", "0,16",
                "--rounds", "1")
    assert stall.returncode == 0, stall.stderr
    # The engine's batch-64 windows/s as its JSON row says it (not the RESULT line).
    [engine] = [row for row in (json.loads(line[5:]) for line in llm.stdout.splitlines()
                                if line.startswith("JSON "))
                if row.get("run") == "engine" and row.get("batch") == 64]
    lines = summarise(tmp_path, [
        ("gpu", 0, "NVIDIA H200, 143771 MiB, 570.86.15\n"),
        ("gpu-tests", 1, "..F.s\nFAILED tests/llm/test_engine.py::test_x\n"
                         "1 failed, 3 passed, 1 skipped, 40 deselected in 61.20s\n"),
        ("vision-image", 124, vision.stdout.split("RESULT")[0]),   # cut off by its limit
        ("vision-video", 0, vision.stdout),
        ("llm-7b", 0, llm.stdout),
        ("llm-stall", 0, stall.stdout),
        ("llm-decode", 0, decode.stdout),
    ])
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "ok" in rows["gpu"] and "NVIDIA H200" in rows["gpu"]
    assert "fail (exit 1)" in rows["gpu-tests"]
    assert "1 failed, 3 passed, 1 skipped, 40 deselected" in rows["gpu-tests"]
    assert "timeout" in rows["vision-image"] and "no output" not in rows["vision-image"]
    video = [r for r in json.loads(vision.stdout.split("RESULT ")[1])["results"] if r["batch"] == 2]
    assert f"eager {video[0]['windows_per_s']} video windows/s at batch 2" in rows["vision-video"]
    assert f"engine {engine['windows_per_s']} windows/s" in rows["llm-7b"]
    assert "64-token answers, batch 64" in rows["llm-7b"]
    steps = {row["variant"]: row["ms_per_step"] for row in
             (json.loads(line[5:]) for line in decode.stdout.splitlines()
              if line.startswith("JSON ")) if row.get("batch") == 2}
    stalls = [json.loads(line[5:]) for line in stall.stdout.splitlines()
              if line.startswith("JSON ")]
    assert [row["prefill_chunk"] for row in stalls] == [0, 16]
    assert (f"longest stall of a running answer: whole prompts {stalls[0]['max_stall_ms']} ms, "
            f"chunk 16 {stalls[1]['max_stall_ms']} ms" in rows["llm-stall"])
    assert set(steps) == {"static", "rebuilt"} | ({"plain"} if packed.usable(torch.zeros(1))
                                                   else set())
    assert ("decode step at batch 2: " + ", ".join(f"{v} {ms} ms" for v, ms in steps.items())
            in rows["llm-decode"])
    assert [line for line in lines if "gpu-windows-per-s" in line] == [
        f"gpu-windows-per-s: {engine['windows_per_s']}"]


def test_without_a_64_token_batch_64_engine_run_the_rate_is_not_made_up(tmp_path):
    """A run of other batches or answer lengths, or none at all, gives ``n/a``."""
    result = {"bench": "llm_shape", "shape": "7b", "device": "cuda", "answer_tokens": 8,
              "rows": [{"batch": 64, "run": "engine", "windows_per_s": 12.85},
                       {"batch": 64, "run": "hf", "windows_per_s": 11.24}]}
    lines = summarise(tmp_path, [("llm-7b", 0, "RESULT " + json.dumps(result) + "\n")])
    assert lines[-1] == "gpu-windows-per-s: n/a"
    assert "8-token answers, batch 64: engine 12.85 windows/s, HF 11.24" in lines[1]
    lines = summarise(tmp_path, [("llm-7b", 137, "loading\n")])
    assert "timeout" in lines[1] and lines[-1] == "gpu-windows-per-s: n/a"
