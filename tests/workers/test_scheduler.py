"""Change-triggered LLM scheduling: the scheduler's decisions, the cheap signals (head pose,
face shape), the analyzer's events, checkpointing, and the embedded pipeline end to end."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from facestream import events
from facestream.config import Settings
from facestream.encoder import head_pose
from facestream.encoder.action_units import GEOMETRIC_AUS
from facestream.encoder.expression import CONTRACT_LABELS
from facestream.types import Answer, EncoderOutput, FaceChips, FaceSample, FaceWindow
from facestream.workers import checkpoint
from facestream.workers.pipeline import StreamState, TrackMemory, WindowAnalyzer
from facestream.workers.scheduler import (ACTION_UNITS, EXPRESSION, HEAD_POSE, MAX_INTERVAL,
                                          MOTION, NEW_TRACK, Answered, ChangeScheduler,
                                          CheapSignals, Decision, Thresholds, face_shape)
from tests.helpers import analyze_in_process, check_events_file
from facestream.scenes import load_rgb

T = Thresholds(expression=0.4, action_units=1.0, head_pose_deg=10.0, motion=0.1,
               max_interval_s=5.0, label_change=True)
EPS = 1e-3


def _scores(label: str, *, moved: float = 0.0, to: str = "sad") -> np.ndarray:
    """[7] scores with 0.7 on ``label``, the rest spread evenly; ``moved`` of the mass then
    shifts from ``label`` to ``to`` (an L1 change of 2 * moved)."""
    p = np.full(len(CONTRACT_LABELS), 0.05)
    p[CONTRACT_LABELS.index(label)] = 0.7
    p[CONTRACT_LABELS.index(label)] -= moved
    p[CONTRACT_LABELS.index(to)] += moved
    return p


def _signals(*, label: str = "neutral", moved: float = 0.0, au: float = 0.0,
             pose: tuple[float, float, float] = (0.0, 0.0, 0.0),
             shift: float = 0.0) -> CheapSignals:
    scores = _scores(label, moved=moved)
    aus = np.zeros(len(GEOMETRIC_AUS))
    aus[0] = au
    shape = np.linspace(-1, 1, 136).reshape(68, 2) + [shift, 0.0]
    return CheapSignals(expression=scores, label=CONTRACT_LABELS[int(scores.argmax())],
                        action_units=aus, head_pose=head_pose.HeadPose(*pose), shape=shape)


REFERENCE = Answered(_signals(), start_s=10.0)


@pytest.mark.parametrize("case, now, time_s, expected", [
    ("new track", None, 0.0, NEW_TRACK),
    ("nothing moved", _signals(), 11.0, None),
    ("expression just below", _signals(moved=T.expression / 2 - EPS), 11.0, None),
    ("expression just above", _signals(moved=T.expression / 2 + EPS), 11.0, EXPRESSION),
    ("AU just below", _signals(au=T.action_units - EPS), 11.0, None),
    ("AU just above", _signals(au=T.action_units + EPS), 11.0, ACTION_UNITS),
    ("yaw just below", _signals(pose=(T.head_pose_deg - EPS, 0, 0)), 11.0, None),
    ("yaw just above", _signals(pose=(T.head_pose_deg + EPS, 0, 0)), 11.0, HEAD_POSE),
    ("pitch just above", _signals(pose=(0, -T.head_pose_deg - EPS, 0)), 11.0, HEAD_POSE),
    ("roll just above", _signals(pose=(0, 0, T.head_pose_deg + EPS)), 11.0, HEAD_POSE),
    ("motion just below", _signals(shift=T.motion - EPS), 11.0, None),
    ("motion just above", _signals(shift=T.motion + EPS), 11.0, MOTION),
    ("interval just short", _signals(), 10.0 + T.max_interval_s - 0.01, None),
    ("interval reached", _signals(), 10.0 + T.max_interval_s, MAX_INTERVAL),
    ("first trigger in order wins", _signals(au=5.0, shift=1.0), 30.0, ACTION_UNITS),
])
def test_decide(case, now, time_s, expected):
    scheduler = ChangeScheduler(T)
    answered = None if case == "new track" else REFERENCE
    decision = scheduler.decide(answered, now or _signals(), time_s=time_s)
    assert decision == Decision(expected is not None, expected), case


def test_roll_change_wraps_around():
    scheduler = ChangeScheduler(T)
    answered = Answered(_signals(pose=(0, 0, 179.0)), start_s=0.0)
    assert not scheduler.decide(answered, _signals(pose=(0, 0, -179.0)), time_s=1.0).fresh


def test_label_change_trigger_can_be_turned_off():
    scheduler = ChangeScheduler(Thresholds(**{**T.__dict__, "label_change": False}))
    near_tie = Answered(_signals(moved=0.32), start_s=0.0)       # neutral 0.38 vs sad 0.37
    flipped = _signals(moved=0.34)                                # sad 0.39 vs neutral 0.36
    assert near_tie.signals.label != flipped.label
    assert not scheduler.decide(near_tie, flipped, time_s=1.0).fresh
    assert ChangeScheduler(T).decide(near_tie, flipped, time_s=1.0) == Decision(True, EXPRESSION)


def test_every_window_when_max_interval_is_zero():
    scheduler = ChangeScheduler(Thresholds(**{**T.__dict__, "max_interval_s": 0.0}))
    answered = Answered(_signals(), start_s=3.0)
    assert scheduler.decide(answered, _signals(), time_s=3.0) == Decision(True, MAX_INTERVAL)


def test_reference_is_the_last_answered_window_so_drift_triggers():
    """AUs creep up by less than the threshold per window: compared with the previous window
    nothing would ever fire; compared with the last answered one it fires once the creep
    adds up, and then the reference moves there."""
    scheduler = ChangeScheduler(T)
    step = T.action_units * 0.4
    answered, fresh_at = None, []
    for k in range(10):
        now = _signals(au=step * k)
        decision = scheduler.decide(answered, now, time_s=float(k) * 0.1)
        if decision.fresh:
            answered = Answered(now, start_s=float(k) * 0.1)
            fresh_at.append((k, decision.reason))
    per_call = int(T.action_units // step) + 1            # windows until the creep exceeds it
    assert fresh_at == [(0, NEW_TRACK)] + [(k, ACTION_UNITS) for k in range(per_call, 10, per_call)]


@pytest.mark.parametrize("fresh, reason", [(True, None), (False, EXPRESSION), (True, "bored")])
def test_decision_rejects_inconsistent_values(fresh, reason):
    with pytest.raises(ValueError, match="Decision"):
        Decision(fresh, reason)


@pytest.mark.parametrize("field, value, message", [
    ("expression", np.zeros(6), "expression: expected"),
    ("action_units", np.zeros(3), "action_units: expected"),
    ("shape", np.zeros((5, 2)), "shape: expected"),
    ("label", "joy", "label 'joy'"),
])
def test_signals_are_validated(field, value, message):
    good = _signals()
    values = {**good.__dict__, field: value}
    with pytest.raises(ValueError, match=message):
        CheapSignals(**values)


# --- cheap signals on real faces --------------------------------------------------------

@pytest.fixture(scope="module")
def photo_mesh(sample, face_analyzer):
    """(image, mesh [468, 3], landmarks [68, 2]) of the sample's single face."""
    image = load_rgb(sample("single_face.jpg"))
    faces = face_analyzer(image)
    assert len(faces) == 1
    return image, faces.mesh[0], faces.landmarks[0]


