"""Where a worker's CPU goes per analysed frame, stage by stage, without Kafka or Redis.

The input is what ``bench_latency.py``'s cameras send: the sample clip WolfgangLanger_Pexels.mp4
re-encoded as a live camera (libx264, no B-frames, ``tune=zerolatency``, a keyframe every
``--gop`` seconds; the same cached recording), its first ``--seconds``, cut by the publisher's
``gop_chunks`` into live chunks (``chunk_max_s=0.5``: unfinished and continued chunks), once per
stream for ``--streams`` streams, each stream on a partition of its own so that every round
takes a chunk of each.  One :class:`~facestream.workers.worker.Worker` (``FACESTREAM_FPS=5``,
no description, ``worker_threads=1`` so every stage runs on the profiled thread) consumes
them in one poll from the tests' in-memory consumer, and its events go to an in-memory sink
that serialises each one as the Redis sink does (``json.dumps``).

Profiled with cProfile on the process's CPU clock (``time.process_time``: every thread of the
process, ONNX Runtime's and FFmpeg's included, charged to the Python function running on the
worker's thread), so the machine's load matters less than on a wall clock.  Printed: per
stage, CPU seconds, % of the run's CPU and CPU ms per analysed frame; then the ``--top``
functions by own time.

``--scene static``: instead of the sample clip, a static camera: the first frame of the sample
no_face.mp4 (an empty room, 960x540) with fresh sensor noise in every frame (uniform, +-4
levels), and from half way on single_face.jpg at half size in its top left corner (a person
who came in), encoded as above at 24 fps (cached beside the live-latency recordings).

``--ab spinning|graph|mesh|follow|motion``: a same-run A/B of one change, before against after (as the code
is now).  ``spinning``: ONNX Runtime's pool threads, before = its default (the threads of the
encoder's three sessions busy-wait after each run), after = not
(``facestream.encoder.backends.ONNX_SPINNING`` off); a set of models loaded per side.
``graph``: the face stage's MediaPipe calls, before = the solutions' own ``process``, after =
``facestream.vision.faces.graph_output``.  ``mesh``: each face's mesh, before = MediaPipe's
FaceMesh (its own detector, then the landmark model) on a 1.6-box-side crop, after = the
landmark model alone on the detection's region.  ``follow``: the worker setting
``detect_interval_s``, before = 0 (every analysed frame detected), after = the default
(faces followed between detections).  ``motion``: the worker setting
``detect_motion_threshold``, before = 0 (an empty picture detected on every analysed
frame), after = the default (not while it has not changed; use it with ``--scene static``,
where it applies).  ``--rounds`` interleaved rounds of both sides
over the same chunks, unprofiled, after one untimed warm-up round; per run the CPU seconds
of the process (``process_time``) and wall seconds, then per side the medians, the
after/before ratios (median, min-max over the rounds' ratios) and the 1-minute load
average.  The events of both sides must be the same (else it exits saying so), except for
``mesh``, ``follow`` and ``motion``, which may change the landmarks: there the event counts
and how far the two sides' analysis events agree are printed.

    .venv/bin/python bench/profile_worker.py [--streams 8] [--seconds 12] [--gop 2] [--top 25]
                                             [--spinning] [--worker-threads 1]
                                             [--ab spinning|graph|mesh|follow|motion]
                                             [--rounds 3] [--scene clip|static]
"""

from __future__ import annotations

import os

os.environ.setdefault("GLOG_minloglevel", "2")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from fractions import Fraction  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facestream import assets  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.encoder import backends  # noqa: E402
from facestream.ingest.chunks import gop_chunks  # noqa: E402
from facestream.vision import faces  # noqa: E402
from facestream.workers.compose import Models  # noqa: E402

from bench_distributed import CLIP, FPS  # noqa: E402
from bench_latency import CACHE, record  # noqa: E402
from tests.helpers import MemorySink, comparable, one_poll_worker  # noqa: E402

CHUNK_MAX_S = 0.5

