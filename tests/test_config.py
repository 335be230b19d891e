"""Settings: defaults, environment, overrides, and refusals that name the setting."""

from __future__ import annotations

import pytest

from facestream.config import Settings
from facestream.errors import ConfigError


def test_settings_defaults_env_and_overrides():
    s = Settings.load(environ={})
    assert s.fps == 10.0 and s.window_s == 1.0 and s.describe is True
    s = Settings.load({"fps": 5}, environ={"FACESTREAM_FPS": "2", "FACESTREAM_DESCRIBE": "off"})
    assert s.fps == 5.0 and s.describe is False


@pytest.mark.parametrize("overrides, environ, message", [
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
