"""examples/anger_alert.py without Redis: the episode logic (SustainedExpression) on synthetic
events that hold against the shipped schema, the handler that keeps alerts it could not
emit, and the example's imports.  tests/integration/test_examples.py runs the example as a
process against a real worker's events."""

from __future__ import annotations

import ast
import importlib.util
import sys

import pytest

from facestream import events
from facestream.client import Deduplicator, Event
from tests.helpers import REPO

EXAMPLE = REPO / "examples" / "anger_alert.py"
FPS = 10                      # analysed frames per second; windows of 1 s hold 10 frames
T0 = 1_767_225_600.0          # wall time of the stream's first frame (any fixed epoch)


def load_example():
    """examples/anger_alert.py as a module (examples/ is not a package)."""
    name = "facestream_example_anger_alert"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


alerts = load_example()


def analysis(second: int, label: str | None, *, track: str = "t1", stream: str = "lobby",
             frames: int = FPS) -> Event:
    """The analysis event of the 1 s window starting at media second ``second``."""
    start_pts = second * 90_000
    scores = {name: (0.94 if name == label else 0.01) for name in alerts.LABELS}
    data = {
        "stream_id": stream, "track_id": track,
        "window": {"start_s": float(second), "end_s": round(second + (frames - 1) / FPS, 3),
                   "start_pts": start_pts, "end_pts": start_pts + (frames - 1) * 9000,
                   "frames": frames},
        "bbox": [100.0, 80.0, 220.0, 230.0],
        "expression": {"label": label, "scores": scores},
        "action_units": {"AU12": 1.5, "AU6": None, "method": "geometric"},
        "head_pose": {"yaw": 0.0, "pitch": 0.0, "roll": 0.0},
        "attributes": {"gender": {"label": "female", "score": 0.9},
                       "age": {"years": 30.0, "low": 25.0, "high": 36.0}},
        "deepfake": None, "description": None, "description_reused": False,
        "description_age_s": None, "description_trigger": None, "description_from_s": None,
        "description_follows": False,
        "model": {"profile": "compact", "components": {}}, "latency_ms": 12.0,
    }
    raw = events.envelope(events.FACE_ANALYSIS, stream_id=stream, subject=track,
                          event_id_=events.event_id(stream, track, start_pts,
                                                    events.FACE_ANALYSIS, "compact"),
                          time_epoch=T0 + second, data=data)
    return Event.from_dict(raw)           # EventError if the schema refuses it


def track(kind: str, second: float, *, track_id: str = "t1", stream: str = "lobby") -> Event:
    raw = events.track_event(kind, stream_id=stream, track_id=track_id, time_s=second,
                             pts=int(second * 90_000), profile="compact",
                             time_epoch=T0 + second)
    return Event.from_dict(raw)


def labels(sequence: str, *, first: int = 0, **kwargs) -> list[Event]:
    """One window per letter from media second ``first``: A anger, H happy, N neutral,
    S sad, - no label (the facellava profile's unparsed answer)."""
    names = {"A": "anger", "H": "happy", "N": "neutral", "S": "sad", "-": None}
    return [analysis(first + i, names[c], **kwargs) for i, c in enumerate(sequence)]


def detector(**kwargs):
    return alerts.SustainedExpression(**kwargs)


def test_anger_that_lasts_5_s_alerts_once():
    d = detector()
    evs = [track(events.TRACK_STARTED, 0.0)] + labels("NAAAAAAAAN")
    got = [(i, a) for i, e in enumerate(evs) for a in d.feed(e)]
    (position, alert), = got
    assert position == 6                     # the 5th angry window: seconds 1..5 covered
    assert alert["label"] == "anger" and alert["stream_id"] == "lobby"
    assert alert["track_id"] == "t1"
    assert (alert["since_s"], alert["at_s"], alert["duration_s"], alert["windows"]) == \
        (1.0, 6.0, 5.0, 5)
    assert alert["first_event"] == evs[2].id and alert["event"] == evs[6].id
    assert alert["time"] == evs[6].raw["time"]


def test_four_angry_windows_are_not_enough():
    assert detector().feed_all(labels("NAAAAN")) == []
    assert len(detector(seconds=4).feed_all(labels("NAAAAN"))) == 1


def test_flickering_anger_never_alerts():
    for sequence in ("AAAANAAAANAAAA", "AAAHAAAASAAAA", "AAA-AAAA-AAAA"):
        assert detector().feed_all(labels(sequence)) == [], sequence


def test_two_episodes_give_two_alerts_with_their_own_ids():
    got = detector().feed_all(labels("AAAAAAANNAAAAAN"))
    assert [(a["since_s"], a["at_s"]) for a in got] == [(0.0, 5.0), (9.0, 14.0)]
    assert got[0]["id"] != got[1]["id"]


