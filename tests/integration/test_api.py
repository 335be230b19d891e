"""The HTTP API of `facestream serve` (docs/API.md) against the real broker and Redis: the app
runs under uvicorn on a loopback port, each test with its own registry topic, events
streams and status keys."""

from __future__ import annotations

import io
import json
import time
import uuid

import av
import pytest
import redis

from facestream import events
from facestream.sinks.redis_stream import RedisSink
from tests.helpers import analyze_in_process, run_cli
from tests.integration.api_helpers import EventStream, api_settings, call, served, wait_for
from tests.integration.helpers import metric

pytestmark = pytest.mark.integration

# A public address, as the allow-list requires; no test here connects to it.
PUBLIC = "http://93.184.216.34/live.ts"


def _error_event(stream_id: str, seq: int, message: str = "camera hiccup") -> dict:
    return events.stream_error(stream_id=stream_id, message=message, time_s=float(seq), seq=seq,
                               profile="compact", time_epoch=time.time(), fatal=False)


def test_streams_are_added_listed_read_and_removed_in_the_registry_the_cli_uses(isolated):
    settings, env = api_settings(isolated)
    with served(settings) as api:
        assert api.call("GET", "/api/v1/streams")[::2] == (200, [])
        status, _, body = api.call("POST", "/api/v1/streams",
                                   {"id": "lobby", "url": "rtsp://admin:s3cret@93.184.216.34/s1",
                                    "fps": 5, "profile": "compact"})
        assert status == 201, body
        assert body["id"] == "lobby" and body["fps"] == 5.0 and body["profile"] == "compact"
        assert body["url"] == "rtsp://admin:***@93.184.216.34/s1"
        assert body["state"] == "connecting" and body["snapshot"] is False
        # Read-your-writes: the list right after the POST has it.
        listed = api.call("GET", "/api/v1/streams")[2]
        assert [s["id"] for s in listed] == ["lobby"]
        assert "s3cret" not in json.dumps(listed)
        assert api.call("GET", "/api/v1/streams/lobby")[2] == body

        # The CLI reads the same topic: it lists what the API added, and the API sees what
        # the CLI adds.
        listing = run_cli("streams", "list", env={**env, "FACESTREAM_REGISTRY_ALLOW_PRIVATE": "0"})
        assert listing.returncode == 0, listing.stderr
        assert listing.stdout.startswith("lobby\trtsp://admin:s3cret@93.184.216.34/s1\t5 fps"), \
            listing.stdout
        added = run_cli("streams", "add", "dock", PUBLIC, "--fps", "2", env=env)
        assert added.returncode == 0, added.stderr
        wait_for(lambda: api.call("GET", "/api/v1/streams/dock")[0] == 200, 60,
                 "the API to see the stream the CLI added")
        assert api.call("GET", "/api/v1/streams/dock")[2]["fps"] == 2.0

        status, _, body = api.call("DELETE", "/api/v1/streams/lobby")
        assert (status, body) == (204, None)
        assert api.call("GET", "/api/v1/streams/lobby")[::2] == (404, {
            "error": "no stream lobby", "field": None})
        assert [s["id"] for s in api.call("GET", "/api/v1/streams")[2]] == ["dock"]
        listing = run_cli("streams", "list", env=env)
        assert "lobby" not in listing.stdout and listing.stdout.startswith("dock\t")
        removed = run_cli("streams", "remove", "dock", env=env)
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: api.call("GET", "/api/v1/streams/dock")[0] == 404, 60,
                 "the API to see the CLI's removal")

    # A new server reads the whole topic: an id added then removed is gone, one re-added is
    # there with its last spec.
    with served(settings) as api:
        assert api.call("POST", "/api/v1/streams", {"id": "lobby", "url": PUBLIC})[0] == 201
        assert api.call("DELETE", "/api/v1/streams/lobby")[0] == 204
        assert api.call("POST", "/api/v1/streams", {"id": "lobby", "url": PUBLIC,
                                                    "fps": 3})[0] == 201
    with served(settings) as api:
        assert [(s["id"], s["fps"]) for s in api.call("GET", "/api/v1/streams")[2]] == [
            ("lobby", 3.0)]