# Stages: (name, [(path suffix, function name)]) whose cumulative CPU is the stage's.  The
# functions of one stage never call each other, nor those of another stage (but "decode"
# holds "to RGB", and "face stage" its three parts: printed indented).
STAGES = (
    ("decode (all of ChunkDecoder.decode)", [("vision/decode.py", "decode")]),
    ("  of which to RGB (picked frames)",
     [("~", "<method 'to_ndarray' of 'av.video.frame.VideoFrame' objects>")]),
    ("face stage (FaceAnalyzer)", [("vision/faces.py", "__call__"),
                                   ("vision/faces.py", "follow")]),
    ("  detector", [("vision/faces.py", "_detect")]),
    ("  face mesh per face", [("vision/faces.py", "mesh_in_roi")]),
    ("  chips (crops.py)", [("vision/crops.py", "make_chips")]),
    ("tracking + windows (StreamState)", [("workers/pipeline.py", "observe"),
                                          ("workers/pipeline.py", "advance"),
                                          ("workers/pipeline.py", "finish")]),
    ("encoder batch (WindowAnalyzer.analyze)", [("workers/pipeline.py", "analyze")]),
    ("  of which events.face_analysis", [("facestream/events.py", "face_analysis")]),
    ("sink (json.dumps per event)", [("bench/profile_worker.py", "write")]),
)


class SerialisingSink(MemorySink):
    """The tests' in-memory sink, serialising every event as the Redis sink does."""

    def write(self, batch: list[dict], status: dict | None = None) -> int:
        for event in batch:
            json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        return super().write(batch, status)