def _rot(ax: float, ay: float, az: float) -> np.ndarray:
    """Rz(az) @ Ry(ay) @ Rx(ax), degrees."""
    x, y, z = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rz @ ry @ rx


# A frontal face template in image axes (x right, y down, z away from the camera; pixels),
# built by hand at MediaPipe face-mesh indices: the points head_pose's docstring names (outer
# and inner eye corners, cheek extremes, mouth corners as subject's right / left pairs,
# forehead centre, chin) placed mirror-symmetric about x = 0 with forehead and chin at one
# depth, so the face looks straight at the camera with no tilt; the nose tip (1) sticks out
# toward the camera.  The other 457 points are a fixed random cloud inside the face.
FRONTAL_POINTS = {
    33: (-45.0, -20.0, 8.0), 263: (45.0, -20.0, 8.0),       # outer eye corners
    133: (-15.0, -20.0, 5.0), 362: (15.0, -20.0, 5.0),      # inner eye corners
    234: (-70.0, 10.0, 40.0), 454: (70.0, 10.0, 40.0),      # cheek extremes
    61: (-25.0, 45.0, 5.0), 291: (25.0, 45.0, 5.0),         # mouth corners
    10: (0.0, -85.0, 10.0), 152: (0.0, 95.0, 10.0),         # forehead centre, chin
    1: (0.0, 15.0, -30.0),                                  # nose tip
}


