"""``analyze --report`` in a real browser: the page opened from disk shows every track with
its thumbnail loaded and its timeline drawn, raises no error and asks for nothing beyond
the file itself and its ``data:`` images.  The screenshot lands in
``facestream-out/screenshots/report.png``."""

from __future__ import annotations

from facestream import events
from facestream.config import Settings
from facestream.ingest.sources import parse_source
from facestream.workers.embedded import analyze
from tests.browser.conftest import screenshot
from tests.helpers import read_events
from tests.media import two_people_clip


def test_the_report_opens_offline_with_every_track_drawn(page, sample, models_with_llm,
                                                          tmp_path):
    clip = two_people_clip(sample("multi_face.jpg"), models_with_llm.faces, tmp_path / "two.mp4")
    summary = analyze(parse_source(str(clip)), Settings.load({"describe": True}),
                      out_dir=tmp_path / "out", models=models_with_llm, report=True)
    windows: dict[str, int] = {}
    for ev in read_events(summary.events_path):
        if ev["type"] == events.FACE_ANALYSIS:
            windows[ev["data"]["track_id"]] = windows.get(ev["data"]["track_id"], 0) + 1
    assert len(windows) == 2

    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(summary.report_path.as_uri())
    page.wait_for_load_state("load")

    sections = page.locator("section.track")
    assert sorted(sections.evaluate_all("els => els.map(e => e.dataset.track)")) == \
        sorted(windows)
    for track_id, count in windows.items():
        section = page.locator(f'section.track[data-track="{track_id}"]')
        marks = section.locator("svg.timeline rect.window")
        assert marks.count() == count
        # drawn: every mark has a box on the page, inside its chart
        chart = section.locator("svg.timeline").bounding_box()
        assert chart["width"] > 600 and chart["height"] > 100
        for box in marks.evaluate_all(
                "els => els.map(e => { const r = e.getBoundingClientRect();"
                " return [r.x, r.y, r.width, r.height]; })"):
            x, y, width, height = box
            assert width > 0 and height > 0
            assert chart["x"] <= x and x + width <= chart["x"] + chart["width"] + 0.5
        image = section.locator("img.thumb")
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        assert section.locator("li.description").count() >= 1
    assert page.errors == []
    assert requests and all(url.startswith(("file:", "data:")) for url in requests), requests
    screenshot(page, "report")
