"""``analyze --report``: the page beside events.jsonl, checked against the events.jsonl written
in the same run (tracks, windows, age, gender, descriptions, header), its thumbnails decoded,
and an interrupted run leaving an earlier report as it was."""

from __future__ import annotations

import base64
import statistics
from collections import Counter
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from facestream import __version__, events
from facestream.config import Settings
from facestream.ingest.sources import parse_source
from facestream.sinks.report import THUMB_PX, ReportSink, RunInfo
from facestream.workers.embedded import analyze
from tests.helpers import check_events_file, read_events
from tests.media import SECOND_FACE_AT_S, two_people_clip


class _Page(HTMLParser):
    """The parts of a report the tests read: header facts, and per track section its
    thumbnail, window marks, age, gender and descriptions (with their data- attributes)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.facts: dict[str, str] = {}
        self.tracks: dict[str, dict] = {}
        self._track: dict | None = None
        self._capture: tuple[dict, str] | None = None     # (where, key) of the text to keep
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if "fact" in classes:
            self._fact = a["data-fact"]
        if tag == "dd" and getattr(self, "_fact", None):
            self._capture = (self.facts, self._fact)
            self._fact = None
        if tag == "section" and "track" in classes:
            self._track = {"id": a["data-track"], "thumb": None, "windows": [], "age": None,
                           "gender": None, "descriptions": [], "svgs": 0}
            self.tracks[a["data-track"]] = self._track
        if self._track is None:
            return
        if tag == "img" and "thumb" in classes:
            self._track["thumb"] = a["src"]
        elif tag == "svg":
            self._track["svgs"] += 1
        elif tag == "rect" and "window" in classes:
            self._track["windows"].append(
                (float(a["data-start"]), float(a["data-end"]), a["data-label"]))
        elif "age" in classes and "data-years" in a:
            self._track["age"] = float(a["data-years"])
        elif "gender" in classes and "data-label" in a:
            self._track["gender"] = a["data-label"]
        elif tag == "li" and "description" in classes:
            self._track["descriptions"].append({"start": float(a["data-start"]), "text": ""})
        elif tag == "span" and "text" in classes:
            self._capture = (self._track["descriptions"][-1], "text")

    def handle_data(self, data):
        if self._capture is not None:
            where, key = self._capture
            where[key] = where.get(key, "") + data

    def handle_endtag(self, tag):
        if tag in ("dd", "span"):
            self._capture = None


def _run(source, models, out, **kwargs):
    settings = Settings.load({"describe": models.analyzer.language is not None})
    summary = analyze(parse_source(str(source)), settings, out_dir=out, models=models,
                      report=True, **kwargs)
    return summary, read_events(out / "events.jsonl"), (out / "report.html").read_text()


def _decoded_thumbnail(src: str) -> np.ndarray:
    prefix = "data:image/jpeg;base64,"
    assert src.startswith(prefix), src[:40]
    image = cv2.imdecode(np.frombuffer(base64.b64decode(src[len(prefix):]), np.uint8),
                         cv2.IMREAD_COLOR)
    assert image is not None, "the thumbnail is not a decodable JPEG"
    return image


@pytest.fixture(scope="module")
def described_run(sample, models_with_llm, tmp_path_factory):
    """The two-person clip analysed with descriptions on: (summary, events, page)."""
    folder = tmp_path_factory.mktemp("report")
    clip = two_people_clip(sample("multi_face.jpg"), models_with_llm.faces, folder / "two.mp4")
    return _run(clip, models_with_llm, folder / "out")


def test_each_track_has_its_thumbnail_windows_age_and_gender(described_run):
    summary, evs, text = described_run
    page = _Page(text)
    analysis = [ev["data"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    by_track: dict[str, list[dict]] = {}
    for data in analysis:
        by_track.setdefault(data["track_id"], []).append(data)
    assert len(by_track) == 2 and set(page.tracks) == set(by_track)
    started = {ev["data"]["track_id"]: ev["data"]["time_s"] for ev in evs
               if ev["type"] == events.TRACK_STARTED}
    assert sorted(started.values())[1] >= SECOND_FACE_AT_S - 0.2, "the second face came late"
    for track_id, windows in by_track.items():
        shown = page.tracks[track_id]
        thumb = _decoded_thumbnail(shown["thumb"])
        assert 32 <= max(thumb.shape[:2]) <= THUMB_PX
        assert shown["svgs"] == 1
        assert shown["windows"] == [(d["window"]["start_s"], d["window"]["end_s"],
                                     d["expression"]["label"]) for d in windows]
        years = [d["attributes"]["age"]["years"] for d in windows]
        assert shown["age"] == pytest.approx(statistics.median(years), abs=0.006)
        genders = Counter(d["attributes"]["gender"]["label"] for d in windows)
        assert shown["gender"] == genders.most_common(1)[0][0]
    assert summary.report_path == summary.events_path.parent / "report.html"


def test_the_fresh_descriptions_are_listed_with_their_windows_times(described_run):
    _, evs, text = described_run
    page = _Page(text)
    fresh: dict[str, list[tuple[float, str]]] = {}
    for ev in evs:
        data = ev["data"]
        if ev["type"] == events.FACE_DESCRIPTION or (
                ev["type"] == events.FACE_ANALYSIS and data["description"]
                and not data["description_reused"]):
            fresh.setdefault(data["track_id"], []).append(
                (data["window"]["start_s"], data["description"]))
    assert set(fresh) == set(page.tracks), "every track gets at least its new_track sentence"
    for track_id, expected in fresh.items():
        shown = [(d["start"], d["text"]) for d in page.tracks[track_id]["descriptions"]]
        assert shown == sorted(expected)


def test_the_header_says_what_was_analysed(described_run):
    summary, evs, text = described_run
    facts = _Page(text).facts
    assert facts["frames analysed"] == str(summary.frames)
    assert facts["windows"] == str(summary.windows)
    assert facts["events"] == str(len(evs))
    assert facts["tracks"] == "2"
    assert facts["profile"] == "compact"
    assert facts["descriptions"] == "on"
    assert facts["facestream"] == __version__
    assert facts["frame size"] == "640 × 360 h264"
    assert facts["duration"] == f"{summary.info.duration_s:.1f} s"
    assert str(summary.events_path.parent.parent / "two.mp4") in text


def test_a_photo_gets_one_mark_per_face_and_its_probabilities(sample, models, tmp_path):
    summary, evs, text = _run(sample("multi_face.jpg"), models, tmp_path)
    check_events_file(tmp_path / "events.jsonl")
    page = _Page(text)
    analysis = {ev["data"]["track_id"]: ev["data"] for ev in evs
                if ev["type"] == events.FACE_ANALYSIS}
    assert len(analysis) == 5 and set(page.tracks) == set(analysis)
    for track_id, data in analysis.items():
        shown = page.tracks[track_id]
        _decoded_thumbnail(shown["thumb"])
        assert shown["windows"] == [(0.0, 0.0, data["expression"]["label"])]
        assert shown["age"] == pytest.approx(data["attributes"]["age"]["years"], abs=0.006)
        assert shown["gender"] == data["attributes"]["gender"]["label"]
        assert shown["descriptions"] == []
    assert page.facts["kind"] == "photo" and page.facts["descriptions"] == "off"
    assert "Descriptions were off for this run." in text


def test_the_thumbnail_is_the_frame_where_the_face_was_largest(tmp_path):
    """Three frames of one track, the face largest in the second: the thumbnail is cut from
    that frame (each frame is one flat grey, so its level says which frame it came from)."""
    sink = ReportSink(tmp_path / "report.html")
    boxes = [(100, 100, 140, 150), (80, 80, 200, 230), (120, 120, 170, 180)]
    for level, box in zip((60, 130, 200), boxes):
        sink.frame(np.full((360, 640, 3), level, np.uint8),
                   [("t1", np.array(box, dtype=np.float32), "t1")])
    sink.write([events.track_event(events.TRACK_STARTED, stream_id="s", track_id="t1",
                                   time_s=0.0, pts=0, profile="compact", time_epoch=0.0)])
    path = sink.finish(RunInfo(source="s.mp4", photo=False, width=640, height=360, codec="h264",
                               duration_s=0.3, analysed_s=0.2, source_fps=10.0,
                               analysis_fps=10.0, window_s=1.0, frames=3, windows=0, events=1,
                               profile="compact", describe=False, version=__version__))
    thumb = _decoded_thumbnail(_Page(path.read_text()).tracks["t1"]["thumb"])
    assert abs(float(thumb.mean()) - 130) < 3
    # 120 x 150 box plus a quarter of its longest side around: 225 px, scaled to THUMB_PX
    assert max(thumb.shape[:2]) == THUMB_PX


def test_an_interrupted_rerun_leaves_the_earlier_report_as_it_was(sample, models, tmp_path):
    """The report is written only when a run succeeds: a rerun stopped after it analysed
    frames (here by an interrupt from its progress callback) leaves the earlier
    report.html byte for byte, and no temporary file beside it."""
    out = tmp_path / "out"
    _run(sample("single_face.mp4"), models, out)
    before = (out / "report.html").read_bytes()

    def interrupt(time_s: float, duration_s: float | None, frames: int) -> None:
        if frames == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analyze(parse_source(str(sample("WolfgangLanger_Pexels.mp4"))),
                Settings.load({"describe": False}), out_dir=out, models=models, report=True,
                progress=interrupt)
    assert (out / "report.html").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["events.jsonl", "report.html"]
