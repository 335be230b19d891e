"""Settings: defaults, environment, overrides, and refusals that name the setting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from facestream.config import ENV_PREFIX, TOOLING_ENV, Settings
from facestream.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_settings_defaults_env_and_overrides():
    s = Settings.load(environ={})
    assert s.fps == 10.0 and s.window_s == 1.0 and s.describe is True
    s = Settings.load({"fps": 5}, environ={"FACESTREAM_FPS": "2", "FACESTREAM_DESCRIBE": "off"})
    assert s.fps == 5.0 and s.describe is False


def test_facellava_generation_defaults():
    """The paper's mode, greedy, room for the reasoning answers (the prompt + answer still
    fit the default llm_max_seq_len: 2,056 visual tokens + about 70 of text + 256)."""
    s = Settings.load(environ={})
    assert s.facellava_landmarks is True
    assert (s.facellava_temperature, s.facellava_top_p) == (0.0, 1.0)
    assert s.facellava_max_new_tokens == 256
    assert 2056 + 70 + s.facellava_max_new_tokens <= s.llm_max_seq_len
    s = Settings.load(environ={"FACESTREAM_FACELLAVA_LANDMARKS": "false",
                               "FACESTREAM_FACELLAVA_TEMPERATURE": "0.1"})
    assert s.facellava_landmarks is False and s.facellava_temperature == 0.1


def test_facellava_preprocessing_defaults():
    """The image resize antialiases as the reference's installed torchvision (0.20.1) does;
    crops follow facestream's rule unless the reference crop tool's is asked for."""
    s = Settings.load(environ={})
    assert s.facellava_resize_antialias is True and s.facellava_crop_rule == "facestream"
    s = Settings.load(environ={"FACESTREAM_FACELLAVA_RESIZE_ANTIALIAS": "false",
                               "FACESTREAM_FACELLAVA_CROP_RULE": "reference"})
    assert s.facellava_resize_antialias is False and s.facellava_crop_rule == "reference"


@pytest.mark.parametrize("overrides, clip_s", [
    ({}, 3.0),                                              # the default: 3 s
    ({"facellava_tasks": "age,deepfake", "facellava_video_window_s": 4}, 4.0),
    ({"facellava_tasks": "age,attributes"}, 0.0),           # no video task asked
    ({"facellava_video_window_s": 0}, 0.0),                 # the analysis window
    ({"facellava_video_window_s": 2, "window_s": 2}, 0.0),  # no longer than the window
    ({"profile": "compact"}, 0.0),
])
def test_facellava_video_window(overrides, clip_s):
    """Face-LLaVA's video tasks reach back ``facellava_video_window_s`` (default 3 s) only
    in the facellava profile, with a video task asked, and past the analysis window."""
    s = Settings.load({"profile": "facellava", "facellava_checkpoint": "ckpt", **overrides},
                      environ={})
    assert s.facellava_video_window_s == overrides.get("facellava_video_window_s", 3.0)
    assert s.facellava_clip_s == clip_s


@pytest.mark.parametrize("overrides, environ, message", [
    ({"facellava_video_window_s": -1}, {}, "facellava_video_window_s=-1.0: must be >= 0"),
    ({"facellava_landmarks": False, "facellava_vision_backend": "onnxruntime"}, {},
     "facellava_landmarks=false runs the projector alone"),
    ({"facellava_top_p": 0}, {}, "facellava_top_p=0.0: must be >= 0.01"),
    ({"facellava_crop_rule": "tasks"}, {},
     "facellava_crop_rule='tasks': must be one of facestream, reference"),
    ({"facellava_temperature": -1}, {}, "facellava_temperature=-1.0: must be >= 0"),
    ({"fsp": 3}, {}, "unknown setting 'fsp'; did you mean 'fps'"),
    ({"fps": 0}, {}, "fps=0.0: must be >= 0.1"),
    ({"window_s": 0.2, "fps": 1}, {}, "shorter than one sampled frame"),
    ({"encoder_backend": "tensorflow"}, {}, "must be one of onnxruntime, torch"),
    ({}, {"FACESTREAM_DESCRIBE": "maybe"}, "expected bool"),
    ({"reconnect_backoff_s": 5, "reconnect_backoff_max_s": 1}, {}, "reconnect_backoff_max_s"),
])
def test_bad_settings_fail_loudly(overrides, environ, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.load(overrides, environ=environ)


def test_every_setting_is_documented():
    for name, doc, _ in Settings.describe_fields():
        assert doc and doc[0].isupper(), name


def test_the_settings_reference_is_current():
    """docs/SETTINGS.md is what ``python -m facestream.config`` prints: a setting added,
    renamed or re-documented without regenerating it fails here."""
    written = (REPO / "docs" / "SETTINGS.md").read_text(encoding="utf-8")
    assert written == Settings.reference(), (
        "docs/SETTINGS.md is stale: run `.venv/bin/python -m facestream.config > "
        "docs/SETTINGS.md`")
    rows = [line for line in written.splitlines() if line.startswith("| `FACESTREAM_")]
    assert len(rows) == len(Settings.describe_fields())
    assert all(line.count(" | ") == 3 for line in rows)        # no stray pipe in a cell
    assert "| `FACESTREAM_DETECT_INTERVAL_S` | `1.0` | >= 0, <= 10 |" in written


def test_every_facestream_variable_the_repo_uses_is_a_setting_or_tooling():
    """``Settings.load`` refuses an unknown ``FACESTREAM_*`` variable, so every such name the
    repo's own scripts, services, benchmarks, tests and docs read or set must be a setting or
    on the documented allow-list (``config.TOOLING_ENV``): otherwise exporting it (for
    ``./dev``, ``deploy/dev-services`` or a benchmark) would stop every facestream command
    started beside it.  ``FACESTREAM_FSP`` is the tests' deliberate misspelling."""
    files = [REPO / "dev", REPO / "README.md", *REPO.glob(".ci/*"), *REPO.glob("docs/*.md"),
             *REPO.glob("deploy/**/*"), *REPO.glob("bench/**/*.py"),
             *REPO.glob("tests/**/*.py"), *REPO.glob("facestream/**/*.py")]
    used: dict[str, set[str]] = {}
    for path in files:
        if path.is_file():
            for name in re.findall(r"\bFACESTREAM_[A-Z0-9_]*[A-Z0-9]\b",
                                   path.read_text(errors="replace")):
                used.setdefault(name, set()).add(path.relative_to(REPO).as_posix())
    settings = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}
    tooling = {ENV_PREFIX + name for name in TOOLING_ENV}
    assert {"FACESTREAM_VENV", "FACESTREAM_KAFKA_PORT", "FACESTREAM_CACHE_DIR"} <= set(used)
    unknown = {name: sorted(where) for name, where in used.items()
               if name not in settings | tooling | {"FACESTREAM_FSP"}}
    assert not unknown, f"neither settings nor in config.TOOLING_ENV: {unknown}"
    Settings.load(environ={name: "1" for name in tooling})      # all of them at once
