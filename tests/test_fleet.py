"""bench/bench_fleet.py's model of one GPU serving a fleet, on cases computed by hand: the
measured-rate curves, the vision batch server, the continuous-batching engine, the looped
and phase-shifted copies of the clips, and the share of changes answered in time.  (The
clips' replay is bench_scheduling's, which runs the real encoder and scheduler.)"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="module")
def fleet():
    """bench/bench_fleet.py as a module (it imports bench_scheduling from its folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "bench"))
        spec = importlib.util.spec_from_file_location("bench_fleet",
                                                      REPO / "bench" / "bench_fleet.py")
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, "bench_fleet", module)       # its dataclasses look it up
        spec.loader.exec_module(module)
        yield module


def flat(fleet, windows_per_s: float):
    """The same rate at every batch size."""
    return fleet.Curve(((1, windows_per_s), (64, windows_per_s)))


def test_curves_interpolate_between_measured_batches_and_stay_flat_outside(fleet):
    curve = fleet.Curve(((1, 0.27), (2, 0.38), (64, 7.86)))
    assert curve.rate(1) == 0.27 and curve.rate(64) == 7.86
    assert curve.rate(1.5) == pytest.approx(0.325)
    assert curve.rate(128) == 7.86                 # no gain beyond the largest measured batch
    scaled = curve.scaled(64, 3.93)
    assert scaled.rate(64) == pytest.approx(3.93) and scaled.rate(2) == pytest.approx(0.19)
    assert fleet.ENGINE_CURVES[64].rate(64) == 7.86 and fleet.VISION_CURVE.rate(16) == 158.0


def test_one_request_alone_takes_one_over_the_batch_1_rate(fleet):
    curve = fleet.Curve(((1, 0.25), (2, 0.4)))
    done, mean_batch = fleet.engine_finish([3.0], curve, max_batch=8)
    assert done == [pytest.approx(7.0)] and mean_batch == pytest.approx(1.0)


def test_requests_arriving_together_share_a_batch_or_queue_for_the_only_slot(fleet):
    curve = fleet.Curve(((1, 0.25), (2, 0.4)))
    # Two in one batch: each at 0.4 / 2 = 0.2 of a window per second -> both done at 5 s.
    assert fleet.engine_finish([0.0, 0.0], curve, max_batch=2)[0] == [pytest.approx(5.0)] * 2
    # One slot: 4 s each, one after the other.
    done, mean_batch = fleet.engine_finish([0.0, 0.0], curve, max_batch=1)
    assert done == [pytest.approx(4.0), pytest.approx(8.0)] and mean_batch == pytest.approx(1.0)


def test_a_request_joins_the_running_batch_and_both_slow_down(fleet):
    """A at 0 s runs alone at 0.25 / s: half done at 2 s, when B joins; both then run at
    0.2 / s, A's last half takes 2.5 s (done 4.5 s), by which B is half done; alone again,
    B's last half takes 2 s (done 6.5 s).  Busy 6.5 s with 1 / 2 / 1 running for 2 / 2.5 /
    2 s: mean batch 9 / 6.5."""
    curve = fleet.Curve(((1, 0.25), (2, 0.4)))
    done, mean_batch = fleet.engine_finish([2.0, 0.0], curve, max_batch=4)    # any order
    assert done == [pytest.approx(6.5), pytest.approx(4.5)]
    assert mean_batch == pytest.approx(9 / 6.5)


def test_the_vision_stage_batches_what_waits_while_it_works(fleet):
    """Two at 0 s go as one batch of 2 (2 / 20 = 0.1 s); the one at 0.05 s waits for it,
    then runs alone (1 / 10 s); the one at 1 s finds the stage idle."""
    curve = fleet.Curve(((1, 10.0), (2, 20.0)))
    assert fleet.vision_finish([0.0, 0.05, 0.0, 1.0], curve) == [
        pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.1), pytest.approx(1.1)]


def clip(fleet, requests, *, seconds=10.0, face_seconds=10.0):
    return fleet.Clip("c", seconds, face_seconds, tuple(requests))