@pytest.mark.parametrize("body, field, words", [
    ({"id": "a b", "url": PUBLIC}, "id", "use letters, digits"),
    ({"id": "x" * 200, "url": PUBLIC}, "id", "use letters, digits"),
    ({"url": PUBLIC}, "id", "Field required"),
    ({"id": "cam"}, "url", "Field required"),
    ({"id": "cam", "url": PUBLIC, "fps": "10"}, "fps", "valid number"),
    ({"id": "cam", "url": PUBLIC, "fps": 0}, "fps", "outside 0.1..120"),
    ({"id": "cam", "url": PUBLIC, "profile": "huge"}, "profile", "not one of compact"),
    ({"id": "cam", "url": PUBLIC, "owner": "me"}, "owner", "unknown field"),
    ({"id": "cam", "url": "file:///etc/passwd"}, "url", "local files are not allowed"),
    ({"id": "cam", "url": "gopher://93.184.216.34/"}, "url", "scheme 'gopher' is not allowed"),
    ({"id": "cam", "url": "http://127.0.0.1:8554/live"}, "url", "enable registry_allow_private"),
    ({"id": "cam", "url": "http://169.254.169.254/latest"}, "url", "link-local"),
    ([1, 2], None, "must be a JSON object"),
])
def test_bad_bodies_are_422_naming_the_field(isolated, body, field, words):
    settings, _ = api_settings(isolated)
    with served(settings) as api:
        status, _, reply = api.call("POST", "/api/v1/streams", body)
        assert status == 422 and reply["field"] == field and words in reply["error"], reply
        assert "\n" not in reply["error"]
        assert api.call("GET", "/api/v1/streams")[2] == [], "a refused stream was registered"


def test_conflicts_unknown_ids_and_routes_and_private_addresses_when_allowed(isolated):
    settings, _ = api_settings(isolated, registry_allow_private=True)
    with served(settings) as api:
        local = {"id": "cam", "url": "http://127.0.0.1:8554/live"}
        assert api.call("POST", "/api/v1/streams", local)[0] == 201
        status, _, reply = api.call("POST", "/api/v1/streams", {**local, "fps": 2})
        assert status == 409 and reply["field"] == "id" and "exists" in reply["error"]
        assert api.call("GET", "/api/v1/streams/cam")[2]["fps"] == 10.0, "409 changed it"
        assert api.call("GET", "/api/v1/streams/nope")[0] == 404
        assert api.call("DELETE", "/api/v1/streams/nope")[::2] == (404, {
            "error": "no stream nope", "field": None})
        assert api.call("GET", "/api/v1/streams/bad%20id")[::2] == (422, {
            "error": "stream id 'bad id': use letters, digits, '.', '_' and '-'", "field": "id"})
        assert api.call("GET", "/api/v1/nothing")[::2] == (404, {
            "error": "no route GET /api/v1/nothing: see /openapi.json", "field": None})
        assert api.call("PUT", "/api/v1/streams")[0] == 405
        status, _, reply = api.call("POST", "/api/v1/streams", raw=b"{not json",
                                    headers={"Content-Type": "application/json"})
        assert status == 422 and reply == {"error": "the body is not valid JSON", "field": None}
        status, _, reply = api.call("POST", "/api/v1/streams", raw=b'{"id": "x"}')
        assert status == 422 and "Content-Type: application/json" in reply["error"]
        assert api.call("GET", "/api/v1/events?limit=0")[2]["field"] == "limit"
        assert api.call("GET", "/api/v1/events?stream=a:b")[2]["field"] == "stream"

        spec = api.call("GET", "/openapi.json")[2]
        assert {"/api/v1/streams", "/api/v1/streams/{stream_id}", "/api/v1/events",
                "/api/v1/events/stream", "/api/v1/tracks",
                "/api/v1/streams/{stream_id}/snapshot.jpg"} <= set(spec["paths"])