def static_recording(base: Settings, gop_s: float, seconds: float) -> str:
    """The ``--scene static`` camera (see the module docstring) as MPEG-TS, cached."""
    from facestream.scenes import load_rgb

    rate = 24
    path = CACHE / f"static-room-gop{gop_s:g}-{seconds:g}s.ts"
    if path.exists():
        return str(path)
    with av.open(str(assets.sample(base.cache_dir, "no_face.mp4"))) as src:
        room = next(src.decode(video=0)).to_ndarray(format="rgb24")
    face = load_rgb(assets.sample(base.cache_dir, "single_face.jpg"))[::2, ::2]
    rng = np.random.default_rng(0)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with av.open(str(partial), "w", format="mpegts") as dst:
        gop = round(gop_s * rate)
        out = dst.add_stream("libx264", rate=rate, options={
            "g": str(gop), "bf": "0", "tune": "zerolatency", "preset": "veryfast",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"})
        out.width, out.height, out.pix_fmt = room.shape[1], room.shape[0], "yuv420p"
        for i in range(round(seconds * rate)):
            image = room.copy()
            if i >= seconds * rate / 2:
                image[:face.shape[0], :face.shape[1]] = face
            image = np.clip(image.astype(np.int16) + rng.integers(-4, 5, image.shape), 0, 255)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24") \
                .reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, rate)
            for packet in out.encode(frame):
                dst.mux(packet)
        for packet in out.encode():
            dst.mux(packet)
    partial.replace(path)
    return str(path)


def live_chunks(path: str, streams: int) -> list:
    """The recording's chunks as a live publisher cuts them, for each of ``streams``
    streams, interleaved chunk by chunk."""
    per_stream = []
    for i in range(streams):
        with av.open(path) as container:
            per_stream.append(list(gop_chunks(container, stream_id=f"cam{i}",
                                              max_chunk_s=CHUNK_MAX_S)))
    return [chunk for row in zip(*per_stream) for chunk in row]


def run_worker(chunks: list, models, settings: dict, profiler: cProfile.Profile | None = None):
    """(worker report, events, CPU s, wall s) of one worker over ``chunks``."""
    cpu, wall = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        report, events, *_ = one_poll_worker(chunks, models, sink=SerialisingSink(),
                                             partition_per_stream=True, **settings)
    finally:
        if profiler is not None:
            profiler.disable()
    return report, events, time.process_time() - cpu, time.perf_counter() - wall


def stage_rows(stats: pstats.Stats, total_s: float, frames: int) -> list[tuple[str, float]]:
    rows = []
    for name, functions in STAGES:
        seconds = sum(ct for (path, _, func), (_, _, _, ct, _) in stats.stats.items()
                      for suffix, wanted in functions
                      if func == wanted and path.endswith(suffix))
        rows.append((name, seconds))
    staged = sum(s for name, s in rows if not name.startswith(" "))
    rows.append(("rest (worker rounds, metrics, checkpoints, ...)", total_s - staged))
    print(f"{'stage':<48} {'CPU s':>7} {'% CPU':>6} {'ms/frame':>9}")
    for name, seconds in rows:
        print(f"{name:<48} {seconds:>7.2f} {100 * seconds / total_s:>5.1f}% "
              f"{1000 * seconds / frames:>9.2f}")
    print(f"{'total':<48} {total_s:>7.2f} {100.0:>5.1f}% {1000 * total_s / frames:>9.2f}")
    return rows


def profile(chunks: list, models, settings: dict, top: int) -> dict:
    run_worker(chunks[: len(chunks) // 4], models, settings)         # warm-up, unprofiled
    profiler = cProfile.Profile(time.process_time)
    report, events, cpu_s, wall_s = run_worker(chunks, models, settings, profiler)
    stats = pstats.Stats(profiler)
    frames = report.frames
    print(f"{report.chunks} chunks, {frames} analysed frames, {len(events)} events; "
          f"{cpu_s:.2f} CPU s, {wall_s:.2f} wall s (profiled), load {os.getloadavg()[0]:.2f}")
    rows = stage_rows(stats, stats.total_tt, frames)
    stats.sort_stats("tottime").print_stats(top)
    return {"frames": frames, "cpu_s": round(stats.total_tt, 3),
            "stages": {name.strip(): round(s, 3) for name, s in rows}}


def spinning_sides() -> dict[str, Callable[[], Models]]:
    """--ab spinning: models whose ONNX sessions spin (before) and do not (after)."""
    loaded = {}
    for side, spinning in (("before", True), ("after", False)):
        backends.ONNX_SPINNING = spinning
        loaded[side] = Models.load(Settings.load({"describe": False}))
    backends.ONNX_SPINNING = False
    return {side: (lambda models=models: models) for side, models in loaded.items()}


def graph_sides() -> dict[str, Callable[[], Models]]:
    """--ab graph: the face stage calling MediaPipe's ``process`` (before) and
    ``graph_output`` (after), on the same models."""
    models = Models.load(Settings.load({"describe": False}))
    ours = faces.graph_output

    def side(call: Callable) -> Callable[[], Models]:
        def prepare() -> Models:
            faces.graph_output = call
            return models
        return prepare

    return {"before": side(lambda solution, image, output: getattr(solution.process(image),
                                                                   output)),
            "after": side(ours)}


def mesh_sides() -> dict[str, Callable[[], Models]]:
    """--ab mesh: each face's mesh from MediaPipe's FaceMesh (its own short-range detector,
    then the landmark model) on a square crop 1.6 detector-box sides wide (before), and from
    the landmark model alone on the detection's region (after), on the same models.  The
    region's centre is the box's and its side 1.5 long box sides, so the before side cuts
    its crop from it."""
    from mediapipe.python.solutions import face_mesh

    models = Models.load(Settings.load({"describe": False}))
    ours = faces.FaceAnalyzer.mesh_in_roi
    crop_mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                   refine_landmarks=False, min_detection_confidence=0.3)

    def mesh_in_crop(self, image, roi):
        height, width = image.shape[:2]
        cx, cy, side = roi[0] * width, roi[1] * height, roi[2] * width * 1.6 / 1.5
        x1, y1 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x2, y2 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
        if x2 - x1 < 8 or y2 - y1 < 8:
            return None
        found = faces.graph_output(crop_mesh, np.ascontiguousarray(image[y1:y2, x1:x2]),
                                   "multi_face_landmarks")
        if not found:
            return None
        points = faces.landmark_array(found[0])[:468]
        cw, ch = x2 - x1, y2 - y1
        return (points * (cw, ch, cw) + (x1, y1, 0.0)).astype(np.float32)

    def side(method: Callable) -> Callable[[], Models]:
        def prepare() -> Models:
            faces.FaceAnalyzer.mesh_in_roi = method
            return models
        return prepare

    return {"before": side(mesh_in_crop), "after": side(ours)}


def follow_sides() -> dict[str, Callable[[], Models]]:
    """--ab follow: the same models; the worker settings differ (``SIDE_SETTINGS``)."""
    models = Models.load(Settings.load({"describe": False}))
    return {"before": lambda: models, "after": lambda: models}


SIDES = {"spinning": spinning_sides, "graph": graph_sides, "mesh": mesh_sides,
         "follow": follow_sides, "motion": follow_sides}
# Changes that change the events (other landmarks, faces followed between detections).
SAME_EVENTS = {"spinning": True, "graph": True, "mesh": False, "follow": False,
               "motion": False}
# Worker settings per side, where the change is a setting: follow = every frame detected
# (before) against faces followed between detections (after, the default); motion = an
# empty picture detected on every frame (before) against the motion gate (after).
SIDE_SETTINGS = {"follow": {"before": {"detect_interval_s": 0.0}, "after": {}},
                 "motion": {"before": {"detect_motion_threshold": 0.0}, "after": {}}}


def agreement(before: list[dict], after: list[dict]) -> dict:
    """How far two runs' analysis events agree, window by window (same stream, track and
    window start): how many windows both have, the share with the same expression label,
    and the median and largest box-corner difference in pixels."""
    def windows(events: list[dict]) -> dict:
        return {(d["stream_id"], d["track_id"], d["window"]["start_s"]): d
                for d in (e["data"] for e in events if e["type"] == "facestream.face.analysis")}
    a, b = windows(before), windows(after)
    both = sorted(set(a) & set(b))
    same = sum(a[k]["expression"]["label"] == b[k]["expression"]["label"] for k in both)
    shifts = [float(np.abs(np.subtract(a[k]["bbox"], b[k]["bbox"])).max()) for k in both]
    return {"windows_before": len(a), "windows_after": len(b), "windows_both": len(both),
            "same_expression": round(same / len(both), 3) if both else None,
            "bbox_shift_px_median": round(statistics.median(shifts), 1) if shifts else None,
            "bbox_shift_px_max": round(max(shifts), 1) if shifts else None}


def ab(chunks: list, sides: dict[str, Callable[[], Models]], settings: dict,
       rounds: int, same_events: bool = True, side_settings: dict | None = None) -> dict:
    """Interleaved rounds of both sides; each side's callable sets it up and gives its models.
    ``same_events``: the change must not change a single event (else the events are only
    counted)."""
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    wall: dict[str, list[float]] = {side: [] for side in sides}
    seen: dict[str, list] = {}
    raw: dict[str, list[dict]] = {}
    for round_ in range(rounds + 1):
        for side, prepare in sides.items():
            _, events, cpu_s, wall_s = run_worker(
                chunks, prepare(), {**settings, **(side_settings or {}).get(side, {})})
            seen.setdefault(side, [comparable(e) for e in events])
            raw.setdefault(side, events)
            if round_:                              # round 0: warm-up
                cpu[side].append(cpu_s)
                wall[side].append(wall_s)
                print(f"round {round_} {side:>6}: {cpu_s:6.2f} CPU s {wall_s:6.2f} wall s "
                      f"{len(events)} events, load {os.getloadavg()[0]:.2f}", flush=True)
    identical = seen["before"] == seen["after"]
    if same_events and not identical:
        raise SystemExit("the two sides wrote different events")
    out = {"events": {side: len(events) for side, events in seen.items()},
           "events_identical": identical}
    if not identical:
        out["agreement"] = agreement(*raw.values())
        print(f"analysis events of the same windows: {out['agreement']}")
    for name, values in (("cpu_s", cpu), ("wall_s", wall)):
        ratios = [a / b for a, b in zip(values["after"], values["before"])]
        before, after = statistics.median(values["before"]), statistics.median(values["after"])
        out[name] = {"before": round(before, 3), "after": round(after, 3),
                     "ratio": round(after / before, 3),
                     "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)]}
        print(f"{name}: before {before:.2f} after {after:.2f} after/before {after / before:.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}); events "
              + ("identical" if identical else f"differ ({out['events']})"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--gop", type=float, default=2.0, help="camera GOP, seconds")
    parser.add_argument("--top", type=int, default=25, help="functions listed by own time")
    parser.add_argument("--ab", choices=sorted(SIDES), help="A/B of one change (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="--ab rounds")
    parser.add_argument("--spinning", action="store_true",
                        help="profile with ONNX Runtime's threads spinning (the before side)")
    parser.add_argument("--scene", choices=("clip", "static"), default="clip",
                        help="the live-latency camera (clip) or a static camera's room "
                             "(static, see above)")
    parser.add_argument("--worker-threads", type=int, default=1,
                        help="face-stage threads; only 1 is profiled whole (--ab: any, 0 = "
                             "the worker's default)")
    args = parser.parse_args()
    base = Settings.load()
    if args.scene == "static":
        chunks = live_chunks(static_recording(base, args.gop, args.seconds), args.streams)
    else:
        recording = record(assets.sample(base.cache_dir, CLIP), args.gop, args.seconds)
        chunks = live_chunks(recording.path, args.streams)
    settings = {"fps": FPS, "worker_threads": args.worker_threads}
    result = {"streams": args.streams, "seconds": args.seconds, "gop_s": args.gop,
              "scene": args.scene,
              "worker_threads": args.worker_threads}
    if args.ab:
        graph_output, mesh_in_roi = faces.graph_output, faces.FaceAnalyzer.mesh_in_roi
        try:
            result["ab"] = {"change": args.ab,
                            **ab(chunks, SIDES[args.ab](), settings, args.rounds,
                                 SAME_EVENTS[args.ab], SIDE_SETTINGS.get(args.ab))}
        finally:
            faces.graph_output = graph_output
            faces.FaceAnalyzer.mesh_in_roi = mesh_in_roi
    else:
        backends.ONNX_SPINNING = args.spinning
        models = Models.load(Settings.load({"describe": False}))
        result["profile"] = profile(chunks, models, settings, args.top)
    result["load"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