def test_streams_loop_their_clips_out_of_phase(fleet):
    """A 10 s clip with requests at 1 s and 3 s, 2 streams over 20 s: copy 0 as is (1, 3,
    11, 13); copy 1 shifted back by half the clip (6, 8, 16, 18)."""
    one = clip(fleet, [(1.0, True), (3.0, False)])
    got = fleet.fleet_requests([one], 2, 20.0)
    assert got == [(1.0, True), (3.0, False), (6.0, True), (8.0, False),
                   (11.0, True), (13.0, False), (16.0, True), (18.0, False)]
    # Streams take the clips in turn; the second clip's copies are shifted by a further
    # half of 1 / copies of its length: 2.5 s with 2 copies each.
    other = clip(fleet, [(5.0, True)])
    two = fleet.fleet_requests([one, other], 4, 10.0)
    assert [t for t, _ in two] == [1.0, 2.5, 3.0, 6.0, 7.5, 8.0]
    # 3 streams: 2 copies of the first clip (shifted 0 and 5 s), 1 of the second (shifted
    # by half its length, 5 s: its request at 5 s comes at 0 s).
    assert fleet.fleet_streams([one, other], 3) == [(one, 0.0), (other, 5.0), (one, 5.0)]
    assert [t for t, _ in fleet.fleet_requests([one, other], 3, 10.0)] == [0.0, 1.0, 3.0, 6.0, 8.0]


def test_changes_count_as_on_time_only_within_the_deadline(fleet):
    """One change at 1 s in a 10 s clip: vision 1 / 100 s, the engine 1 / 0.5 = 2 s, so its
    answer lands 2.01 s after the window's end (plus the ingest delay)."""
    clips = [clip(fleet, [(1.0, True), (4.0, False)], face_seconds=5.0)]
    model = dict(seconds=10.0, llm=flat(fleet, 0.5), vision=flat(fleet, 100.0), max_batch=8)
    late = fleet.simulate(clips, 1, ingest_s=0.0, deadline_s=2.0, **model)
    assert late == {"streams": 1, "faces": 0.5, "requests_per_s": 0.2,
                    "mean_batch": 1.0, "changes": 1, "on_time": 0.0, "p50_s": 2.01,
                    "p95_s": 2.01}
    on_time = fleet.simulate(clips, 1, ingest_s=0.0, deadline_s=2.05, **model)
    assert on_time["on_time"] == 1.0
    assert fleet.simulate(clips, 1, ingest_s=0.1, deadline_s=2.05, **model)["p50_s"] == 2.11
    # One change per 10 s clip: N streams send one every 10 / N s, and each takes the engine
    # 2 s alone, so up to N = 5 none waits for another; at N = 6 they queue up.
    single = [clip(fleet, [(1.0, True)])]
    assert fleet.largest(single, 0.95, 20, ingest_s=0.0, deadline_s=2.05, **model)["streams"] == 5
    assert fleet.largest(single, 0.95, 20, ingest_s=0.0, deadline_s=2.0, **model) is None

def test_clips_from_replayed_events(fleet):
    """Fresh windows are requests at their window's end; changes are the fresh windows not
    sent for max_interval; a track's span runs from its first window's start to its last
    window's end."""
    def data(track, start, trigger):
        return {"track_id": track, "window": {"start_s": start, "end_s": start + 1.0},
                "description_reused": trigger is None, "description_trigger": trigger}

    events = [data("a", 0.0, "new_track"), data("a", 1.0, None), data("a", 2.0, "max_interval"),
              data("b", 5.0, "new_track"), data("b", 6.0, "action_units")]
    changes = fleet.change_windows(events)
    assert changes == {("a", 0.0), ("b", 5.0), ("b", 6.0)}
    got = fleet.clip_requests("x", events, seconds=10.0, changes=changes)
    assert got.requests == ((1.0, True), (3.0, False), (6.0, True), (7.0, True))
    assert got.face_seconds == 3.0 + 2.0 and got.seconds == 10.0
    assert math.isclose(got.face_seconds / got.seconds, 0.5)
