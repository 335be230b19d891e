"""`facestream analyze` as a user runs it: a real clip in, events out; bad input out cleanly.
The distributed commands' first contact with a broker that is not there ends the same way."""

from __future__ import annotations

import re
import socket
import threading
import time

import av
import cv2
import numpy as np
import pytest

from facestream import events
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.vision.decode import Decoder
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
        played_s = float(stream.duration * stream.time_base)
    assert len(got) == frames
    times = np.array([t for t, _ in got])
    assert np.all(np.diff(times) > 0)
    assert np.mean(np.diff(times)) == pytest.approx(1 / fps, abs=0.01)
    assert np.diff(times).max() < 2 / fps
    with av.open(str(source)) as clip:
        stream = clip.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        frame_s = float(1 / stream.average_rate)
        originals = {round(float(f.pts * stream.time_base), 2): f.to_ndarray(format="rgb24")
                     for f in clip.decode(stream)}
    # Frame i of the video is shown at the media time of the i-th analysed frame (the frames
    # the decoder picks at this rate), and the video lasts as long as the source.
    decoder = Decoder(parse_source(str(source)), stream_id="check", fps=fps,
                      backoff=Backoff(0, 0, 0))
    analysed = [f.time_s for f in decoder.frames()]
    assert list(times) == pytest.approx(analysed, abs=frame_s)
    assert played_s == pytest.approx(duration, abs=1 / fps)
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


def test_an_annotated_photo_is_a_labelled_image(sample, tmp_path):
    """README: ``--annotate`` draws boxes, track ids, expression, gender and age.  A photo is
    one frame: it comes out as an image (``annotated.jpg``) whose label holds the analysis of
    that frame, and the summary calls it a photo rather than 0 s of video at 10 fps."""
    photo = sample("0-f15-hao-ph.jpg")
    out = tmp_path / "out"
    proc = run_cli("analyze", str(photo), "--out", str(out), "--annotate", "--no-describe",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["annotated.jpg", "events.jsonl"]
    original = cv2.imread(str(photo))
    height, width = original.shape[:2]
    assert proc.stdout.splitlines()[0] == f"{photo}: photo {width}x{height}, 1 frame analysed"
    assert f"annotated image: {out / 'annotated.jpg'}" in proc.stdout
    [face] = [ev["data"] for ev in read_events(out / "events.jsonl")
              if ev["type"] == events.FACE_ANALYSIS]
    drawn = cv2.cvtColor(cv2.imread(str(out / "annotated.jpg")), cv2.COLOR_BGR2RGB)
    assert drawn.shape == original.shape
    gender, age = face["attributes"]["gender"]["label"], face["attributes"]["age"]["years"]
    label = f"{face['track_id']} {face['expression']['label']} {gender[0].upper()}{age:.0f}"
    (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
    x1, y1 = (int(round(v)) for v in face["bbox"][:2])
    top = max(0, y1 - text_h - 6)
    # The label's filled band runs above the whole text (its second row is clear of the
    # letters), not only above the track id.
    row = drawn[top + 1, x1:x1 + text_w].astype(int)
    filled = max((np.abs(row - c).max(axis=1) <= 40).mean() for c in _LABEL_COLOURS)
    assert filled >= 0.9, f"label {label!r} not drawn full width ({filled:.2f})"


def test_report_is_written_beside_the_events(sample, tmp_path):
    """``--report`` adds ``report.html`` beside events.jsonl, one page with no outside
    reference, and the summary names it."""
    out = tmp_path / "out"
    proc = run_cli("analyze", str(sample("single_face.jpg")), "--out", str(out), "--report",
                   "--no-describe", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["events.jsonl", "report.html"]
    assert f"report: {out / 'report.html'}" in proc.stdout
    page = (out / "report.html").read_text()
    [track] = {ev["data"]["track_id"] for ev in read_events(out / "events.jsonl")
               if ev["type"] == events.FACE_ANALYSIS}
    assert f'<section class="track" id="track-{track}" data-track="{track}">' in page
    assert 'src="data:image/jpeg;base64,' in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)


def test_a_failed_rerun_leaves_the_output_folder_as_it_was(sample, tmp_path):
    """A rerun into an earlier run's folder that fails before analysing anything (the source
    is unusable; the model files are missing) leaves that run's outputs as they were (its
    report included), and a failed run leaves no empty folder behind."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").write_text('{"from": "the earlier run"}\n')
    (out / "annotated.mp4").write_bytes(b"the earlier run's video")
    (out / "report.html").write_text("<p>the earlier run's report</p>\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a photo\n" * 100)
    runs = [(bad, {}), (sample("single_face.jpg"),
                        {"FACESTREAM_CACHE_DIR": str(tmp_path / "empty-cache")})]
    for source, env in runs:
        proc = run_cli("analyze", str(source), "--out", str(out), "--annotate", "--report",
                       "--no-describe", env=env, timeout=120)
        assert proc.returncode == 2, (source, proc.stderr)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before, source
    fresh = tmp_path / "fresh"
    proc = run_cli("analyze", str(bad), "--out", str(fresh / "run"), "--report",
                   "--no-describe", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert not fresh.exists()


def test_an_unknown_sample_name_lists_the_samples(tmp_path):
    proc = run_cli("analyze", "sample:nope.mp4", "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("facestream: error: unknown sample 'nope.mp4'")
    assert "WolfgangLanger_Pexels.mp4" in lines[0] and "multi_face.jpg" in lines[0]
    assert "models pull" not in lines[0]


# Nothing listens on port 1 of the loopback address: every connection is refused at once.
_NO_BROKER = "127.0.0.1:1"
_BROKER_COMMANDS = {
    "streams list": lambda sample: ["streams", "list"],
    "streams add": lambda sample: ["streams", "add", "lobby", "rtsp://camera.example/live"],
    "ingest": lambda sample: ["ingest", str(sample("single_face.mp4")), "--stream-id", "lobby"],
    "worker": lambda sample: ["worker", "--no-describe"],
}


@pytest.mark.parametrize("command", list(_BROKER_COMMANDS))
def test_an_unreachable_broker_is_one_line_and_exit_2(command, sample):
    """README: exit code 2 for an unreachable address, errors one line.  The commands that
    talk to Kafka give up on a broker that does not answer within a few seconds (not
    kafka-python's 30 s), name the setting that points at it, and keep the client library's
    connection log off the terminal.  The bound is for a hang, not a speed target (the
    worker loads its models first)."""
    started = time.monotonic()
    proc = run_cli(*_BROKER_COMMANDS[command](sample), timeout=120,
                   env={"FACESTREAM_KAFKA_BOOTSTRAP": _NO_BROKER, "FACESTREAM_METRICS_PORT": "0"})
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"facestream: error: Kafka at {_NO_BROKER} is unreachable (")
    assert "check FACESTREAM_KAFKA_BOOTSTRAP" in lines[0]
    assert elapsed < (30 if command == "worker" else 15), elapsed
