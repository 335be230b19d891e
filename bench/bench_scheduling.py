"""Scheduling benchmark: LLM calls with change-triggered scheduling vs a fixed cadence, and
the share of expression changes that still got a fresh description.

Clips (10 fps analysis, 1 s windows, the default settings):

* ``WolfgangLanger_Pexels.mp4`` — the sample clip (640x360, 19.6 s, one face);
* ``crossing`` — synthetic, 20 s: two real faces from the sample group photo
  ``multi_face.jpg`` walk past each other and back (the construction of the tracking test's
  crossing clip, built with ``facestream.scenes``, made as long as the sample clip);
* ``switching`` — synthetic, 20 s: two faces side by side, swaying a little, each cut between
  posed photos of the sample set (surprise / happiness / surprise and anger / disgust), so
  the expression really changes, at 6 s and 13 s for one face and 10 s for the other.

Each clip is decoded and its faces found once; its windows (in the batches they closed in)
are then replayed through ``WindowAnalyzer`` with the real encoder and scheduler, and with the
describer replaced by a counter: the figures are the scheduler's *decisions* (LLM requests
that would be sent), not generations — the LLM does not run.

Configurations: ``every-window`` — the fixed cadence baseline, a fresh description for every
window of every track (``llm_max_interval_s=0``); ``change-triggered`` — the default settings;
``label-only`` — for reference, the rule before change-triggering (a description when the
expression label changes, no other trigger, no maximum interval).

Metrics per clip and configuration: windows, tracks, LLM calls, calls of the baseline /
calls (target >= 5x), and expression changes caught: a change is a window whose label (per
the compact expression head) differs from the previous window of its track; it is caught
when that window or the track's next window got a fresh description (target >= 95 %).
Note the floor: every track costs one call when it appears, so a clip of T tracks and W
windows allows at most W / T fewer calls.  The last line is ``RESULT {json}``.  About a
minute on a 2-core machine.

    .venv/bin/python bench/bench_scheduling.py
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from facestream.config import Settings  # noqa: E402
from facestream.encoder.compact import CompactEncoder  # noqa: E402
from facestream.ingest.sources import parse_source  # noqa: E402
from facestream.retry import Backoff  # noqa: E402
from facestream.scenes import face_patch, load_rgb, moving_faces, write_clip  # noqa: E402
from facestream.types import Answer, EncoderOutput, FaceWindow  # noqa: E402
from facestream.vision.decode import Decoder  # noqa: E402
from facestream.vision.faces import FaceAnalyzer  # noqa: E402
from facestream.workers.pipeline import StreamState, WindowAnalyzer  # noqa: E402
from facestream.workers.scheduler import ChangeScheduler, Thresholds  # noqa: E402

SECONDS, FPS = 20.0, 25       # the synthetic clips are as long as the sample clip
CONFIGS = {
    "every-window": {"llm_max_interval_s": 0.0},
    "change-triggered": {},
    "label-only": {"llm_trigger_expression": 2.0, "llm_trigger_au": 5.0,
                   "llm_trigger_pose_deg": 180.0, "llm_trigger_motion": 10.0,
                   "llm_max_interval_s": 3600.0},
}
BASELINE = "every-window"


class CountingDescriber:
    """Stands in for the LLM: counts requests, returns a placeholder per request."""

    components = {"description": "counter"}

    def __init__(self) -> None:
        self.requests = 0

    def answer(self, items: list) -> list[Answer]:
        self.requests += len(items)
        return [Answer(f"description {self.requests - len(items) + i}") for i in range(len(items))]


class MemoEncoder:
    """The compact encoder, run once per window however often the window is replayed.
    Holds the windows it has seen, so their ids stay theirs."""

    def __init__(self, encoder: CompactEncoder) -> None:
        self._encoder = encoder
        self.components = encoder.components
        self._done: dict[int, tuple[FaceWindow, EncoderOutput]] = {}

    def encode(self, windows: list[FaceWindow]) -> list[EncoderOutput]:
        todo = [w for w in windows if id(w) not in self._done]
        self._done.update((id(w), (w, out)) for w, out in zip(todo, self._encoder.encode(todo)))
        return [self._done[id(w)][1] for w in windows]


def crossing_clip(samples: Path, faces: FaceAnalyzer, out: Path) -> Path:
    photo = load_rgb(samples / "multi_face.jpg")
    found = faces(photo)
    patches = [face_patch(photo, tuple(int(v) for v in found.boxes[i]), 120) for i in (0, 1)]

    def there_and_back(t: float) -> float:      # 0 -> 1 -> 0 over the clip
        return 1.0 - abs(1.0 - 2.0 * t / SECONDS)

    frames, _ = moving_faces(patches, [lambda t: (90 + 460 * there_and_back(t), 170.0),
                                       lambda t: (550 - 460 * there_and_back(t), 200.0)],
                             width=640, height=360, seconds=SECONDS, fps=FPS)
    return write_clip(out / "crossing.mp4", frames, fps=FPS)


def switching_clip(samples: Path, faces: FaceAnalyzer, out: Path) -> Path:
    def patch(name: str) -> np.ndarray:
        photo = load_rgb(samples / name)
        return face_patch(photo, tuple(int(v) for v in faces(photo).boxes[0]), 150)

    a = [(0.0, patch("0-f1-su-ph.jpg")), (6.0, patch("0-f15-hao-ph.jpg")),
         (13.0, patch("0-f1-su-ph.jpg"))]
    b = [(0.0, patch("15-f13-anc-ph.jpg")), (10.0, patch("45-m7-di-ph.jpg"))]
    cuts = sorted({start for face in (a, b) for start, _ in face} | {SECONDS})
    frames = []
    for t0, t1 in zip(cuts, cuts[1:]):          # a segment where neither face changes
        current = [next(p for start, p in reversed(face) if t0 >= start) for face in (a, b)]

        def sway(t: float, t0: float = t0) -> float:
            return 6.0 * np.sin(2 * np.pi * (t0 + t) / 3.0)

        segment, _ = moving_faces(current, [lambda t: (170 + sway(t), 180.0),
                                            lambda t: (470 - sway(t), 180.0)],
                                  width=640, height=360, seconds=t1 - t0, fps=FPS)
        frames += segment
    return write_clip(out / "switching.mp4", frames, fps=FPS)


def collect(path: Path, settings: Settings,
            faces: FaceAnalyzer) -> tuple[StreamState, list[list[FaceWindow]]]:
    """Decode ``path`` and track its faces once: the windows in the batches they closed in."""
    spec = parse_source(str(path))
    backoff = Backoff(settings.reconnect_attempts, settings.reconnect_backoff_s,
                      settings.reconnect_backoff_max_s)
    decoder = Decoder(spec, stream_id=spec.name, fps=settings.fps, backoff=backoff,
                      timeout_s=settings.open_timeout_s, threads=settings.threads)
    state = StreamState(spec.name, settings)
    batches = []
    try:
        for frame in decoder.frames():
            _, windows, _ = state.observe(frame, faces(frame.image))
            batches.append(windows)
    finally:
        decoder.close()
    batches.append(state.finish()[0])
    return state, [b for b in batches if b]


def decisions(state: StreamState, batches: list[list[FaceWindow]], encoder: MemoEncoder,
              settings: Settings) -> tuple[list[dict], int]:
    """Run the batches through a fresh analyzer: (its analysis events' data in order, LLM
    requests it would have sent)."""
    counter = CountingDescriber()
    analyzer = WindowAnalyzer(encoder, counter,
                              scheduler=ChangeScheduler(Thresholds.from_settings(settings)))
    state.memory = {}
    events = [e["data"] for batch in batches for e in analyzer.analyze([(state, w) for w in batch])]
    return events, counter.requests


def replay(state: StreamState, batches: list[list[FaceWindow]], encoder: MemoEncoder,
           settings: Settings) -> dict:
    """Run the batches through a fresh analyzer; count fresh decisions and caught changes."""
    events, calls = decisions(state, batches, encoder, settings)
    per_track: dict[str, list[dict]] = {}
    for data in events:
        per_track.setdefault(data["track_id"], []).append(data)
    changes = caught = 0
    for windows in per_track.values():
        for k in range(1, len(windows)):
            if windows[k]["expression"]["label"] != windows[k - 1]["expression"]["label"]:
                changes += 1
                caught += any(not w["description_reused"] for w in windows[k:k + 2])
    triggers = Counter(d["description_trigger"] for d in events if not d["description_reused"])
    return {"windows": len(events), "tracks": len(per_track), "calls": calls,
            "label_changes": changes, "caught": caught, "triggers": dict(triggers)}


def load_models(settings: Settings) -> tuple[FaceAnalyzer, CompactEncoder]:
    """The face stage and the compact encoder, as the default settings build them."""
    faces = FaceAnalyzer(min_confidence=settings.min_detection_confidence,
                         min_face_px=settings.min_face_px, max_faces=settings.max_faces)
    return faces, CompactEncoder(settings.cache_dir, backend=settings.encoder_backend,
                                 threads=settings.threads)


def sample_clips(settings: Settings, faces: FaceAnalyzer, tmp: Path) -> dict[str, Path]:
    """The three clips: the sample clip, and the two synthetic ones written into ``tmp``."""
    samples = settings.cache_dir / "samples"
    return {"WolfgangLanger": samples / "WolfgangLanger_Pexels.mp4",
            "crossing": crossing_clip(samples, faces, tmp),
            "switching": switching_clip(samples, faces, tmp)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    base = Settings.load({"describe": False})
    faces, encoder = load_models(base)
    print("Counting the scheduler's decisions (LLM requests that would be sent); the LLM does "
          "not run.  Baseline: a fresh description for every window (every-window).")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in sample_clips(base, faces, Path(tmp)).items():
            state, batches = collect(path, base, faces)
            memo = MemoEncoder(encoder)
            results[name] = {config: replay(state, batches, memo,
                                            dataclasses.replace(base, **overrides))
                             for config, overrides in CONFIGS.items()}
    totals = {config: {k: sum(results[c][config][k] for c in results)
                       for k in ("windows", "tracks", "calls", "label_changes", "caught")}
              for config in CONFIGS}
    results["all clips"] = totals
    print(f"{'clip':<15} {'config':<17} {'windows':>7} {'tracks':>6} {'calls':>5} "
          f"{'fewer':>6} {'changes':>7} {'caught':>7}  triggers")
    for clip, by_config in results.items():
        for config, r in by_config.items():
            r["fewer"] = round(by_config[BASELINE]["calls"] / max(r["calls"], 1), 2)
            r["caught_share"] = (round(r["caught"] / r["label_changes"], 3)
                                 if r["label_changes"] else None)
            share = f"{r['caught_share']:.0%}" if r["caught_share"] is not None else "-"
            print(f"{clip:<15} {config:<17} {r['windows']:>7} {r['tracks']:>6} {r['calls']:>5} "
                  f"{r['fewer']:>5.1f}x {r['label_changes']:>7} {share:>7}  "
                  f"{' '.join(f'{k}={v}' for k, v in sorted(r.get('triggers', {}).items()))}")
    t = Thresholds.from_settings(base)
    print(f"change-triggered thresholds: {dataclasses.asdict(t)}")
    print("RESULT " + json.dumps({"thresholds": dataclasses.asdict(t), "clips": results}))


if __name__ == "__main__":
    main()
