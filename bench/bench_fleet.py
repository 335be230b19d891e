"""GPU fleet arithmetic: how many tracked faces one GPU answers within 2 s of a change.

**The scheduler's decisions are real; the GPU is a model fed with measured rates, not a GPU
run.**  bench_scheduling's three clips (the sample clip, ``crossing``, ``switching``) are
decoded, tracked and replayed once through the compact encoder and the scheduler, giving
every window that would go to the LLM, with its trigger and media time: with the default
settings (``change-triggered``) and, as the baseline, a fresh answer for every window
(``every-window``).  The fleet is S streams, each looping one clip for ``--seconds``: stream
s plays clip s mod 3, as its copy k = s // 3 of n, (k + c / 3) / n of a clip length out of
phase (c the clip's index), so changes and new tracks of the copies do not coincide (S = 3N:
N copies of each clip).  Decisions do not depend on speed: the model runs in simulated
time (nothing sleeps, nothing runs on a GPU).

The model of one GPU, each request a Face-LLaVA video window:

* **vision** — one batch server: when idle it takes every request waiting as one batch of W
  windows for W / V(W) s (the worker's one vision call per round), V the vision path's
  measured video windows/s at batch W (H200, docs/PERFORMANCE.md: 55 / 151 / 158 at batch
  1 / 4 / 16; ``--vision-windows-per-s`` rescales the batch-16 figure);
* **LLM** — continuous batching over ``--max-batch`` slots: a request takes a slot as soon
  as one is free, and while b requests run each advances at R(b) / b windows per second, R(b)
  the engine's measured windows/s at batch b (so b requests started together end after
  b / R(b) s, as measured).  Curves: ``--answer-tokens 64`` — 0.27 / 0.38 / 0.66 / 1.88 /
  3.55 / 5.72 / 7.86 windows/s at batch 1 / 2 / 4 / 8 / 16 / 32 / 64; ``8`` — 1.71 / 3.79 /
  12.85 at batch 1 / 16 / 64 (bench_llm.py, 7B shape, H200).  Linear between the measured
  batch sizes, flat beyond; ``--windows-per-s`` rescales a curve to a new batch-64 figure.
  The vision stage's GPU time (1/158 s a window, ~5 % of the engine's 1/7.86 s) is not taken
  from the engine's rate.

Requests reach the engine independently, as their windows close: the engine is shared by
the workers of all the streams (an LLM tier, ``llm_endpoint``), none of them waits for
another's answers.  (A worker that holds several streams in-process answers a round's
windows before it takes its next round; that coupling is not modelled.)

A request reaches the GPU when its window closes (the window's end, media time) plus
``--ingest-s`` (0 by default: the worker's own latency, ~0.9 s p50 on one stream in
bench_latency, comes on top).  A **change** is a window the change-triggered scheduler sent
for a change — a new track, or a cheap signal past its threshold (every trigger but
``max_interval``); in both configurations its latency is its own request's answer time minus
the window's end.  Per configuration and number of streams: concurrently tracked faces
(time average), requests/s, the engine's mean running batch, changes, the share answered
<= ``--deadline-s`` after their window's end, p50 / p95 of that latency.  Then per
configuration the most streams whose share is >= ``--target`` (searched one stream at a
time), their tracked faces, and the ratio change-triggered / every-window.  The last line
is ``RESULT {json}``.  About a minute on a 2-core machine (the replay), the model seconds.

    .venv/bin/python bench/bench_fleet.py [--answer-tokens 64,8] [--windows-per-s 7.86]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

import bench_scheduling
from facestream.config import Settings
from facestream.workers.scheduler import MAX_INTERVAL


@dataclass(frozen=True)
class Curve:
    """Windows/s measured at some batch sizes, ``((batch, windows_per_s), ...)`` by batch:
    linear in between, flat outside."""

    points: tuple[tuple[int, float], ...]

    def rate(self, batch: float) -> float:
        return float(np.interp(batch, [b for b, _ in self.points], [r for _, r in self.points]))

    def scaled(self, batch: int, windows_per_s: float) -> "Curve":
        """The same shape with ``windows_per_s`` at ``batch``."""
        factor = windows_per_s / self.rate(batch)
        return Curve(tuple((b, r * factor) for b, r in self.points))


# Measured on one H200 (docs/PERFORMANCE.md, "LLM engine" and "Face-LLaVA vision path").
ENGINE_CURVES = {
    64: Curve(((1, 0.27), (2, 0.38), (4, 0.66), (8, 1.88), (16, 3.55), (32, 5.72), (64, 7.86))),
    8: Curve(((1, 1.71), (16, 3.79), (64, 12.85))),
}
VISION_CURVE = Curve(((1, 55.0), (4, 151.0), (16, 158.0)))
CONFIGS = ("change-triggered", "every-window")


@dataclass(frozen=True)
class Clip:
    """One clip's LLM requests as the scheduler sent them, to be looped."""

    name: str
    seconds: float                              # loop length
    face_seconds: float                         # summed over its tracks
    requests: tuple[tuple[float, bool], ...]    # (window end, media s; a change?), in order


