"""facestream.client without a Redis server: typed events from a real `analyze` run, the
schema's verdicts as one-line errors, the dedupe memory, the subscriber's settings and
defaults, and the import that needs no model runtime.  tests/integration/test_subscriber.py
runs the subscriber against the real Redis."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from facestream import events
from facestream.client import (Deduplicator, Event, EventError, EventSubscriber,
                               SubscriberError)
from facestream.config import Settings
from facestream.errors import ConfigError, redact
from tests.helpers import REPO, read_events, run_cli

MODEL_RUNTIMES = ("torch", "mediapipe", "av", "cv2", "onnxruntime", "llama_cpp")
IMPORT_ONLY = f"""
import sys
for name in {MODEL_RUNTIMES!r}:
    sys.modules[name] = None          # importing it now raises ImportError
from facestream.client import Deduplicator, Event, EventSubscriber
from facestream.config import Settings
sub = EventSubscriber(Settings.load(), group="g", handler=print, dedupe=Deduplicator(10))
loaded = sorted({{m.split('.')[0] for m, v in sys.modules.items() if v is not None}}
                & set({MODEL_RUNTIMES!r}))
print("consumer:", sub.consumer)
print("loaded:", loaded)
"""


def test_the_client_imports_no_model_runtime():
    """A downstream service imports the client and makes a subscriber in a process where
    torch, MediaPipe, PyAV, OpenCV, ONNX Runtime and llama.cpp cannot be imported."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_ONLY], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded: []" in proc.stdout, proc.stdout
    assert f"consumer: {socket.gethostname()}-" in proc.stdout


@pytest.fixture(scope="module")
def analysed(sample, tmp_path_factory) -> list[dict]:
    """The events of a real run with descriptions (analysis, description, track events),
    plus a stream error made by its builder."""
    out = tmp_path_factory.mktemp("analysed")
    proc = run_cli("analyze", str(sample("single_face.mp4")), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    error = events.stream_error(stream_id="single_face", message="camera dropped", time_s=2.5,
                                seq=0, profile="compact", time_epoch=time.time(), fatal=False)
    return read_events(out / "events.jsonl") + [error]


def test_real_events_parse_into_typed_events(analysed):
    parsed = [Event.from_json(json.dumps(raw)) for raw in analysed]
    assert {e.type for e in parsed} == {events.FACE_ANALYSIS, events.FACE_DESCRIPTION,
                                        events.TRACK_STARTED, events.TRACK_ENDED,
                                        events.STREAM_ERROR}
    for event, raw in zip(parsed, analysed):
        assert (event.id, event.type, event.source, event.subject) == (
            raw["id"], raw["type"], raw["source"], raw.get("subject"))
        assert event.time.tzinfo is not None and event.time.isoformat()[:19] == raw["time"][:19]
        assert event.stream_id == "single_face" and event.data == raw["data"]
        assert json.loads(event.to_json()) == raw
        assert Event.from_json(event.to_json().encode()) == event
    assert all(e.track_id == "t1" for e in parsed if e.type != events.STREAM_ERROR)
    assert parsed[-1].track_id is None and parsed[-1].window_key is None

    # A description joins the analysis event of its window, which comes before it.
    analysis = {}
    for position, event in enumerate(parsed):
        if event.type == events.FACE_ANALYSIS:
            analysis[event.window_key] = (position, event)
        elif event.type == events.FACE_DESCRIPTION:
            before, window = analysis[event.window_key]
            assert before < position and window.data["description_follows"]
            assert event.window_key == ("single_face", "t1", window.data["window"]["start_pts"])


@pytest.mark.parametrize("mutate, says", [
    (lambda e: "{not json", "not JSON"),
    (lambda e: json.dumps({**e, "id": "XYZ"}), "id: 'XYZ' does not match"),
    (lambda e: json.dumps({k: v for k, v in e.items() if k != "source"}),
     "'source' is a required property"),
    (lambda e: json.dumps({**e, "type": "facestream.face.other"}), "type:"),
    (lambda e: json.dumps({**e, "data": {**e["data"], "window": "one\nsecond"}}),
     "data/window: 'one\\nsecond' is not of type 'object'"),
    (lambda e: json.dumps([e]), "(the event)"),
    (lambda e: json.dumps({**e, "time": "2024-13-40T00:00:00Z"}), "time: month must be"),
])
def test_an_invalid_event_is_refused_in_one_line(analysed, mutate, says):
    raw = next(e for e in analysed if e["type"] == events.FACE_ANALYSIS)
    with pytest.raises(EventError) as caught:
        Event.from_json(mutate(raw))
    message = str(caught.value)
    assert says in message and "\n" not in message and len(message) <= 300, message


def test_the_deduplicator_remembers_the_last_ids():
    seen = Deduplicator(capacity=3)
    for event_id in ("a", "b", "c"):
        assert event_id not in seen
        seen.add(event_id)
    seen.add("a")                       # seen again: now the most recent
    seen.add("d")                       # forgets the oldest, "b"
    assert [i in seen for i in "abcd"] == [True, False, True, True] and len(seen) == 3
    with pytest.raises(ValueError):
        Deduplicator(0)


def test_subscriber_settings_and_defaults():
    s = Settings.load(environ={})
    assert (s.subscriber_claim_idle_s, s.subscriber_max_deliveries, s.events_retention_s) == (
        30.0, 5, 0.0)
    s = Settings.load(environ={"FACESTREAM_SUBSCRIBER_CLAIM_IDLE_S": "1.5",
                               "FACESTREAM_SUBSCRIBER_MAX_DELIVERIES": "2",
                               "FACESTREAM_EVENTS_RETENTION_S": "86400"})
    assert (s.subscriber_claim_idle_s, s.subscriber_max_deliveries, s.events_retention_s) == (
        1.5, 2, 86400.0)
    for bad in ({"subscriber_claim_idle_s": 0}, {"subscriber_max_deliveries": 0},
                {"events_retention_s": -1}):
        with pytest.raises(ConfigError):
            Settings.load(bad, environ={})

    # Nothing talks to Redis until run(): a subscriber of an unreachable server is made.
    s = Settings.load({"redis_url": "redis://127.0.0.1:1/0"}, environ={})
    a = EventSubscriber(s, group="svc", handler=print)
    b = EventSubscriber(s, group="svc", handler=print, stream="lobby", consumer="fixed")
    assert a.consumer != b.consumer and a.consumer.startswith(f"{socket.gethostname()}-"
                                                              f"{os.getpid()}-")
    assert b.consumer == "fixed"
    assert (a.key, b.key) == ("facestream:events", "facestream:events:lobby")
    assert a.dead_letters == "facestream:events:dead:svc"      # ':' is in no stream id
    with pytest.raises(ValueError):
        EventSubscriber(s, group="svc", handler=print, stream="a:b")


def test_an_unreachable_redis_is_one_line_naming_the_url():
    with socket.socket() as probe:      # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://svc:s3cret@127.0.0.1:{port}/0"
    assert redact(url) == f"redis://svc:***@127.0.0.1:{port}/0"
    sub = EventSubscriber(Settings.load({"redis_url": url}, environ={}), group="g",
                          handler=print)
    with pytest.raises(SubscriberError) as caught:
        sub.run(signals=())
    message = str(caught.value)
    assert message.startswith(f"Redis at redis://svc:***@127.0.0.1:{port}/0: ") and (
        "\n" not in message and "s3cret" not in message), message
