"""Embedded-mode benchmark: facestream's stages against bare library calls, on one CPU core.

Measured on the sample clip WolfgangLanger_Pexels.mp4 (640x360 H.264, 19.6 s), with the
process pinned to the first CPU core it may use and every library limited to one thread:

(a) decode     facestream's Decoder vs bare PyAV (decode every frame + ``to_ndarray("rgb24")``),
               in source frames per second.  Once with fps=120, so facestream converts every
               frame to RGB as the baseline does, and once at the default 10 fps, where it
               converts only the frames it picks (the realistic case).
(b) face stage FaceAnalyzer (detector, face mesh per detection, landmarks, chips) + Tracker.update
               vs bare MediaPipe (full-range FaceDetection, then FaceMesh on a 1.6x square crop
               around each detection), on the same frames, pre-decoded at 10 fps.
(c) analyze    the whole embedded pipeline (``facestream.workers.embedded.analyze``) at 10 fps,
               as a multiple of real time, without and with descriptions; "incl. load" adds the
               model load to the first run, "steady" is the best run with models preloaded.
(d) memory     peak RSS of each analyze configuration, each run in a fresh child process of
               this script (``--child-analyze``), and of this process (stages a and b);
               target < 1.5 GB for each analyze configuration.

Both sides run with the allocator tuning the facestream CLI applies at start-up
(``facestream.runtime.tune_allocator``: frame buffers recycled from the heap).

Each measurement takes the best (highest throughput) of ``--repeat`` runs (3x as many for the
short decode passes), facestream and baseline runs interleaved.  Targets are reported, not
asserted.  The last line is ``RESULT {json}`` with every number.  About 1.5 minutes on a
2-core machine.

    .venv/bin/python bench/bench_embedded.py [--repeat N]
    ./dev bench                        # every bench/bench_*.py

Model files and clips come from FACESTREAM_CACHE_DIR (``facestream models pull --samples``).
"""

from __future__ import annotations

import os

# Before torch (imported by facestream's encoder) reads it: one thread for OpenMP.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("GLOG_minloglevel", "2")     # MediaPipe's C++ info logs

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402

from facestream import assets  # noqa: E402
from facestream.config import Settings  # noqa: E402
from facestream.ingest.sources import SourceSpec, parse_source  # noqa: E402
from facestream.retry import Backoff  # noqa: E402
from facestream.runtime import tune_allocator  # noqa: E402
from facestream.types import DecodedFrame  # noqa: E402
from facestream.vision.decode import Decoder  # noqa: E402
from facestream.vision.faces import CROP_SCALE, FaceAnalyzer  # noqa: E402
from facestream.vision.tracker import Tracker  # noqa: E402
from facestream.workers.compose import Models  # noqa: E402
from facestream.workers.embedded import analyze  # noqa: E402

CLIP = "WolfgangLanger_Pexels.mp4"
ALL_FRAMES_FPS = 120.0          # above the clip's 23.976 fps: every frame is picked
DECODE_ROUNDS = 3               # a decode pass lasts ~0.5 s: more of them per --repeat, less noise
CHILD_PREFIX = "CHILD "
RSS_LIMIT_MB = 1536.0


@dataclass(frozen=True)
class Timing:
    """One timed pass: ``items`` processed in ``seconds`` (``faces`` found, for stage b)."""

    items: int
    seconds: float
    faces: int | None = None

    @property
    def rate(self) -> float:
        return self.items / self.seconds


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    baseline: float | None       # None: no baseline (absolute figure)
    target: str                  # e.g. ">= 0.9" on the ratio, "< 1536" on the value
    met: bool | None

    @property
    def ratio(self) -> float | None:
        return None if self.baseline is None else self.value / self.baseline


def pin_to_one_core() -> int | None:
    """Restrict this process (and its children) to its first allowed core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    Linux's ru_maxrss survives fork and exec, so a child started by a big parent would
    report the parent's peak; VmHWM belongs to the process image alone.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024   # bytes on macOS


def best_of(repeat: int, runs: dict[str, Callable[[], Timing]]) -> dict[str, Timing]:
    """Run each of ``runs`` ``repeat`` times, interleaved; keep each one's fastest pass."""
    best: dict[str, Timing] = {}
    for _ in range(repeat):
        for name, run in runs.items():
            timing = run()
            if name not in best or timing.rate > best[name].rate:
                best[name] = timing
    return best


def clip_spec(settings: Settings) -> SourceSpec:
    return parse_source(str(assets.sample(settings.cache_dir, CLIP)))


def make_decoder(spec: SourceSpec, settings: Settings, fps: float) -> Decoder:
    backoff = Backoff(settings.reconnect_attempts, settings.reconnect_backoff_s,
                      settings.reconnect_backoff_max_s)
    return Decoder(spec, stream_id=spec.name, fps=fps, backoff=backoff,
                   timeout_s=settings.open_timeout_s, threads=settings.threads)


