"""What the user types as a source: parsed, or refused with a one-line reason."""

from __future__ import annotations

import pytest

from facestream.errors import InputError
from facestream.ingest.sources import parse_source, stream_id_from


@pytest.mark.parametrize("text, kind, target, live", [
    ("rtsp://cam.local:554/live", "url", "rtsp://cam.local:554/live", True),
    ("https://example.org/a/clip.mp4", "url", "https://example.org/a/clip.mp4", True),
    ("webcam:0", "webcam", "/dev/video0", True),
])
def test_parse_live_sources(text, kind, target, live):
    spec = parse_source(text)
    assert (spec.kind, spec.target, spec.live) == (kind, target, live)


def test_a_password_in_a_source_url_is_opened_but_never_shown():
    spec = parse_source("rtsp://admin:s3cret@cam.example.com:554/live")
    assert spec.target == "rtsp://admin:s3cret@cam.example.com:554/live"      # what is opened
    assert spec.text == "rtsp://admin:***@cam.example.com:554/live"           # what is said
    with pytest.raises(InputError) as info:
        parse_source("ftp://admin:s3cret@host/x.mp4")
    assert "s3cret" not in str(info.value) and "admin:***@" in str(info.value)


def test_parse_files_and_images(tmp_path):
    clip, photo = tmp_path / "my clip.mp4", tmp_path / "face.JPG"
    clip.write_bytes(b"x")
    photo.write_bytes(b"x")
    assert parse_source(str(clip)).kind == "file"
    assert parse_source(str(photo)).kind == "image"
    assert parse_source(f"file://{clip}").target == str(clip)
    assert parse_source(str(clip)).name == "my-clip"


@pytest.mark.parametrize("text, message", [
    ("", "source is empty"),
    ("ftp://host/x.mp4", "unsupported scheme 'ftp'"),
    ("/definitely/not/here.mp4", "no such file"),
])
def test_parse_rejects(text, message):
    with pytest.raises(InputError, match=message):
        parse_source(text)


def test_stream_ids_are_safe_keys():
    assert stream_id_from("Lobby cam #2 (east)") == "Lobby-cam-2-east"
    assert stream_id_from("///") == "stream"



@pytest.mark.parametrize("text", ["~nosuchuser-facestream/clip.mp4", "x" * 5000 + ".mp4",
                                  "webcam:" + "9" * 5000])
def test_sources_that_name_nothing_usable_are_input_errors(text):
    with pytest.raises(InputError, match="cannot be used") as refused:
        parse_source(text)
    assert len(str(refused.value)) < 250