def clip_requests(name: str, events: Sequence[dict], *, seconds: float,
                  changes: set[tuple[str, float]]) -> Clip:
    """A clip from its replayed analysis events' data: the fresh windows are its requests,
    those in ``changes`` (track id, window start) its changes."""
    spans: dict[str, tuple[float, float]] = {}
    for d in events:
        start, end = d["window"]["start_s"], d["window"]["end_s"]
        first, last = spans.get(d["track_id"], (start, end))
        spans[d["track_id"]] = (min(first, start), max(last, end))
    requests = tuple((d["window"]["end_s"], (d["track_id"], d["window"]["start_s"]) in changes)
                     for d in events if not d["description_reused"])
    return Clip(name, seconds, sum(end - start for start, end in spans.values()), requests)


def change_windows(events: Sequence[dict]) -> set[tuple[str, float]]:
    """(track id, window start) of the windows sent for a change: fresh, not by max_interval."""
    return {(d["track_id"], d["window"]["start_s"]) for d in events
            if not d["description_reused"] and d["description_trigger"] != MAX_INTERVAL}


def fleet_streams(clips: Sequence[Clip], streams: int) -> list[tuple[Clip, float]]:
    """(clip, phase s) of each stream: stream s loops clip c = s mod len(clips) as that clip's
    copy k = s // len(clips) of n, shifted back by (k + c / len(clips)) / n of its length."""
    out = []
    for s in range(streams):
        c, k = s % len(clips), s // len(clips)
        copies = len(range(c, streams, len(clips)))
        out.append((clips[c], (k + c / len(clips)) / copies * clips[c].seconds))
    return out


def fleet_requests(clips: Sequence[Clip], streams: int,
                   seconds: float) -> list[tuple[float, bool]]:
    """(arrival s, a change?) of every request in [0, ``seconds``) of ``streams`` looped
    streams (:func:`fleet_streams`); sorted."""
    out = []
    for clip, phase in fleet_streams(clips, streams):
        for loop in range(math.ceil((seconds + phase) / clip.seconds) + 1):
            for t, change in clip.requests:
                at = loop * clip.seconds + t - phase
                if 0.0 <= at < seconds:
                    out.append((at, change))
    return sorted(out)


def vision_finish(arrivals: Sequence[float], curve: Curve) -> list[float]:
    """When each request leaves the vision stage: a batch server that, when idle, takes every
    request that has arrived as one batch of W for W / ``curve.rate(W)`` s."""
    order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
    finish = [math.nan] * len(arrivals)
    free, k = -math.inf, 0
    while k < len(order):
        start = max(free, arrivals[order[k]])
        batch = []
        while k < len(order) and arrivals[order[k]] <= start:
            batch.append(order[k])
            k += 1
        free = start + len(batch) / curve.rate(len(batch))
        for i in batch:
            finish[i] = free
    return finish


