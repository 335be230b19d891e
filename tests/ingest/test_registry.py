"""Stream specs from the control topic: validated, allow-listed, or refused with a reason."""

from __future__ import annotations

import pytest

from facestream.config import Settings
from facestream.ingest.registry import SpecError, StreamSpec, validate


def _settings(**overrides):
    return Settings.load(overrides, environ={})


@pytest.mark.parametrize("source", [
    "rtsp://93.184.216.34:554/live",
    "https://93.184.216.34/cam.m3u8",
])
def test_public_camera_urls_are_accepted(source):
    assert validate(StreamSpec("lobby", source), _settings()).kind == "url"


@pytest.mark.parametrize("spec, settings, message", [
    (StreamSpec("a", "/etc/passwd"), {}, "local files are not allowed"),
    (StreamSpec("a", "file:///etc/passwd"), {}, "local files are not allowed"),
    (StreamSpec("a", "rtsp://10.0.0.5/live"), {}, "private, loopback or link-local"),
    (StreamSpec("a", "http://127.0.0.1:8080/x"), {}, "private, loopback or link-local"),
    (StreamSpec("a", "http://169.254.169.254/latest/meta-data"), {}, "private, loopback"),
    (StreamSpec("a", "http://localhost/x"), {}, "private, loopback"),
    (StreamSpec("a", "gopher://93.184.216.34/x"), {}, "scheme 'gopher' is not allowed"),
    (StreamSpec("a", "rtsp://93.184.216.34/x"), {"registry_hosts": "cams.example"},
     "not in registry_hosts"),
    (StreamSpec("bad id!", "rtsp://93.184.216.34/x"), {}, "use letters, digits"),
    (StreamSpec("a", "rtsp://93.184.216.34/x", fps=500), {}, "outside 0.1..120"),
    (StreamSpec("a", "rtsp://93.184.216.34/x", profile="huge"), {}, "not one of"),
])
def test_specs_that_must_not_be_applied(spec, settings, message):
    with pytest.raises(SpecError, match=message):
        validate(spec, _settings(**settings))


def test_operator_can_allow_files_and_private_hosts(sample):
    settings = _settings(registry_allow_files=True, registry_allow_private=True)
    assert validate(StreamSpec("a", str(sample("single_face.mp4"))), settings).kind == "file"
    assert validate(StreamSpec("a", "rtsp://10.0.0.5/live"), settings).kind == "url"


@pytest.mark.parametrize("value, message", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"source": 5}', "'source' must be a string"),
    (b'{"source": "rtsp://x", "fps": "fast"}', "'fps' must be a number"),
    (b'{"source": "rtsp://x", "shell": "rm -rf /"}', "unknown fields"),
])
def test_malformed_registry_json(value, message):
    with pytest.raises(SpecError, match=message):
        StreamSpec.from_json("cam", value)


def test_spec_json_round_trip():
    spec = StreamSpec("cam", "rtsp://93.184.216.34/x", 5.0, "compact")
    assert StreamSpec.from_json("cam", spec.to_json()) == spec