def frontal_template() -> np.ndarray:
    rng = np.random.default_rng(0)
    mesh = rng.uniform([-60.0, -80.0, 0.0], [60.0, 90.0, 40.0], size=(468, 3))
    for index, point in FRONTAL_POINTS.items():
        mesh[index] = point
    return mesh


def head_turn(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The rotation (image axes) that turns a frontal head by the documented angles: yaw > 0
    toward the image's right, pitch > 0 chin forward, roll > 0 clockwise in the image; applied
    pitch first, then yaw, then roll (the docstring's Rz(roll) @ Ry(yaw) @ Rx(pitch)).  Its
    single-axis meaning is checked on the template below."""
    return _rot(-pitch, -yaw, roll)


@pytest.mark.parametrize("yaw, pitch, roll, moved, axis, sign", [
    (20, 0, 0, 1, 0, +1),          # nose tip goes to the image's right (x grows)
    (-20, 0, 0, 1, 0, -1),
    (0, 20, 0, 152, 2, -1),        # chin comes toward the camera (z falls)
    (0, -20, 0, 152, 2, +1),
    (0, 0, 20, 263, 1, +1),        # image-right eye goes down (y grows)
    (0, 0, -20, 263, 1, -1),
])
def test_head_turn_moves_the_template_as_documented(yaw, pitch, roll, moved, axis, sign):
    face = frontal_template()
    turned = face @ head_turn(yaw, pitch, roll).T
    assert np.sign(turned[moved, axis] - face[moved, axis]) == sign


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (-35, 0, 0), (0, 20, 0),
                                              (0, -15, 0), (0, 0, 25), (0, 0, -40),
                                              (40, -15, -10), (-20, 30, 45)])
def test_head_pose_recovers_a_known_rotation(yaw, pitch, roll):
    """A frontal template turned by known angles (as a rigid head turns under a weak
    perspective camera: rotation, uniform scale, shift) reads those angles; pitch is counted
    from the documented camera-facing reading (``PITCH_OFFSET_DEG`` is what an upright face
    reads before it is subtracted)."""
    turned = frontal_template() @ head_turn(yaw, pitch, roll).T * 1.5 + [320.0, 240.0, 0.0]
    got = head_pose.estimate(turned)
    expected = [yaw, pitch - head_pose.PITCH_OFFSET_DEG, roll]
    np.testing.assert_allclose(got.as_array(), expected, atol=1e-6)


@pytest.mark.parametrize("rotation, moved, axis, angle, sign", [
    (_rot(0, -20, 0), 1, 0, "yaw", +1),      # nose tip goes to the image's right: yaw up
    (_rot(0, 20, 0), 1, 0, "yaw", -1),
    (_rot(-20, 0, 0), 152, 2, "pitch", +1),  # chin comes toward the camera (z falls): pitch up
    (_rot(0, 0, 20), 263, 1, "roll", +1),    # image-right eye goes down (y grows): roll up
])
def test_head_pose_signs_match_what_the_image_shows(photo_mesh, rotation, moved, axis, angle,
                                                    sign):
    _, mesh, _ = photo_mesh
    face = (mesh - mesh.mean(0)) @ head_pose.rotation(mesh)           # [468, 3] face axes
    turned = face @ rotation.T
    change = turned[moved, axis] - face[moved, axis]
    assert np.sign(change) == sign * (-1 if axis == 2 else 1)
    delta = getattr(head_pose.estimate(turned), angle) - getattr(head_pose.estimate(face), angle)
    assert delta == pytest.approx(sign * 20.0, abs=1e-6)


@pytest.mark.parametrize("image_turn_deg", [-15.0, 15.0, 30.0])
def test_head_pose_roll_follows_an_in_plane_rotation(photo_mesh, face_analyzer, image_turn_deg):
    image, mesh, _ = photo_mesh
    h, w = image.shape[:2]
    turned = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), image_turn_deg, 1.0),
                            (w, h))
    faces = face_analyzer(turned)
    assert len(faces) == 1
    before, after = head_pose.estimate(mesh), head_pose.estimate(faces.mesh[0])
    # OpenCV turns counter-clockwise for positive angles; roll counts clockwise.
    assert after.roll - before.roll == pytest.approx(-image_turn_deg, abs=2.5)
    assert abs(after.yaw - before.yaw) < 4 and abs(after.pitch - before.pitch) < 4


def test_head_pose_mirror_flips_yaw_and_roll(sample, face_analyzer):
    image = load_rgb(sample("45-m7-di-ph.jpg"))            # a face turned to the image's left
    pose, mirrored = (head_pose.estimate(face_analyzer(im).mesh[0])
                      for im in (image, np.ascontiguousarray(image[:, ::-1])))
    assert pose.yaw < -20
    assert mirrored.yaw == pytest.approx(-pose.yaw, abs=3)
    assert mirrored.roll == pytest.approx(-pose.roll, abs=3)
    assert mirrored.pitch == pytest.approx(pose.pitch, abs=3)


def test_face_shape_ignores_position_size_and_roll(photo_mesh):
    _, _, points = photo_mesh
    a = np.radians(25.0)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = (points - points.mean(0)) @ rot.T * 1.7 + [40.0, -15.0]
    np.testing.assert_allclose(face_shape(moved), face_shape(points), atol=1e-9)


# --- the analyzer's events ----------------------------------------------------------------

class _Encoder:
    """Stands in for the compact encoder: each window's output by its start time."""

    components = {"expression": "test-encoder"}

    def __init__(self, outputs: dict[float, EncoderOutput]) -> None:
        self.outputs = outputs

    def encode(self, windows):
        return [self.outputs[w.start_s] for w in windows]


class _Describer:
    components = {"description": "test-describer"}

    def __init__(self) -> None:
        self.calls: list = []

    def answer(self, items):
        self.calls += items
        return [Answer(f"answer {len(self.calls) - len(items) + i}") for i in range(len(items))]


def _output(label: str) -> EncoderOutput:
    scores = dict(zip(CONTRACT_LABELS, map(float, _scores(label))))
    return EncoderOutput(expression=scores, age_years=30.0, age_low=25.0, age_high=35.0,
                         gender="female", gender_score=0.9,
                         action_units={au: 0.0 for au in GEOMETRIC_AUS})


# label per window start (s): a change at 2 s, then steady until the maximum interval
LABELS = {0.0: "neutral", 1.0: "neutral", 2.0: "happy", 3.0: "happy", 4.0: "happy",
          5.0: "happy", 6.0: "happy", 7.0: "happy"}
EXPECTED = {0.0: NEW_TRACK, 1.0: None, 2.0: EXPRESSION, 3.0: None, 4.0: None, 5.0: None,
            6.0: None, 7.0: MAX_INTERVAL}


@pytest.fixture(scope="module")
def track_windows(photo_mesh):
    """One track's windows at LABELS' times, two samples each, the same face throughout."""
    _, mesh, landmarks = photo_mesh
    xy = mesh[:, :2]
    box = np.concatenate([xy.min(0), xy.max(0)])
    chips = FaceChips(np.zeros((1, 64, 64), np.uint8), np.zeros((1, 64, 64, 3), np.uint8),
                      np.zeros((1, 32, 32, 3), np.uint8))
    return [FaceWindow("s", "t1", tuple(FaceSample(t + dt, int((t + dt) * 1000), 0.0, box,
                                                   landmarks, mesh, chips) for dt in (0.0, 0.5)),
                       (640, 480), final=t == max(LABELS))
            for t in LABELS]


def _analyze(windows, *, batches: list[int], describer=None) -> list[dict]:
    thresholds = Thresholds(expression=1.0, action_units=3.0, head_pose_deg=30.0, motion=0.15,
                            max_interval_s=5.0, label_change=True)
    analyzer = WindowAnalyzer(_Encoder({t: _output(l) for t, l in LABELS.items()}), describer,
                              scheduler=ChangeScheduler(thresholds))
    state = StreamState("s", Settings.load(environ={}))
    out, i = [], 0
    for n in batches:
        out += [e["data"] for e in analyzer.analyze([(state, w) for w in windows[i:i + n]])]
        i += n
    assert i == len(windows) and not state.memory, "the final window forgets the track"
    return out


def test_events_say_fresh_or_reused_with_the_answer_and_its_age(track_windows):
    describer = _Describer()
    data = _analyze(track_windows, batches=[1] * len(track_windows), describer=describer)
    validator = events.validator()
    last_fresh = None
    for d in data:
        start = d["window"]["start_s"]
        assert d["description_trigger"] == EXPECTED[start], start
        assert d["description_reused"] == (EXPECTED[start] is None)
        if not d["description_reused"]:
            last_fresh = d
        assert d["description"] == last_fresh["description"]
        assert d["description_from_s"] == last_fresh["window"]["start_s"]
        assert d["description_age_s"] == pytest.approx(start - last_fresh["window"]["start_s"])
        assert set(d["head_pose"]) == {"yaw", "pitch", "roll"}
    assert len(describer.calls) == sum(r is not None for r in EXPECTED.values())
    validator.validate(events.envelope(events.FACE_ANALYSIS, stream_id="s", subject="t1",
                                       event_id_="0" * 32, time_epoch=0.0, data=data[-1]))


@pytest.mark.parametrize("batches", [[8], [3, 5], [2, 2, 2, 2]])
def test_batching_does_not_change_decisions(track_windows, batches):
    """The worker hands over several windows of one track at once; decisions must be those
    of one window per call."""
    keys = ("description", "description_reused", "description_age_s", "description_trigger",
            "description_from_s", "head_pose")
    one_by_one = _analyze(track_windows, batches=[1] * 8, describer=_Describer())
    together = _analyze(track_windows, batches=batches, describer=_Describer())
    def view(data):
        return [{k: d[k] for k in keys} for d in data]

    assert view(together) == view(one_by_one)


class _SheddingDescriber(_Describer):
    """The LLM engine shed the window at 2.0 s (its request was dropped under load)."""

    def answer(self, items):
        answers = super().answer(items)
        return [None if w.start_s == 2.0 else a for (w, _), a in zip(items, answers)]


def test_a_shed_window_keeps_the_last_answer_and_the_next_one_retries(track_windows):
    data = _analyze(track_windows, batches=[1] * len(track_windows),
                    describer=_SheddingDescriber())
    by_start = {d["window"]["start_s"]: d for d in data}
    shed, after = by_start[2.0], by_start[3.0]
    assert shed["description_reused"] and shed["description_trigger"] is None
    assert shed["description"] == by_start[0.0]["description"]
    # Still not answered since the label changed: the next window asks again.
    assert not after["description_reused"] and after["description_trigger"] == EXPRESSION


def test_without_describer_events_have_no_description(track_windows):
    for d in _analyze(track_windows, batches=[8]):
        assert (d["description"], d["description_reused"], d["description_age_s"],
                d["description_trigger"], d["description_from_s"]) == (None, False, None, None,
                                                                        None)
        assert set(d["head_pose"]) == {"yaw", "pitch", "roll"}


def test_track_memory_survives_a_checkpoint():
    memory = TrackMemory(description="a woman", answered=Answered(_signals(au=1.5), 4.0),
                         latest=_output("happy"))
    blob = checkpoint.dumps(checkpoint.Checkpoint(checkpoint.VERSION, "s", 7, {"t1": memory}))
    back = checkpoint.loads(blob)
    assert back is not None, "the restricted unpickler refused the scheduler's state"
    got = back.stream["t1"]
    assert got.description == memory.description and got.latest == memory.latest
    assert got.answered.start_s == 4.0
    for name in ("expression", "action_units", "shape"):
        np.testing.assert_array_equal(getattr(got.answered.signals, name),
                                      getattr(memory.answered.signals, name))
    assert got.answered.signals.head_pose == memory.answered.signals.head_pose


# --- end to end -----------------------------------------------------------------------------

def test_describe_off_events_carry_pose_and_no_description(sample, models, tmp_path):
    summary, evs = analyze_in_process(sample("single_face.mp4"), models, tmp_path)
    analysis = [ev for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    assert analysis and summary.llm_calls == 0
    validator = events.validator()
    for ev in analysis:
        validator.validate(ev)
        d = ev["data"]
        assert d["description"] is None and d["description_reused"] is False
        assert d["description_age_s"] is None and d["description_trigger"] is None
        assert set(d["head_pose"]) == {"yaw", "pitch", "roll"}


@pytest.fixture(scope="module")
def models_inline():
    from facestream.workers.compose import Models

    models = Models.load(Settings.load({"describe": True, "description_mode": "inline"}))
    yield models
    models.close()


@pytest.mark.slow
def test_descriptions_follow_their_windows_and_reuse_says_the_same(
        sample, models_with_llm, models_inline, tmp_path):
    """Follow mode (the default): a fresh window's event goes out without waiting, marked
    ``description_follows``; its sentence comes later as one facestream.face.description
    event for the same window; later windows that reuse it carry the text.  Joined, the two
    kinds of event say exactly what inline mode (each event waits for its sentence) says."""
    clip = sample("WolfgangLanger_Pexels.mp4")
    summary, evs = analyze_in_process(clip, models_with_llm, tmp_path / "follow")
    _, inline_evs = analyze_in_process(clip, models_inline, tmp_path / "inline")
    check_events_file(summary.events_path)
    validator = events.validator()
    for ev in evs + inline_evs:
        validator.validate(ev)
    assert models_with_llm.analyzer.follows and not models_inline.analyzer.follows

    def key(d):
        return d["stream_id"], d["track_id"], d["window"]["start_pts"]

    position = {(ev["type"], key(ev["data"])): n for n, ev in enumerate(evs)
                if ev["type"] in (events.FACE_ANALYSIS, events.FACE_DESCRIPTION)}
    written = {key(ev["data"]): ev["data"] for ev in evs if ev["type"] == events.FACE_DESCRIPTION}
    analysis = [ev["data"] for ev in evs if ev["type"] == events.FACE_ANALYSIS]
    fresh = [d for d in analysis if not d["description_reused"]]
    assert summary.llm_calls == len(fresh) == len(written) < len(analysis)
    last: dict[str, dict] = {}
    for d in analysis:
        if d["track_id"] not in last:
            assert d["description_trigger"] == NEW_TRACK and not d["description_reused"]
        if not d["description_reused"]:
            assert d["description_follows"] and d["description"] is None
            assert d["description_trigger"] is not None and d["description_age_s"] == 0
            assert d["description_from_s"] == d["window"]["start_s"]
            follow = written[key(d)]
            assert follow["window"] == d["window"] and follow["description"]
            assert follow["description_trigger"] == d["description_trigger"]
            assert position[(events.FACE_DESCRIPTION, key(d))] > \
                position[(events.FACE_ANALYSIS, key(d))]
            last[d["track_id"]] = {**d, "description": follow["description"]}
            continue
        answer = last[d["track_id"]]
        assert not d["description_follows"] and d["description_trigger"] is None
        assert d["description"] == answer["description"]
        assert d["description_from_s"] == answer["window"]["start_s"]
        assert d["description_age_s"] == pytest.approx(
            d["window"]["start_s"] - answer["window"]["start_s"], abs=1e-3)
    # Inline: no description events, each fresh window carries its own sentence.
    inline = [ev["data"] for ev in inline_evs if ev["type"] == events.FACE_ANALYSIS]
    assert not [ev for ev in inline_evs if ev["type"] == events.FACE_DESCRIPTION]
    assert len(inline) == len(analysis)
    for d, i in zip(analysis, inline):
        joined = {**d, "description_follows": False, "latency_ms": i["latency_ms"]}
        if not d["description_reused"]:
            joined["description"] = written[key(d)]["description"]
        assert joined == i


# --- follow mode: descriptions on the describer's thread --------------------------------

class _GatedDescriber(_Describer):
    """Answers only once ``gate`` is set; ``fail`` makes its next call raise."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.fail = False

    def answer(self, items):
        if not self.gate.wait(timeout=60):
            raise TimeoutError("the test never opened the gate")
        if self.fail:
            self.fail = False
            raise RuntimeError("LLM server went away")
        return super().answer(items)


class _ReleasingEncoder(_Encoder):
    """Opens the describer's gate when it encodes a window starting at ``release_at``."""

    def __init__(self, outputs, gate, release_at: float) -> None:
        super().__init__(outputs)
        self._gate, self._release_at = gate, release_at

    def encode(self, windows):
        if any(w.start_s == self._release_at for w in windows):
            self._gate.set()
        return super().encode(windows)


def _follow_analyzer(describer, encoder=None) -> WindowAnalyzer:
    thresholds = Thresholds(expression=1.0, action_units=3.0, head_pose_deg=30.0, motion=0.15,
                            max_interval_s=5.0, label_change=True)
    return WindowAnalyzer(encoder or _Encoder({t: _output(l) for t, l in LABELS.items()}),
                          describer, scheduler=ChangeScheduler(thresholds), follow=True)


def test_a_fresh_window_is_published_while_its_description_is_being_written(track_windows):
    describer = _GatedDescriber()
    analyzer = _follow_analyzer(describer)
    state = StreamState("s", Settings.load(environ={}))
    try:
        (first,) = analyzer.analyze([(state, track_windows[0])])
        # The describer is still blocked, yet the window's event is out.
        assert first["data"]["description_follows"] and first["data"]["description"] is None
        assert first["data"]["description_trigger"] == NEW_TRACK
        assert analyzer.describing == 1 and analyzer.completed() == []
        describer.gate.set()
        (described,) = analyzer.completed(wait=True)
        events.validator().validate(described)
        assert described["type"] == events.FACE_DESCRIPTION
        assert described["data"]["window"] == first["data"]["window"]
        assert described["data"]["description"] == "answer 0"
        assert described["id"] != first["id"] and analyzer.describing == 0
        (second,) = analyzer.analyze([(state, track_windows[1])])
        assert second["data"]["description"] == "answer 0"
        assert second["data"]["description_reused"] and not second["data"]["description_follows"]
    finally:
        describer.gate.set()
        analyzer.close()


def test_a_window_that_reuses_a_description_waits_for_it(track_windows):
    """Window 1 reuses window 0's sentence, still being written when window 1 closes: its
    event waits for the sentence rather than going out without it (or with none)."""
    describer = _GatedDescriber()
    encoder = _ReleasingEncoder({t: _output(l) for t, l in LABELS.items()}, describer.gate,
                                release_at=1.0)
    analyzer = _follow_analyzer(describer, encoder)
    state = StreamState("s", Settings.load(environ={}))
    try:
        analyzer.analyze([(state, track_windows[0])])
        assert not describer.gate.is_set() and analyzer.describing == 1
        (second,) = analyzer.analyze([(state, track_windows[1])])
        assert second["data"]["description"] == "answer 0" and second["data"]["description_reused"]
        assert [e["data"]["description"] for e in analyzer.completed()] == ["answer 0"]
    finally:
        describer.gate.set()
        analyzer.close()


def test_a_failed_description_loses_no_event_and_the_track_is_described_again(track_windows,
                                                                               caplog):
    describer = _GatedDescriber()
    describer.fail = True
    describer.gate.set()
    analyzer = _follow_analyzer(describer)
    state = StreamState("s", Settings.load(environ={}))
    try:
        (first,) = analyzer.analyze([(state, track_windows[0])])
        assert first["data"]["description_follows"]
        assert analyzer.completed(wait=True) == []
        assert analyzer.llm_failed == 1 and "LLM server went away" in caplog.text
        # No sentence was written: the track's next window is new to the describer again.
        (second,) = analyzer.analyze([(state, track_windows[1])])
        assert second["data"]["description_trigger"] == NEW_TRACK
        assert second["data"]["description_follows"]
        (described,) = analyzer.completed(wait=True)
        assert described["data"]["window"] == second["data"]["window"]
    finally:
        analyzer.close()