def engine_finish(arrivals: Sequence[float], curve: Curve,
                  max_batch: int) -> tuple[list[float], float]:
    """(when each request's answer is done, the mean number running while any runs) for a
    continuous-batching engine: a request takes one of ``max_batch`` slots as soon as one is
    free (first come, first served); while b run, each advances at ``curve.rate(b) / b`` of a
    window per second."""
    order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
    finish = [math.nan] * len(arrivals)
    waiting: deque[int] = deque()
    running: dict[int, float] = {}          # request -> work left, in windows
    now, nxt, busy, slot_seconds = 0.0, 0, 0.0, 0.0
    while nxt < len(order) or waiting or running:
        while waiting and len(running) < max_batch:
            running[waiting.popleft()] = 1.0
        speed = curve.rate(len(running)) / len(running) if running else 0.0
        done_at = now + min(running.values()) / speed if running else math.inf
        arrive_at = arrivals[order[nxt]] if nxt < len(order) else math.inf
        t = min(done_at, arrive_at)
        if running:
            busy += t - now
            slot_seconds += (t - now) * len(running)
            for i in running:
                running[i] -= (t - now) * speed
        now = t
        if arrive_at <= done_at:
            waiting.append(order[nxt])
            nxt += 1
            continue
        for i in [i for i, left in running.items() if left <= 1e-9]:
            finish[i] = now
            del running[i]
    return finish, (slot_seconds / busy if busy else 0.0)


def simulate(clips: Sequence[Clip], streams: int, *, seconds: float, llm: Curve, vision: Curve,
             max_batch: int, ingest_s: float, deadline_s: float) -> dict:
    """A fleet of ``streams`` streams (:func:`fleet_streams`) through the model of one GPU."""
    requests = fleet_requests(clips, streams, seconds)
    seen = vision_finish([t + ingest_s for t, _ in requests], vision)
    done, mean_batch = engine_finish(seen, llm, max_batch)
    late = [d - t for d, (t, change) in zip(done, requests) if change]
    faces = sum(clip.face_seconds / clip.seconds for clip, _ in fleet_streams(clips, streams))
    return {"streams": streams, "faces": round(faces, 1),
            "requests_per_s": round(len(requests) / seconds, 3),
            "mean_batch": round(mean_batch, 2), "changes": len(late),
            "on_time": round(sum(x <= deadline_s for x in late) / len(late), 4) if late else None,
            "p50_s": round(float(np.percentile(late, 50)), 3) if late else None,
            "p95_s": round(float(np.percentile(late, 95)), 3) if late else None}


def largest(clips: Sequence[Clip], target: float, limit: int, **model) -> dict | None:
    """The row of the largest number of streams (from 1 up, until the first miss) whose
    share of changes on time is >= ``target``; None when one stream misses."""
    best = None
    for streams in range(1, limit + 1):
        row = simulate(clips, streams, **model)
        if row["on_time"] is None or row["on_time"] < target:
            break
        best = row
    return best