# (a) decode ----------------------------------------------------------------------------

def facestream_decode(spec: SourceSpec, settings: Settings, fps: float) -> Timing:
    """Source frames decoded per second, picked frames converted to RGB."""
    start = time.perf_counter()
    with make_decoder(spec, settings, fps) as decoder:
        for _ in decoder.frames():
            pass
    seconds = time.perf_counter() - start
    if fps == ALL_FRAMES_FPS and decoder.report.picked != decoder.report.decoded:
        raise SystemExit(f"fps={fps} picked {decoder.report.picked} of "
                         f"{decoder.report.decoded} frames; the comparison would be unfair")
    return Timing(decoder.report.decoded, seconds)


def bare_decode(path: str) -> Timing:
    start = time.perf_counter()
    count = 0
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return Timing(count, time.perf_counter() - start)


def bench_decode(spec: SourceSpec, settings: Settings, repeat: int) -> dict[str, Timing]:
    return best_of(repeat * DECODE_ROUNDS, {
        "facestream_all": lambda: facestream_decode(spec, settings, ALL_FRAMES_FPS),
        "facestream_10fps": lambda: facestream_decode(spec, settings, settings.fps),
        "bare": lambda: bare_decode(spec.target),
    })


# (b) face stage ------------------------------------------------------------------------

def facestream_faces(analyzer: FaceAnalyzer, settings: Settings,
                     frames: list[DecodedFrame]) -> Timing:
    tracker = Tracker(confirm_hits=settings.track_confirm_hits,
                      max_lost_s=settings.track_max_lost_s, min_iou=settings.track_min_iou)
    faces = 0
    start = time.perf_counter()
    for frame in frames:
        detections = analyzer(frame.image)
        tracker.update(detections.boxes, frame.time_s)
        faces += len(detections)
    return Timing(len(frames), time.perf_counter() - start, faces)


class BareMediaPipe:
    """The least that facestream's face stage must do: detect, then mesh each face's crop."""

    def __init__(self, settings: Settings) -> None:
        from mediapipe.python.solutions import face_detection, face_mesh

        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=settings.min_detection_confidence)
        # Same mesh confidence as FaceAnalyzer, so both sides accept the same faces.
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                        min_detection_confidence=0.3)

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def __call__(self, image: np.ndarray) -> int:
        """Faces with a mesh in one RGB frame."""
        height, width = image.shape[:2]
        found = 0
        for detection in self._detector.process(image).detections or ():
            rel = detection.location_data.relative_bounding_box
            cx, cy = (rel.xmin + rel.width / 2) * width, (rel.ymin + rel.height / 2) * height
            half = max(rel.width * width, rel.height * height) * CROP_SCALE / 2
            x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
            x2, y2 = int(min(width, cx + half)), int(min(height, cy + half))
            crop = np.ascontiguousarray(image[y1:y2, x1:x2])
            if self._mesh.process(crop).multi_face_landmarks:
                found += 1
        return found


def bare_faces(bare: BareMediaPipe, frames: list[DecodedFrame]) -> Timing:
    faces = 0
    start = time.perf_counter()
    for frame in frames:
        faces += bare(frame.image)
    return Timing(len(frames), time.perf_counter() - start, faces)


def bench_faces(spec: SourceSpec, settings: Settings, repeat: int) -> dict[str, Timing]:
    with make_decoder(spec, settings, settings.fps) as decoder:
        frames = list(decoder.frames())
    analyzer = FaceAnalyzer(min_confidence=settings.min_detection_confidence,
                            min_face_px=settings.min_face_px, max_faces=settings.max_faces)
    bare = BareMediaPipe(settings)
    try:
        analyzer(frames[0].image)          # first calls allocate; keep them out of the timing
        bare(frames[0].image)
        return best_of(repeat, {
            "facestream": lambda: facestream_faces(analyzer, settings, frames),
            "bare": lambda: bare_faces(bare, frames),
        })
    finally:
        analyzer.close()
        bare.close()


# (c) analyze, in a child process -------------------------------------------------------