def test_a_token_guards_every_api_route_and_not_the_probes(isolated):
    token = uuid.uuid4().hex
    settings, _ = api_settings(isolated, api_token=token)
    with served(settings) as api:
        for method, path in (("GET", "/api/v1/streams"), ("POST", "/api/v1/streams"),
                             ("GET", "/api/v1/streams/x"), ("DELETE", "/api/v1/streams/x"),
                             ("GET", "/api/v1/events"), ("GET", "/api/v1/tracks"),
                             ("GET", "/api/v1/events/stream")):
            for headers in ({}, {"Authorization": f"Bearer {token}x"},
                            {"Authorization": f"Basic {token}"}):
                status, reply_headers, reply = api.call(method, path, headers=headers)
                assert status == 401, (method, path, headers, status)
                assert reply["field"] is None and "API token" in reply["error"]
                assert reply_headers["www-authenticate"] == "Bearer"
        assert api.call("GET", "/api/v1/streams",
                        headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert api.call("GET", "/api/v1/streams",
                        headers={"Cookie": f"facestream_token={token}"})[0] == 200
        assert api.call("GET", f"/api/v1/streams?access_token={token}")[0] == 200
        assert api.call("POST", "/api/v1/streams", {"id": "cam", "url": PUBLIC},
                        headers={"Authorization": f"Bearer {token}"})[0] == 201
        for path in ("/healthz", "/readyz", "/metrics", "/", "/console/console.js"):
            assert api.call("GET", path)[0] == 200, path


def test_status_from_redis_is_typed_and_redacted_and_snapshots_appear(isolated, sample):
    settings, _ = api_settings(isolated)
    client = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.stream_status_prefix}:cam"
    with served(settings) as api:
        assert api.call("POST", "/api/v1/streams", {"id": "cam", "url": PUBLIC})[0] == 201
        assert api.call("GET", "/api/v1/streams/cam/snapshot.jpg")[::2] == (404, {
            "error": "stream cam has no analysed frame yet", "field": None})
        assert api.call("GET", "/api/v1/streams/other/snapshot.jpg")[0] == 404
        client.hset(key, mapping={
            "state": "reconnecting", "attempt": "3", "reconnects": "7", "frames": "1200",
            "frames_per_s": "9.5", "last_frame_at": "1718000000.25",
            "last_error": "cannot open rtsp://admin:hunter2@93.184.216.34/s1 (timed out)",
            "worker": "host-a:412", "events_per_s": "1.5", "faces": "2", "bytes": "oops"})
        with av.open(str(sample("WolfgangLanger_Pexels.mp4"))) as container:
            image = next(container.decode(video=0)).to_image()
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG")
        client.set(f"{key}:snapshot", jpeg.getvalue())
        stream = api.call("GET", "/api/v1/streams/cam")[2]
        assert {k: stream[k] for k in ("state", "attempt", "reconnects", "frames",
                                       "frames_per_s", "last_frame_at", "worker",
                                       "events_per_s", "faces", "bytes", "snapshot")} == {
            "state": "reconnecting", "attempt": 3, "reconnects": 7, "frames": 1200,
            "frames_per_s": 9.5, "last_frame_at": 1718000000.25, "worker": "host-a:412",
            "events_per_s": 1.5, "faces": 2, "bytes": None, "snapshot": True}
        assert stream["last_error"] == ("cannot open rtsp://admin:***@93.184.216.34/s1 "
                                        "(timed out)")
        status, headers, body = api.call("GET", "/api/v1/streams/cam/snapshot.jpg")
        assert (status, headers["content-type"], body) == (200, "image/jpeg", jpeg.getvalue())
        assert headers["cache-control"] == "no-store"


def test_events_newest_last_after_an_entry_or_event_id_and_limited(isolated):
    settings, _ = api_settings(isolated)
    sink = RedisSink(settings)
    written = [_error_event("cam", i) for i in range(12)] + [_error_event("door", 99)]
    for event in written:
        sink.write([event])
    ids = [e["id"] for e in written]
    with served(settings) as api:
        status, headers, got = api.call("GET", "/api/v1/events?limit=5")
        assert status == 200 and [e["id"] for e in got] == ids[-5:]
        assert got[-1] == written[-1]
        status, headers, got = api.call("GET", "/api/v1/events?stream=cam&limit=4")
        assert [e["id"] for e in got] == ids[8:12]
        last_entry = headers["x-last-entry-id"]
        # after an event id, and after the entry id it is in: the same page.
        by_event = api.call("GET", f"/api/v1/events?stream=cam&after={ids[2]}&limit=3")[2]
        assert [e["id"] for e in by_event] == ids[3:6]
        assert api.call("GET", f"/api/v1/events?stream=cam&after={last_entry}")[2] == []
        entries = redis.Redis.from_url(settings.redis_url).xrange(f"{settings.events_stream}:cam")
        third = entries[2][0].decode()
        assert api.call("GET", f"/api/v1/events?stream=cam&after={third}&limit=3")[2] == by_event
        assert api.call("GET", "/api/v1/events?stream=cam&after=" + "0" * 32)[::2] == (404, {
            "error": f"event {'0' * 32} is not in {settings.events_stream}:cam (never written, "
                     "or trimmed away): read again without 'after'", "field": "after"})
        assert api.call("GET", "/api/v1/events?after=yesterday")[2]["field"] == "after"
        assert api.call("GET", "/api/v1/events?stream=empty")[2] == []


