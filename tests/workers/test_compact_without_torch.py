"""The compact profile runs without torch and transformers: `./dev demo` installs neither.
`facestream analyze` with descriptions runs here in a process where importing torch,
transformers, safetensors or accelerate fails, as on a machine without them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from facestream import events
from tests.helpers import REPO, check_events_file, read_events

BLOCKED = ("torch", "transformers", "safetensors", "accelerate")
RUN = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None          # importing it now raises ImportError
from facestream.cli import main
code = main(sys.argv[1:])
print("imported:", sorted({{m.split('.')[0] for m, v in sys.modules.items() if v is not None}}
                          & set({BLOCKED!r})), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_analyze_with_descriptions_needs_neither_torch_nor_transformers(sample, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", RUN, "analyze",
                           str(sample("single_face.mp4")), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported: []" in proc.stderr
    check_events_file(out / "events.jsonl")
    evs = read_events(out / "events.jsonl")
    described = [e for e in evs if e["type"] == events.FACE_DESCRIPTION]
    assert described and all(e["data"]["description"] for e in described)
    assert described[0]["data"]["model"]["components"]["description"].endswith("/llamacpp")


def test_what_needs_torch_says_which_extra_installs_it(sample, tmp_path):
    env = {**os.environ, "FACESTREAM_DESCRIPTION_RUNTIME": "torch"}
    proc = subprocess.run([sys.executable, "-c", RUN, "analyze",
                           str(sample("single_face.mp4")), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "facestream: error: this needs torch, which is not installed (the compact profile "
        "runs without it): pip install 'facestream[torch]', or ./dev setup")
