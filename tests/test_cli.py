"""`facestream analyze` as a user runs it: a real clip in, events out; bad input out cleanly."""

from __future__ import annotations

import socket
import threading

import av
import numpy as np
import pytest

from facestream import events
from tests.helpers import check_events_file, read_events, run_cli
from facestream.scenes import write_clip


def test_sample_clip_gives_valid_events_and_an_annotated_video(sample, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("analyze", str(sample("WolfgangLanger_Pexels.mp4")), "--out", str(out),
                   "--annotate")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "tracks: 1 " in proc.stdout
    assert "t1: mostly " in proc.stdout
    assert "x real time" in proc.stdout
    assert "\r" not in proc.stderr, "progress bar must stay quiet when stderr is not a terminal"

    evs = read_events(out / "events.jsonl")
    check_events_file(out / "events.jsonl")
    kinds = [ev["type"] for ev in evs]
    assert kinds[0] == events.TRACK_STARTED and kinds[-1] == events.TRACK_ENDED
    analysis = [ev["data"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    assert len(analysis) >= 18            # a 19.6 s clip, 1 s windows
    for d in analysis:
        scores = d["expression"]["scores"]
        assert abs(sum(scores.values()) - 1) < 0.01
        assert d["expression"]["label"] == max(scores, key=scores.get)
        assert d["attributes"]["gender"]["label"] == "female"
        assert 15 <= d["attributes"]["age"]["years"] <= 50
        assert d["action_units"]["method"] == "geometric"
        assert d["action_units"]["AU6"] is None           # geometry cannot see it: null
        # a sentence here, or (a fresh window) in the description event that follows
        assert (isinstance(d["description"], str) and d["description"]) \
            or (d["description_follows"] and d["description"] is None)
    described = {ev["data"]["window"]["start_s"]: ev["data"]["description"] for ev in evs
                 if ev["type"] == events.FACE_DESCRIPTION}
    assert {d["window"]["start_s"] for d in analysis if d["description_follows"]} == set(described)
    assert all(isinstance(text, str) and text for text in described.values())
    assert analysis[0]["description_reused"] is False
    fresh = [d for d in analysis if not d["description_reused"]]
    assert len(fresh) < len(analysis), "unchanged windows must reuse the last description"
    # change-triggered descriptions (docs/EVENTS.md): a new expression label is described afresh
    assert all(not b["description_reused"] for a, b in zip(analysis, analysis[1:])
               if a["expression"]["label"] != b["expression"]["label"])

    _check_annotated(out / "annotated.mp4", sample("WolfgangLanger_Pexels.mp4"),
                     frames=int(proc.stdout.split(" frames)")[0].rsplit("(", 1)[1]))


# The label colours facestream draws with (facestream/sinks/annotate.py), as RGB.
_LABEL_COLOURS = np.array([(255, 99, 71), (60, 179, 113), (65, 105, 225), (255, 215, 0),
                           (238, 130, 238), (0, 206, 209), (255, 140, 0), (154, 205, 50)])


def _check_annotated(path, source, *, frames: int, fps: float = 10.0) -> None:
    """The annotated video plays at the source's speed (frame i at its media time, 1/fps
    apart) and, once the first window is analysed, every frame carries a filled label wider
    than a track id alone: the expression, gender and age text."""
    with av.open(str(path)) as video:
        stream = video.streams.video[0]
        got = [(float(f.pts * stream.time_base), f.to_ndarray(format="rgb24"))
               for f in video.decode(stream)]
    assert len(got) == frames
    times = np.array([t for t, _ in got])
    assert np.all(np.diff(times) > 0)
    assert np.mean(np.diff(times)) == pytest.approx(1 / fps, abs=0.01)
    assert np.diff(times).max() < 2 / fps
    with av.open(str(source)) as clip:
        stream = clip.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        originals = {round(float(f.pts * stream.time_base), 2): f.to_ndarray(format="rgb24")
                     for f in clip.decode(stream)}
    assert times[-1] == pytest.approx(duration, abs=2 / fps)
    labelled = 0
    late = [(t, image) for t, image in got if t >= 3.0]
    for t, image in late:
        original = originals[min(originals, key=lambda s: abs(s - t))][:image.shape[0], :image.shape[1]]
        near = [(np.abs(image.astype(int) - c).max(axis=2) <= 30).sum()
                - (np.abs(original.astype(int) - c).max(axis=2) <= 30).sum()
                for c in _LABEL_COLOURS]
        labelled += max(near) >= 1200          # "t1" alone fills ~400 pixels
    assert labelled >= 0.9 * len(late), f"{labelled} of {len(late)} frames labelled"


def test_rerun_gives_identical_event_ids(sample, tmp_path):
    ids = []
    for run in ("a", "b"):
        proc = run_cli("analyze", str(sample("single_face.mp4")), "--out", str(tmp_path / run),
                       "--no-describe")
        assert proc.returncode == 0, proc.stderr
        ids.append([ev["id"] for ev in read_events(tmp_path / run / "events.jsonl")])
    assert ids[0] and ids[0] == ids[1]
    assert len(set(ids[0])) == len(ids[0])


def test_video_without_faces_succeeds_with_no_events(sample, tmp_path):
    proc = run_cli("analyze", str(sample("no_face.mp4")), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "tracks: 0 " in proc.stdout
    assert read_events(tmp_path / "events.jsonl") == []


def test_damaged_tail_is_analysed_up_to_the_damage(sample, tmp_path):
    data = sample("WolfgangLanger_Pexels.mp4").read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) * 6 // 10])
    proc = run_cli("analyze", str(broken), "--out", str(tmp_path / "out"), "--no-describe")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "decoding stopped at" in warning[0] and str(broken) in warning[0]
    evs = read_events(tmp_path / "out" / "events.jsonl")
    assert any(ev["type"] == events.FACE_ANALYSIS for ev in evs)
    errors = [ev for ev in evs if ev["type"] == events.STREAM_ERROR]
    assert len(errors) == 1 and "decoding stopped at" in errors[0]["data"]["message"]


def _unsupported_codec(tmp_path):
    """An MKV whose codec id no decoder knows (same length as the real one, so it parses)."""
    frames = [((i * 9) % 255 * __import__("numpy").ones((64, 64, 3))).astype("uint8") for i in range(5)]
    clip = write_clip(tmp_path / "real.mkv", frames, codec="mpeg4")
    data = clip.read_bytes()
    assert b"V_MPEG4/ISO/ASP" in data
    path = tmp_path / "odd.mkv"
    path.write_bytes(data.replace(b"V_MPEG4/ISO/ASP", b"V_XYZW4/ISO/ASP"))
    return str(path)


def _closed_port_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/camera.ts"


def _silent_server_url(tmp_path):
    """A server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(server.accept()), daemon=True).start()
    tmp_path.joinpath(".keep").write_text("")      # the socket lives as long as the test
    _silent_server_url.server = server
    return f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"


def _write(name, content):
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(content)
        return str(path)
    return make


def _truncated_head(tmp_path):
    from facestream.config import Settings
    data = (Settings.load().cache_dir / "samples" / "WolfgangLanger_Pexels.mp4").read_bytes()
    path = tmp_path / "head.mp4"
    path.write_bytes(data[:3000])
    return str(path)


BAD_INPUTS = [
    ("missing file", lambda p: str(p / "nope.mp4"), "no such file"),
    ("empty file", _write("empty.mp4", b""), "file is empty"),
    ("directory", lambda p: str(p), "is a directory"),
    ("text file", _write("notes.mp4", b"these are not the frames you are looking for\n" * 50), "cannot open"),
    ("random bytes", _write("noise.mov", bytes(range(256)) * 400), "cannot open"),
    ("truncated head", _truncated_head, "cannot open"),
    ("unsupported codec", _unsupported_codec, "unsupported video codec"),
    ("unknown scheme", lambda p: "gopher://example/x.mp4", "unsupported scheme"),
    ("refused URL", _closed_port_url, "cannot open"),
    ("silent URL", _silent_server_url, "cannot open"),
]


@pytest.mark.parametrize("make_source, expected", [(m, e) for _, m, e in BAD_INPUTS],
                         ids=[name for name, _, _ in BAD_INPUTS])
def test_unusable_input_is_one_line_and_exit_2(make_source, expected, tmp_path):
    source = make_source(tmp_path)
    proc = run_cli("analyze", source, "--out", str(tmp_path / "out"), "--no-describe",
                   env={"FACESTREAM_OPEN_TIMEOUT_S": "1"}, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("facestream: error: source ") and source in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_model_files_name_the_fix(sample, tmp_path):
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(tmp_path / "out"),
                   env={"FACESTREAM_CACHE_DIR": str(tmp_path / "empty-cache")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing" in lines[0] and "facestream models pull" in lines[0]


def test_bad_setting_value_in_environment_fails(sample, tmp_path):
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(tmp_path),
                   env={"FACESTREAM_FPS": "fast"})
    assert proc.returncode == 2
    assert "FACESTREAM_FPS='fast': expected float" in proc.stderr