def child_analyze(describe: bool, repeat: int) -> dict[str, float]:
    """Load the models once, analyse the clip ``repeat`` times; figures for one configuration."""
    settings = Settings.load({"threads": 1, "describe": describe})
    spec = clip_spec(settings)
    start = time.perf_counter()
    models = Models.load(settings)
    load_s = time.perf_counter() - start
    runs = []
    for _ in range(repeat):
        llm_before = models.analyzer.llm_calls
        with tempfile.TemporaryDirectory(prefix="facestream-bench-") as out_dir:
            summary = analyze(spec, settings, out_dir=Path(out_dir), models=models)
        runs.append((summary, summary.llm_calls - llm_before))
    first, llm_calls = runs[0]
    best = max((summary for summary, _ in runs), key=lambda s: s.speed)
    return {
        "media_s": first.media_s,
        "load_s": load_s,
        "first_wall_s": first.wall_s,
        "best_wall_s": best.wall_s,
        "x_realtime_incl_load": first.media_s / (load_s + first.wall_s),
        "x_realtime_steady": best.speed,
        "frames": first.frames,
        "windows": first.windows,
        "llm_calls": llm_calls,
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(mode: str, repeat: int) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-analyze", mode,
           "--repeat", str(repeat)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise SystemExit(f"analyze child ({mode}) failed with exit code {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len(CHILD_PREFIX):])


# report --------------------------------------------------------------------------------

def at_least(ratio: float, target: float) -> tuple[str, bool]:
    return f">= {target:g}", ratio >= target


def build_rows(decode: dict[str, Timing], faces: dict[str, Timing],
               analyses: dict[str, dict[str, float]], bench_rss_mb: float) -> list[Row]:
    bare_decode_rate = decode["bare"].rate
    rows = [
        Row("decode, every frame to RGB (frames/s)", decode["facestream_all"].rate,
            bare_decode_rate, *at_least(decode["facestream_all"].rate / bare_decode_rate, 0.9)),
        Row("decode @10 fps vs every frame (source frames/s)", decode["facestream_10fps"].rate,
            bare_decode_rate, *at_least(decode["facestream_10fps"].rate / bare_decode_rate, 0.9)),
        Row("face stage @10 fps (frames/s)", faces["facestream"].rate, faces["bare"].rate,
            *at_least(faces["facestream"].rate / faces["bare"].rate, 0.85)),
        Row("face stage: faces found, with mesh", faces["facestream"].faces,
            faces["bare"].faces, "-", None),
    ]
    for mode, label, target in (("nodescribe", "no descriptions", 3.0),
                                ("describe", "descriptions", 1.5)):
        result = analyses[mode]
        for key, how in (("x_realtime_incl_load", "incl. load"), ("x_realtime_steady", "steady")):
            rows.append(Row(f"analyze, {label}, {how} (x real time)", result[key], 1.0,
                            *at_least(result[key], target)))
        rows.append(Row(f"analyze, {label}: LLM calls", result["llm_calls"], None, "-", None))
        rows.append(Row(f"peak RSS, analyze {label} alone (MB)", result["peak_rss_mb"], None,
                        f"< {RSS_LIMIT_MB:g}", result["peak_rss_mb"] < RSS_LIMIT_MB))
    rows.append(Row("peak RSS, this process: stages a+b (MB)", bench_rss_mb, None, "-", None))
    return rows


def print_table(rows: list[Row]) -> None:
    def num(value: float | None) -> str:
        if value is None:
            return "-"
        return str(value) if isinstance(value, int) else f"{value:.2f}"

    width = max(len(row.name) for row in rows)
    print(f"{'measurement':<{width}}  {'facestream':>10}  {'baseline':>9}  {'ratio':>6}  "
          f"{'target':>7}  met")
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        print(f"{row.name:<{width}}  {num(row.value):>10}  {num(row.baseline):>9}  "
              f"{num(row.ratio):>6}  {row.target:>7}  {met}")


def timing_json(timing: Timing) -> dict[str, float]:
    out = {"items": timing.items, "seconds": round(timing.seconds, 4),
           "rate": round(timing.rate, 2)}
    if timing.faces is not None:
        out["faces"] = timing.faces
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best kept)")
    parser.add_argument("--child-analyze", choices=("describe", "nodescribe"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    core = pin_to_one_core()
    # What the facestream CLI does at start-up; baselines in this process get it too.
    tune_allocator()
    if args.child_analyze:
        result = child_analyze(args.child_analyze == "describe", args.repeat)
        print(CHILD_PREFIX + json.dumps(result))
        return

    settings = Settings.load({"threads": 1})
    spec = clip_spec(settings)
    decode = bench_decode(spec, settings, args.repeat)
    faces = bench_faces(spec, settings, args.repeat)
    bench_rss_mb = peak_rss_mb()
    analyses = {mode: run_child(mode, args.repeat) for mode in ("nodescribe", "describe")}

    print(f"clip {spec.target}, pinned to CPU core {core}, one thread per library, "
          f"best of {args.repeat} ({args.repeat * DECODE_ROUNDS} for decode)")
    print_table(build_rows(decode, faces, analyses, bench_rss_mb))
    result = {
        "clip": CLIP, "core": core, "repeat": args.repeat,
        "decode": {name: timing_json(t) for name, t in decode.items()},
        "faces": {name: timing_json(t) for name, t in faces.items()},
        "analyze": {mode: {k: round(v, 4) for k, v in r.items()} for mode, r in analyses.items()},
        "peak_rss_mb": {"bench_process": round(bench_rss_mb, 1),
                        **{f"analyze_{mode}": round(r["peak_rss_mb"], 1)
                           for mode, r in analyses.items()}},
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
