"""The web console in a real browser (Debian's Chromium via Playwright) on the real system:
`facestream serve`, `facestream ingest --from-registry` and `facestream worker` as processes
on the real broker and Redis, and a camera that serves a real sample clip over loopback HTTP.
An operator adds the camera in the form, watches it go live, sees the face with its
expression, age, gender and timeline, opens the latest analysed frame, and removes it.
Screenshots of each step go to facestream-out/screenshots/console-*.png."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest

from tests.browser.conftest import screenshot
from tests.integration.api_helpers import api_settings, call, ready, wait_for
from tests.integration.conftest import isolated, services  # noqa: F401  (fixtures)
from tests.integration.helpers import free_port
from tests.media import HttpCamera, remux_video

pytestmark = pytest.mark.integration

EXPRESSIONS = {"neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"}
SLOW_MS = 240_000          # a worker loading its models and analysing on a busy 2-core box


def _start(args: list[str], env: dict, log_path) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", "facestream", *args], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_console_adds_a_camera_watches_its_face_and_removes_it(isolated, sample, page,
                                                               tmp_path):
    from playwright.sync_api import expect

    settings, env = api_settings(isolated, registry_allow_private=True)
    stream_id = f"lobby-{uuid.uuid4().hex[:4]}"
    clip = tmp_path / "live.ts"
    remux_video(sample("WolfgangLanger_Pexels.mp4"), clip, container_format="mpegts")
    camera = HttpCamera(clip.read_bytes(), [1.0])       # every connection: the whole clip
    port = free_port()
    full_env = {**os.environ, **env, "FACESTREAM_API_PORT": str(port)}
    logs = {name: tmp_path / f"{name}.log" for name in ("serve", "ingest", "worker")}
    procs = [_start(["serve"], full_env, logs["serve"]),
             _start(["ingest", "--from-registry"], full_env, logs["ingest"]),
             _start(["worker", "--no-describe"], full_env, logs["worker"])]
    try:
        wait_for(lambda: ready(port) or procs[0].poll() is not None, 90,
                 "facestream serve to be ready")
        assert procs[0].poll() is None, logs["serve"].read_text()
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#streams-empty")).to_be_visible()
        screenshot(page, "console-1-empty")

        page.fill("#add-id", stream_id)
        page.fill("#add-url", camera.url)
        page.click("#add-submit")
        row = page.locator(f"tr[data-stream='{stream_id}']")
        expect(row).to_be_visible()
        expect(row.locator(".state .badge")).to_have_text(
            re.compile("connecting|live|reconnecting"))
        screenshot(page, "console-2-added")

        row.locator("a.open").click()
        face = page.locator(".face[data-track]").first
        expect(face).to_be_visible(timeout=SLOW_MS)
        expect(face.locator(".expr")).to_have_attribute(
            "data-expression", re.compile("|".join(EXPRESSIONS)))
        expect(face.locator(".gender")).to_have_text(re.compile(r"^(female|male) \d+%$"))
        expect(face.locator(".age")).to_have_text(re.compile(r"^\d+ \(\d+–\d+\)$"))
        expect(page.locator(".timeline svg polyline").first).to_be_visible(timeout=SLOW_MS)
        expect(page.locator("#feed-stream li").first).to_be_visible()
        screenshot(page, "console-3-face")

        # State and snapshot come from the supervisor and the worker, through Redis.
        expect(page.locator("#stream-title .badge")).to_have_text("live", timeout=SLOW_MS)
        expect(page.locator("#snapshot")).to_be_visible(timeout=SLOW_MS)
        page.wait_for_function("document.getElementById('snapshot').naturalWidth > 0")
        screenshot(page, "console-4-stream")

        page.click("#stream-remove")
        expect(page.locator("#stream-remove")).to_have_text("Confirm remove")
        page.click("#stream-remove")
        expect(page.locator("#page-streams")).to_be_visible()
        expect(page.locator(f"tr[data-stream='{stream_id}']")).to_have_count(0)
        screenshot(page, "console-5-removed")
        assert call(port, "GET", f"/api/v1/streams/{stream_id}")[0] == 404
        assert page.errors == []
    finally:
        _stop(procs)
        camera.close()
        for name, path in logs.items():
            print(f"--- {name} log (tail)\n{path.read_text()[-3000:]}")


def test_the_console_asks_for_the_token_once_and_refuses_a_bad_url(isolated, page, tmp_path):
    from playwright.sync_api import expect

    token = uuid.uuid4().hex
    settings, env = api_settings(isolated, api_token=token)
    port = free_port()
    log = tmp_path / "serve.log"
    procs = [_start(["serve"], {**os.environ, **env, "FACESTREAM_API_PORT": str(port)}, log)]
    try:
        wait_for(lambda: ready(port) or procs[0].poll() is not None, 90,
                 "facestream serve to be ready")
        assert procs[0].poll() is None, log.read_text()
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#token-modal")).to_be_visible()
        screenshot(page, "console-token")
        page.fill("#token-input", token)
        page.click("#token-form button")
        expect(page.locator("#token-modal")).to_be_hidden()
        expect(page.locator("#streams-empty")).to_be_visible()
        page.fill("#add-id", "door")
        page.fill("#add-url", "http://93.184.216.34/live.ts")
        page.click("#add-submit")
        expect(page.locator("tr[data-stream='door']")).to_be_visible()
        expect(page.locator("#live")).to_have_class(re.compile(r"\bon\b"))   # SSE by cookie
        # A bad URL is refused in the form, its field marked.
        page.fill("#add-id", "other")
        page.fill("#add-url", "file:///etc/passwd")
        page.click("#add-submit")
        expect(page.locator("#add-error")).to_contain_text("local files are not allowed")
        expect(page.locator("#add-url.invalid")).to_be_visible()
        expect(page.locator("tr[data-stream='other']")).to_have_count(0)
        page.reload()
        expect(page.locator("tr[data-stream='door']")).to_be_visible()
        expect(page.locator("#token-modal")).to_be_hidden()
        # The only errors: the browser's own lines for the first calls' 401 answers and the
        # refused URL's 422.
        assert page.errors and all(re.search(r"status of (401|422)", e) for e in page.errors), \
            page.errors
    finally:
        _stop(procs)
