"""README's two commands, from inside the suite: `./dev demo` (set up what the compact
profile needs, then analyse the sample clip) and `./dev setup` run again on a set-up
checkout (cached: it installs nothing).  `./dev test` itself is the runner of this suite."""

from __future__ import annotations

import hashlib
import subprocess

import av
import pytest

from tests.helpers import REPO, check_events_file, read_events

STAMP = REPO / ".venv" / ".facestream-deps"


@pytest.fixture
def set_up():
    """The extras the virtualenv's stamp records; skips where this checkout was not set up
    by `./dev setup` for its current dependencies (the commands would install first)."""
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()
                          + (REPO / "deploy" / "constraints.txt").read_bytes()).hexdigest()
    have = STAMP.read_text().split() if STAMP.is_file() else []
    if not have or have[0] != want:
        pytest.skip("the virtualenv was not set up by ./dev setup for these dependencies")
    return have[1].split(",") if len(have) > 1 else []


def _dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["./dev", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


def test_dev_setup_run_again_installs_nothing(set_up):
    before = STAMP.read_text(), STAMP.stat().st_mtime_ns
    proc = _dev("setup")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "installing" not in output and "already up to date" in output, output
    assert (STAMP.read_text(), STAMP.stat().st_mtime_ns) == before


def test_dev_demo_analyses_the_sample_clip(set_up, tmp_path):
    """README's first command (its output folder moved to ``tmp_path`` with the `--out` it
    passes on to `analyze`): the sample clip's events and annotated video, and the summary."""
    proc = _dev("demo", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing" not in proc.stdout + proc.stderr
    assert "analyze sample:WolfgangLanger_Pexels.mp4 --annotate" in proc.stderr
    assert "tracks: 1" in proc.stdout and "x real time" in proc.stdout, proc.stdout
    check_events_file(tmp_path / "events.jsonl")
    assert any(e["type"] == "facestream.face.analysis"
               for e in read_events(tmp_path / "events.jsonl"))
    with av.open(str(tmp_path / "annotated.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) > 100