def test_server_sent_events_bring_new_events_and_resume_after_last_event_id(isolated):
    settings, _ = api_settings(isolated)
    sink = RedisSink(settings)
    sink.write([_error_event("cam", 0, "before anyone watched")])
    with served(settings, heartbeat_s=0.5, poll_ms=200) as api:
        watcher = EventStream(api.port, "/api/v1/events/stream?stream=cam")
        try:
            assert watcher.status == 200 and watcher.content_type.startswith("text/event-stream")
            watcher.until_comment("connected")
            wait_for(lambda: metric(api.call("GET", "/metrics")[2].decode(),
                                    "facestream_api_sse_clients") == 1, 30, "the SSE client")
            watcher.until_comment("heartbeat")                  # idle: a comment line comes
            fresh = _error_event("cam", 1, "rtsp://admin:pw@93.184.216.34/ refused")
            sink.write([fresh, _error_event("door", 2)])
            message = watcher.next_message()
            got = json.loads(message["data"])
            assert got["id"] == fresh["id"], "an old event or another stream's came first"
            assert got["data"]["message"] == "rtsp://admin:***@93.184.216.34/ refused"
            first_entry = message["id"]
            later = [_error_event("cam", 2), _error_event("cam", 3)]
            sink.write(later)
            assert json.loads(watcher.next_message()["data"])["id"] == later[0]["id"]
        finally:
            watcher.close()
        wait_for(lambda: metric(api.call("GET", "/metrics")[2].decode(),
                                "facestream_api_sse_clients") == 0, 30,
                 "the closed SSE connection to be let go")
        # A client that resumes gets what came after its last entry, without a gap.
        resumed = EventStream(api.port, "/api/v1/events/stream?stream=cam",
                              headers={"Last-Event-ID": first_entry})
        try:
            assert [json.loads(resumed.next_message()["data"])["id"] for _ in later] == \
                [e["id"] for e in later]
        finally:
            resumed.close()
        # ?after= does the same for a client that cannot set the header (the console).
        started = EventStream(api.port, f"/api/v1/events/stream?stream=cam&after={first_entry}")
        try:
            assert json.loads(started.next_message()["data"])["id"] == later[0]["id"]
        finally:
            started.close()
        assert call(api.port, "GET", "/api/v1/events/stream",
                    headers={"Last-Event-ID": "nonsense"})[0] == 422


def test_tracks_are_timelines_of_real_analysis_events(isolated, models, sample, tmp_path):
    settings, _ = api_settings(isolated)
    _, written = analyze_in_process(sample("WolfgangLanger_Pexels.mp4"), models, tmp_path,
                                    stream_id="lobby")
    RedisSink(settings).write(written)
    windows = [e["data"] for e in written if e["type"] == events.FACE_ANALYSIS]
    assert len(windows) >= 15
    with served(settings) as api:
        status, _, tracks = api.call("GET", "/api/v1/tracks?stream=lobby")
        assert status == 200 and [t["track_id"] for t in tracks] == ["t1"]
        [track] = tracks
        assert track["current"] is False and track["ended_s"] is not None
        assert [(p["start_s"], p["label"], p["scores"]) for p in track["timeline"]] == [
            (w["window"]["start_s"], w["expression"]["label"], w["expression"]["scores"])
            for w in windows]
        assert [p["age"] for p in track["timeline"]] == [w["attributes"]["age"] for w in windows]
        last = windows[-1]
        assert track["expression"] == last["expression"]["label"]
        assert track["gender"] == last["attributes"]["gender"]
        assert track["age"] == last["attributes"]["age"]
        assert api.call("GET", "/api/v1/tracks?stream=elsewhere")[2] == []
        assert api.call("GET", "/api/v1/tracks")[2][0]["timeline"] == track["timeline"]


def test_metrics_count_requests_by_route_and_the_registry_size(isolated):
    settings, _ = api_settings(isolated)
    with served(settings) as api:
        for stream_id in ("a", "b"):
            assert api.call("POST", "/api/v1/streams", {"id": stream_id, "url": PUBLIC})[0] == 201
        api.call("GET", "/api/v1/streams/zzz")
        api.call("GET", "/not/a/route")
        text = api.call("GET", "/metrics")[2].decode()
        assert metric(text, 'facestream_api_requests_total{route="/api/v1/streams",'
                            'status="201"}') == 2
        assert metric(text, 'facestream_api_requests_total{route="/api/v1/streams/{stream_id}",'
                            'status="404"}') == 1
        assert metric(text, 'facestream_api_requests_total{route="unmatched",'
                            'status="404"}') == 1
        assert metric(text, "facestream_api_registry_streams") == 2
        assert metric(text, "facestream_api_registry_loaded") == 1
        assert api.call("GET", "/readyz")[::2] == (200, {
            "ready": True, "checks": {"registry": True, "kafka": True, "redis": True}})