def test_a_window_without_an_expression_ends_the_episode():
    evs = labels("AAAA")
    raw = dict(analysis(4, "anger").raw)
    raw["data"] = {**raw["data"], "expression": None}        # the schema allows null
    evs += [Event.from_dict(raw)] + labels("AAAA", first=5)
    assert detector().feed_all(evs) == []


def test_redelivered_and_replayed_events_alert_once():
    evs = labels("NAAAAAAN")
    once = detector().feed_all(evs)
    assert len(once) == 1

    # Every entry delivered twice, and the whole stream replayed afterwards.
    twice = detector()
    got = twice.feed_all(e for event in evs for e in (event, event))
    assert got == once
    assert twice.feed_all(evs) == []

    # A dedupe store that forgot the ids (capacity 1): an older window met again after later
    # ones is still dropped, by its media time.
    forgetful = detector(dedupe=Deduplicator(1))
    got = []
    for i, event in enumerate(evs):
        got += forgetful.feed(event)
        got += forgetful.feed_all(evs[:i])                  # every earlier window again
    assert got == once


def test_the_same_events_give_the_same_alerts():
    evs = labels("AAAAAANAAAAAA")
    assert detector().feed_all(evs) == detector().feed_all(evs)


def test_track_ended_forgets_the_track():
    d = detector()
    assert d.feed_all(labels("AAA")) == [] and d.tracks() == 1
    assert d.feed(track(events.TRACK_ENDED, 2.9)) == [] and d.tracks() == 0
    # The same track id again (a new track in a restarted stream): it starts from nothing.
    assert d.feed_all(labels("AAA", first=3)) == []
    assert len(d.feed_all(labels("AA", first=6))) == 1       # 3 + 2 windows: 5 s


def test_a_gap_in_the_track_ends_the_episode():
    evs = labels("AAA") + labels("AAA", first=5)             # seconds 3 and 4 missing
    assert detector().feed_all(evs) == []
    assert len(detector(max_gap_s=3).feed_all(evs)) == 1


def test_tracks_and_streams_are_independent():
    one = labels("AAAAA", track="t1")
    other = labels("AAAAA", track="t2")
    elsewhere = labels("AANAA", track="t1", stream="hall")
    mixed = [e for triple in zip(one, other, elsewhere) for e in triple]
    got = detector().feed_all(mixed)
    assert sorted((a["stream_id"], a["track_id"]) for a in got) == [("lobby", "t1"),
                                                                     ("lobby", "t2")]


def test_descriptions_starts_and_errors_change_nothing():
    error = events.stream_error(stream_id="lobby", message="camera dropped", time_s=2.0, seq=0,
                                profile="compact", time_epoch=T0 + 2, fatal=False)
    evs = labels("AAAAA")
    mixed = [track(events.TRACK_STARTED, 0.0)] + evs[:2] + [Event.from_dict(error)] + evs[2:]
    assert detector().feed_all(mixed) == detector().feed_all(evs) != []


def test_the_handler_keeps_an_alert_it_could_not_emit_and_emits_it_on_the_retry():
    emitted, failing = [], [True]

    def emit(alert):
        if failing[0]:
            raise ConnectionError("redis down")
        emitted.append(alert)

    handler = alerts.Service(detector(), emit)
    evs = labels("AAAAA")
    for event in evs[:-1]:
        handler(event)
    with pytest.raises(ConnectionError):
        handler(evs[-1])                     # the subscriber retries this entry later
    failing[0] = False
    handler(evs[-1])                         # the retry: a duplicate, but the alert goes out
    handler(evs[-1])
    assert [a["event"] for a in emitted] == [evs[-1].id]


def test_labels_are_the_event_contracts_and_bad_options_are_refused():
    enum = events.schema()["$defs"]["analysis"]["properties"]["expression"]["properties"][
        "label"]["enum"]
    assert list(alerts.LABELS) == [label for label in enum if label is not None]
    with pytest.raises(ValueError, match="angry"):
        detector(label="angry")
    with pytest.raises(SystemExit):
        alerts.parse_args(["--label", "angry"])
    with pytest.raises(SystemExit):
        alerts.parse_args(["--seconds", "0"])
    args = alerts.parse_args([])
    assert (args.label, args.seconds, args.max_gap, args.stream, args.alerts_key) == \
        ("anger", 5.0, 1.0, None, None)


def test_the_example_imports_only_the_client_and_the_settings():
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names}
    ours = {name for name in imported if name.split(".")[0] == "facestream"}
    assert ours == {"facestream.client", "facestream.config"}