def replay_clips(settings: Settings) -> dict[str, list[Clip]]:
    """Each configuration's clips, from one decode and track of each (bench_scheduling)."""
    faces, encoder = bench_scheduling.load_models(settings)
    clips: dict[str, list[Clip]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in bench_scheduling.sample_clips(settings, faces, Path(tmp)).items():
            state, batches = bench_scheduling.collect(path, settings, faces)
            memo = bench_scheduling.MemoEncoder(encoder)
            events = {config: bench_scheduling.decisions(
                state, batches, memo,
                dataclasses.replace(settings, **bench_scheduling.CONFIGS[config]))[0]
                for config in CONFIGS}
            changes = change_windows(events["change-triggered"])
            for config in CONFIGS:
                clips[config].append(clip_requests(name, events[config], changes=changes,
                                                   seconds=state.last_time_s + 1 / settings.fps))
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answer-tokens", default="64,8",
                        help="comma-separated: the measured engine curves to use (64 and/or 8)")
    parser.add_argument("--windows-per-s", type=float, default=None,
                        help="the engine's windows/s at batch 64 (default: the measured "
                             "figure of the curve; needs one --answer-tokens)")
    parser.add_argument("--vision-windows-per-s", type=float, default=158.0,
                        help="the vision path's video windows/s at batch 16")
    parser.add_argument("--max-batch", type=int, default=64, help="engine slots")
    parser.add_argument("--ingest-s", type=float, default=0.0,
                        help="seconds from a window's end to its request reaching the GPU")
    parser.add_argument("--deadline-s", type=float, default=2.0)
    parser.add_argument("--target", type=float, default=0.95,
                        help="share of changes to answer within --deadline-s")
    parser.add_argument("--seconds", type=float, default=300.0, help="simulated seconds")
    parser.add_argument("--streams", default="3,6,12,24,48",
                        help="comma-separated stream counts for the table")
    parser.add_argument("--max-streams", type=int, default=600,
                        help="where the search for the most streams served stops")
    args = parser.parse_args()
    try:
        tokens = [int(t) for t in args.answer_tokens.split(",")]
        streams = [int(n) for n in args.streams.split(",")]
    except ValueError:
        parser.error("--answer-tokens and --streams take comma-separated integers")
    if unknown := [t for t in tokens if t not in ENGINE_CURVES]:
        parser.error(f"--answer-tokens {unknown[0]}: measured curves exist for "
                     f"{', '.join(map(str, ENGINE_CURVES))} tokens")
    if args.windows_per_s is not None and len(tokens) != 1:
        parser.error("--windows-per-s rescales one curve: give one --answer-tokens")
    if min(streams) < 1 or args.max_batch < 1 or args.seconds <= 0:
        parser.error("--streams, --max-batch and --seconds must be positive")
    settings = Settings.load({"describe": False})
    print("The scheduler's decisions are real (clips replayed through the encoder and the "
          "scheduler); the GPU is a model fed with measured rates, not a GPU run.")
    clips = replay_clips(settings)
    vision = VISION_CURVE.scaled(16, args.vision_windows_per_s)
    for config, cs in clips.items():
        print(f"{config}: " + ", ".join(
            f"{c.name} {c.seconds:.1f} s, {c.face_seconds / c.seconds:.2f} faces, "
            f"{len(c.requests)} requests ({sum(ch for _, ch in c.requests)} changes)"
            for c in cs))
    results = []
    for answer_tokens in tokens:
        llm = ENGINE_CURVES[answer_tokens]
        if args.windows_per_s is not None:
            llm = llm.scaled(64, args.windows_per_s)
        model = dict(seconds=args.seconds, llm=llm, vision=vision, max_batch=args.max_batch,
                     ingest_s=args.ingest_s, deadline_s=args.deadline_s)
        print(f"\n{answer_tokens}-token answers: engine {llm.rate(1):.2f} / {llm.rate(64):.2f} "
              f"windows/s at batch 1 / 64, max_batch {args.max_batch}; vision "
              f"{vision.rate(16):.0f} windows/s at batch 16; ingest {args.ingest_s:g} s; "
              f"{args.seconds:g} simulated s")
        print(f"{'config':<17}{'streams':>8}{'faces':>7}{'req/s':>7}{'batch':>7}"
              f"{'changes':>8}{f'<={args.deadline_s:g} s':>8}{'p50 s':>8}{'p95 s':>8}")
        served = {}
        for config, cs in clips.items():
            best = largest(cs, args.target, args.max_streams, **model)
            served[config] = best
            rows = [simulate(cs, n, **model) for n in streams]
            for row in rows:
                share = "-" if row["on_time"] is None else f"{row['on_time']:.0%}"
                print(f"{config:<17}{row['streams']:>8}{row['faces']:>7.1f}"
                      f"{row['requests_per_s']:>7.2f}{row['mean_batch']:>7.1f}"
                      f"{row['changes']:>8}{share:>8}{_seconds(row['p50_s']):>8}"
                      f"{_seconds(row['p95_s']):>8}")
            results.append({"answer_tokens": answer_tokens, "config": config, "rows": rows,
                            "largest": best})
        for config, best in served.items():
            print(f"{config}: " + (
                f"most streams with >= {args.target:.0%} of changes answered <= "
                f"{args.deadline_s:g} s: {best['streams']} ({best['faces']:.1f} tracked faces, "
                f"{best['requests_per_s']:.2f} requests/s, p95 {best['p95_s']:.2f} s)"
                if best else f"not one stream meets {args.target:.0%} <= "
                             f"{args.deadline_s:g} s: 0 tracked faces"))
        faces = {c: (b["faces"] if b else 0.0) for c, b in served.items()}
        ratio = (f"{faces['change-triggered'] / faces['every-window']:.1f}x"
                 if faces["every-window"] else "- (every-window serves none)")
        print(f"tracked faces served, change-triggered / every-window: {ratio}")
    print("RESULT " + json.dumps({"model": {
        "engine_curves": {t: ENGINE_CURVES[t].points for t in tokens},
        "windows_per_s": args.windows_per_s, "vision_curve": vision.points,
        "max_batch": args.max_batch, "ingest_s": args.ingest_s, "deadline_s": args.deadline_s,
        "target": args.target, "seconds": args.seconds},
        "clips": {c: [dataclasses.asdict(x) for x in cs] for c, cs in clips.items()},
        "results": results}))


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
