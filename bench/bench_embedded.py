"""Embedded-mode benchmark: facestream's stages against bare library calls, on one CPU core.

Measured on the sample clip WolfgangLanger_Pexels.mp4 (640x360 H.264, 19.6 s), with the
process pinned to the first CPU core it may use and every library limited to one thread:

(a) decode     facestream's Decoder vs bare PyAV (decode every frame + ``to_ndarray("rgb24")``),
               in source frames per second.  Once with fps=120, so facestream converts every
               frame to RGB as the baseline does, and once at the default 10 fps, where it
               converts only the frames it picks (the realistic case).
(b) face stage FaceAnalyzer (detector, face mesh per detection, landmarks, chips) + Tracker.update
               vs bare MediaPipe doing the same model work through its own ``process``
               (full-range FaceDetection, then the face-landmark graph on each detection's
               region), on the same frames, pre-decoded at 10 fps; also the faces each side
               found (with a mesh).  And against the face stage before 2026-12-01 as bare
               MediaPipe (FaceMesh, with its own detector, on a 1.6x square crop around each
               detection): what running the landmark model straight on the detection saves.
               FaceAnalyzer detects every frame there; a last row gives the face stage as
               configured (faces followed between detections, ``detect_interval_s``).
(c) analyze    the whole embedded pipeline (``facestream.workers.embedded.analyze``) at 10 fps,
               as a multiple of real time (the baseline: the clip's own duration), without
               descriptions, with descriptions following their windows' events (the
               default), and with each event waiting for its description (inline).  Each round starts one fresh child process of this script
               (``--child-analyze``) per configuration, which loads the models (timed:
               ``Models.load``, including the imports it makes, such as torch for
               descriptions; not the interpreter's start-up nor the imports at the top of
               this script) and analyses the clip twice: "incl. load" = media time / (model
               load + first run), as a user of ``facestream analyze`` sees it; "preloaded" =
               media time / second run (the first one warmed it up).  The child also
               reports its LLM calls, its resident memory after the model load, and whether
               torch was imported.  The with/without-descriptions ratio of the preloaded
               figures is printed too.
(d) memory     peak RSS (VmHWM) of each analyze child; target under 800 MB (762.9 MiB) for
               each configuration.  Also this process's peak after stages a and b.  Memory
               figures are in MiB (2^20 bytes; the JSON keys say "mb").
(e) latency    of the warm run's events (``latency_ms``: from the window's last frame
               leaving the decoder to the event being built), p50 and p95: every analysis
               event, the analysis events of the windows picked for a fresh description
               (what follow mode stops holding back), and the descriptions (follow: the description events; inline: the
               analysis events that carry a fresh one), target p95 <= 1 s; follow against
               inline.  A file is read faster than real time, so frames also wait in the
               decoder's read-ahead queue: both modes alike.

Both sides run with the allocator tuning the facestream CLI applies at start-up
(``facestream.runtime.tune_allocator``: frame buffers recycled from the heap).

Timing, the same for both sides: every run is done once untimed first (warm-up: first
allocations, lazy initialisation, the OS file cache; for (c) one untimed child per
configuration), then ``--rounds`` rounds (default 5; 3x as many for the short decode
passes) in which every side runs once, in turn, so drift on a shared machine hits all of
them.  Each figure is the median over the rounds, with the spread (min-max); a ratio is
median facestream / median baseline, its spread the min-max of the per-round ratios.  Every
figure is given per wall second and per CPU second of the process (``time.process_time``:
user + system time of all its threads): on a shared machine the wall figures include time
spent waiting for the core, the CPU figures do not (they still feel a busy neighbour
through shared caches and memory bandwidth).  Targets are checked on both and
reported, not asserted.  The 1-minute load average is printed before and after.  The last
line is ``RESULT {json}`` with every number.  About 9 minutes on a 2-core machine with the
default 5 rounds.

    .venv/bin/python bench/bench_embedded.py [--rounds N]
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
import math  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
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
from facestream.vision.faces import LANDMARK_GRAPH, FaceAnalyzer, face_memory  # noqa: E402
from facestream.vision.tracker import Tracker  # noqa: E402
from facestream.workers.compose import Models  # noqa: E402
from facestream.workers.embedded import analyze  # noqa: E402

CLIP = "WolfgangLanger_Pexels.mp4"
ALL_FRAMES_FPS = 120.0          # above the clip's 23.976 fps: every frame is picked
DECODE_ROUNDS = 3               # a decode pass lasts ~0.5 s: 3x as many rounds, less noise
CHILD_PREFIX = "CHILD "
RSS_LIMIT_MB = 800e6 / 2**20    # "under 800 MB": 762.9 MiB
FACE_TARGET = 0.9               # face stage / bare MediaPipe
# "describe": descriptions follow their windows' events (the default); "inline": each
# fresh window's event waits for its description.
# "nodrafts": follow, the describer without speculative decoding (llm_draft_tokens 0).
MODES = ("nodescribe", "describe", "nodrafts", "inline")
MODE_LABELS = {"nodescribe": "no descriptions", "describe": "descriptions (follow)",
               "nodrafts": "descriptions (follow, no drafts)",
               "inline": "descriptions (inline)"}
# x real time: (including the model load, preloaded)
MODE_TARGETS = {"nodescribe": (4.0, None), "describe": (2.0, 3.0), "nodrafts": (None, None),
                "inline": (None, None)}
DESCRIPTION_P95_MS = 1000.0
ALL_CORES = False               # --all-cores: nothing pinned


@dataclass(frozen=True)
class Timing:
    """One timed pass: ``items`` processed in ``wall_s`` wall and ``cpu_s`` CPU seconds
    (``faces`` found, for stage b)."""

    items: int
    wall_s: float
    cpu_s: float
    faces: int | None = None

    def rate(self, clock: str) -> float:
        return self.items / (self.wall_s if clock == "wall" else self.cpu_s)


class Clock:
    """Wall and CPU seconds (this process, all threads) since construction."""

    def __init__(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self._wall, time.process_time() - self._cpu


@dataclass(frozen=True)
class Stat:
    """Median and spread (min-max) of the rounds."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, digits: int = 2) -> str:
        if len(self.values) == 1:
            return f"{self.median:.{digits}f}"
        return (f"{self.median:.{digits}f} ({min(self.values):.{digits}f}-"
                f"{max(self.values):.{digits}f})")

    def as_json(self, digits: int = 4) -> dict:
        return {"median": round(self.median, digits), "min": round(min(self.values), digits),
                "max": round(max(self.values), digits),
                "rounds": [round(v, digits) for v in self.values]}


@dataclass(frozen=True)
class Row:
    name: str
    value: Stat
    baseline: Stat | None        # None: the value is itself a ratio (x real time) or absolute
    ratio: Stat | None           # per-round ratios; the figure is median value / median baseline
    target: str                  # e.g. ">= 0.9" on the ratio, "< 1536" on the value
    met: bool | None
    digits: int = 2              # decimals printed for the value and the baseline

    @property
    def ratio_median(self) -> float | None:
        if self.baseline is None:
            return None
        return self.value.median / self.baseline.median


def pin_to_one_core() -> int | None:
    """Restrict this process (and its children) to its first allowed core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


def rss_mb(field: str = "VmHWM") -> float:
    """Resident memory of this process, in MiB: the peak (VmHWM) or current (VmRSS).

    Linux's ru_maxrss survives fork and exec, so a child started by a big parent would
    report the parent's peak; VmHWM belongs to the process image alone.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024   # bytes on macOS


def machine_note() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({model})"


def interleaved(rounds: int, runs: dict[str, Callable[[], Timing]]) -> dict[str, list[Timing]]:
    """Each of ``runs`` once untimed (warm-up), then ``rounds`` rounds in which each runs once,
    in turn; every round's timing."""
    for run in runs.values():
        run()
    timings: dict[str, list[Timing]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            timings[name].append(run())
    return timings


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
    clock = Clock()
    with make_decoder(spec, settings, fps) as decoder:
        for _ in decoder.frames():
            pass
    wall, cpu = clock.elapsed()
    if fps == ALL_FRAMES_FPS and decoder.report.picked != decoder.report.decoded:
        raise SystemExit(f"fps={fps} picked {decoder.report.picked} of "
                         f"{decoder.report.decoded} frames; the comparison would be unfair")
    return Timing(decoder.report.decoded, wall, cpu)


def bare_decode(path: str) -> Timing:
    clock = Clock()
    count = 0
    with av.open(path) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return Timing(count, *clock.elapsed())


def bench_decode(spec: SourceSpec, settings: Settings, rounds: int) -> dict[str, list[Timing]]:
    return interleaved(rounds * DECODE_ROUNDS, {
        "facestream_all": lambda: facestream_decode(spec, settings, ALL_FRAMES_FPS),
        "facestream_10fps": lambda: facestream_decode(spec, settings, settings.fps),
        "bare": lambda: bare_decode(spec.target),
    })


# (b) face stage ------------------------------------------------------------------------

def facestream_faces(analyzer: FaceAnalyzer, settings: Settings,
                     frames: list[DecodedFrame], *, follow: bool = False) -> Timing:
    """The face stage detecting every frame, or (``follow``) as configured: faces followed
    between detections (``detect_interval_s``)."""
    tracker = Tracker(confirm_hits=settings.track_confirm_hits,
                      max_lost_s=settings.track_max_lost_s, min_iou=settings.track_min_iou)
    memory = face_memory(settings) if follow else None
    faces = 0
    clock = Clock()
    for frame in frames:
        detections = (analyzer(frame.image) if memory is None
                      else analyzer.follow(frame, memory))
        tracker.update(detections.boxes, frame.time_s)
        faces += len(detections)
    return Timing(len(frames), *clock.elapsed(), faces)


class _BareStage:
    """Bare MediaPipe: the full-range detector through ``process``, then :meth:`_mesh_found`
    for each detection; subclasses set ``_second`` (the mesh graph) and that method."""

    def __init__(self, settings: Settings) -> None:
        from mediapipe.python.solutions import face_detection

        self._detector = face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=settings.min_detection_confidence)

    def close(self) -> None:
        self._detector.close()
        self._second.close()

    def __call__(self, image: np.ndarray) -> int:
        """Faces with a mesh in one RGB frame."""
        return sum(self._mesh_found(image, detection)
                   for detection in self._detector.process(image).detections or ())


class BareMediaPipe(_BareStage):
    """The least that facestream's face stage must do: detect, then run the face-landmark
    graph on each detection's region (MediaPipe's face-mesh region: box centre, long side
    x 1.5, turned upright by the eyes), both through MediaPipe's ``process``."""

    def __init__(self, settings: Settings) -> None:
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import solution_base

        super().__init__(settings)
        config = text_format.Parse(LANDMARK_GRAPH, calculator_pb2.CalculatorGraphConfig())
        self._second = solution_base.SolutionBase(graph_config=config,
                                                  side_inputs={"with_attention": False})
        self._rect = rect_pb2.NormalizedRect

    def _mesh_found(self, image: np.ndarray, detection) -> bool:
        height, width = image.shape[:2]
        rel = detection.location_data.relative_bounding_box
        eye_r, eye_l = detection.location_data.relative_keypoints[:2]
        angle = -math.atan2(-(eye_l.y - eye_r.y) * height, (eye_l.x - eye_r.x) * width)
        side = max(rel.width * width, rel.height * height) * 1.5
        roi = self._rect(x_center=rel.xmin + rel.width / 2, y_center=rel.ymin + rel.height / 2,
                         width=side / width, height=side / height, rotation=angle)
        return bool(self._second.process({"image": image, "roi": roi}).face_landmarks)


class CropMeshMediaPipe(_BareStage):
    """The face stage before 2026-12-01 as bare MediaPipe: detect, then FaceMesh (which runs
    its own short-range detector first) on a 1.6x square crop around each detection."""

    def __init__(self, settings: Settings) -> None:
        from mediapipe.python.solutions import face_mesh

        super().__init__(settings)
        self._second = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                          min_detection_confidence=0.3)

    def _mesh_found(self, image: np.ndarray, detection) -> bool:
        height, width = image.shape[:2]
        rel = detection.location_data.relative_bounding_box
        cx, cy = (rel.xmin + rel.width / 2) * width, (rel.ymin + rel.height / 2) * height
        half = max(rel.width * width, rel.height * height) * 1.6 / 2
        x1, y1 = int(max(0, cx - half)), int(max(0, cy - half))
        x2, y2 = int(min(width, cx + half)), int(min(height, cy + half))
        crop = np.ascontiguousarray(image[y1:y2, x1:x2])
        return bool(self._second.process(crop).multi_face_landmarks)


def bare_faces(bare: _BareStage, frames: list[DecodedFrame]) -> Timing:
    faces = 0
    clock = Clock()
    for frame in frames:
        faces += bare(frame.image)
    return Timing(len(frames), *clock.elapsed(), faces)


def bench_faces(spec: SourceSpec, settings: Settings, rounds: int) -> dict[str, list[Timing]]:
    with make_decoder(spec, settings, settings.fps) as decoder:
        frames = list(decoder.frames())
    analyzer = FaceAnalyzer(min_confidence=settings.min_detection_confidence,
                            min_face_px=settings.min_face_px, max_faces=settings.max_faces)
    bare, crop_mesh = BareMediaPipe(settings), CropMeshMediaPipe(settings)
    try:
        return interleaved(rounds, {
            "facestream": lambda: facestream_faces(analyzer, settings, frames),
            "facestream_follow": lambda: facestream_faces(analyzer, settings, frames,
                                                          follow=True),
            "bare": lambda: bare_faces(bare, frames),
            "crop_mesh": lambda: bare_faces(crop_mesh, frames),
        })
    finally:
        analyzer.close()
        bare.close()
        crop_mesh.close()


# (c) analyze, in a child process -------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, linearly interpolated; NaN when empty."""
    return float(np.percentile(values, q * 100)) if values else float("nan")


def latencies(events_path: Path) -> dict[str, float]:
    """Event latency (each event's ``latency_ms``: from the window's last frame leaving the
    decoder to the event being built) of one run: every analysis event, and the
    descriptions: the description events (follow mode) or the analysis events that carry a
    fresh description (inline mode)."""
    analysis, fresh, described = [], [], []
    for line in events_path.read_text().splitlines():
        event = json.loads(line)
        data = event["data"]
        if event["type"] == "facestream.face.analysis":
            analysis.append(data["latency_ms"])
            if data["description_trigger"] is not None:
                fresh.append(data["latency_ms"])
            if data["description"] is not None and not data["description_reused"]:
                described.append(data["latency_ms"])
        elif event["type"] == "facestream.face.description":
            described.append(data["latency_ms"])
    return {"event_latency_p50_ms": percentile(analysis, 0.5),
            "event_latency_p95_ms": percentile(analysis, 0.95),
            "fresh_event_latency_p50_ms": percentile(fresh, 0.5),
            "fresh_event_latency_p95_ms": percentile(fresh, 0.95),
            "description_latency_p50_ms": percentile(described, 0.5),
            "description_latency_p95_ms": percentile(described, 0.95),
            "descriptions": len(described)}


def child_analyze(mode: str) -> dict[str, float]:
    """Load the models, analyse the clip twice (cold, then warm); figures for one
    configuration in a fresh process (latencies: of the warm run)."""
    settings = Settings.load({"threads": 1, "describe": mode != "nodescribe",
                              "description_mode": "inline" if mode == "inline" else "follow",
                              **({"llm_draft_tokens": 0} if mode == "nodrafts" else {})})
    spec = clip_spec(settings)
    rss_start = rss_mb("VmRSS")
    clock = Clock()
    models = Models.load(settings)
    load_wall, load_cpu = clock.elapsed()
    rss_loaded = rss_mb("VmRSS")
    runs = []
    for _ in range(2):
        # The second run sees the first run's windows again: drafts from their answers
        # would be right to the last token, which a worker's next windows are not.
        getattr(models.analyzer.language, "forget_drafts", lambda: None)()
        llm_before = models.analyzer.llm_calls
        with tempfile.TemporaryDirectory(prefix="facestream-bench-") as out_dir:
            clock = Clock()
            summary = analyze(spec, settings, out_dir=Path(out_dir), models=models)
            wall, cpu = clock.elapsed()
            latency = latencies(summary.events_path)
        runs.append((summary, wall, cpu, models.analyzer.llm_calls - llm_before, latency))
    (first, first_wall, first_cpu, first_llm, _), (_, warm_wall, warm_cpu, warm_llm,
                                                    latency) = runs
    models.close()
    media = first.media_s
    return {
        "media_s": media,
        "load_wall_s": load_wall, "load_cpu_s": load_cpu,
        "first_wall_s": first_wall, "first_cpu_s": first_cpu,
        "warm_wall_s": warm_wall, "warm_cpu_s": warm_cpu,
        "x_realtime_incl_load_wall": media / (load_wall + first_wall),
        "x_realtime_incl_load_cpu": media / (load_cpu + first_cpu),
        "x_realtime_preloaded_wall": media / warm_wall,
        "x_realtime_preloaded_cpu": media / warm_cpu,
        "frames": first.frames,
        "windows": first.windows,
        "llm_calls_first": first_llm,
        "llm_calls_warm": warm_llm,
        **latency,
        "rss_start_mb": rss_start,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": rss_mb(),
        "torch_imported": int("torch" in sys.modules),
    }


def run_child(mode: str) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-analyze", mode]
    if ALL_CORES:
        cmd.append("--all-cores")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise SystemExit(f"analyze child ({mode}) failed with exit code {proc.returncode}:\n{tail}")
    return json.loads(lines[-1][len(CHILD_PREFIX):])


def bench_analyze(rounds: int) -> dict[str, list[dict[str, float]]]:
    """One untimed child per configuration (warm-up: OS file cache, bytecode), then rounds of
    one child per configuration, in turn."""
    for mode in MODES:
        run_child(mode)
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            results[mode].append(run_child(mode))
    return results


# report --------------------------------------------------------------------------------

def compared(name: str, value: list[float], baseline: list[float],
             target: float | None, digits: int = 1) -> Row:
    """A facestream figure against its baseline, round by round; the target is on the ratio
    of the medians."""
    ratio = statistics.median(value) / statistics.median(baseline)
    return Row(name, Stat(tuple(value)), Stat(tuple(baseline)),
               Stat(tuple(v / b for v, b in zip(value, baseline))),
               "-" if target is None else f">= {target:g}",
               None if target is None else ratio >= target, digits)


def alone(name: str, values: list[float], target: float | None = None, *, below: bool = False,
          digits: int = 2) -> Row:
    """A figure with no baseline of its own (x real time: the baseline is the clip's
    duration); the target, if any, is on the median."""
    stat = Stat(tuple(values))
    if target is None:
        return Row(name, stat, None, None, "-", None, digits)
    if below:
        return Row(name, stat, None, None, f"< {target:g}", stat.median < target, digits)
    return Row(name, stat, None, None, f">= {target:g}", stat.median >= target, digits)


CLOCKS = (("wall", "wall s"), ("cpu", "CPU s"))


def build_rows(decode: dict[str, list[Timing]], faces: dict[str, list[Timing]],
               analyses: dict[str, list[dict[str, float]]], bench_rss_mb: float) -> list[Row]:
    rows = []
    for name, key, baseline, source, target in (
            ("(a) decode, every frame to RGB", "facestream_all", "bare", decode, 0.9),
            ("(a) decode @10 fps vs every frame", "facestream_10fps", "bare", decode, 0.9),
            ("(b) face stage @10 fps", "facestream", "bare", faces, FACE_TARGET),
            ("(b) face stage @10 fps vs the crop + FaceMesh stage", "facestream",
             "crop_mesh", faces, None),
            ("(b) face stage @10 fps, faces followed between detections (the default)",
             "facestream_follow", "bare", faces, None)):
        for clock, per in CLOCKS:
            rows.append(compared(f"{name} (frames/{per})",
                                 [t.rate(clock) for t in source[key]],
                                 [t.rate(clock) for t in source[baseline]], target))
    rows.append(compared("(b) faces found, with mesh", [t.faces for t in faces["facestream"]],
                         [t.faces for t in faces["bare"]], None, digits=0))
    rows.append(compared("(b) faces found, with mesh, followed between detections",
                         [t.faces for t in faces["facestream_follow"]],
                         [t.faces for t in faces["bare"]], None, digits=0))
    rows.append(compared("(b) faces found, with mesh, vs the crop + FaceMesh stage",
                         [t.faces for t in faces["facestream"]],
                         [t.faces for t in faces["crop_mesh"]], None, digits=0))
    for mode in MODES:
        label, runs = MODE_LABELS[mode], analyses[mode]
        for key, how, target in zip(("incl_load", "preloaded"), ("incl. load", "preloaded"),
                                    MODE_TARGETS[mode]):
            for clock, per in CLOCKS:
                rows.append(alone(f"(c) analyze, {label}, {how} (x real time, per {per})",
                                  [r[f"x_realtime_{key}_{clock}"] for r in runs], target))
        for clock, per in CLOCKS:
            rows.append(alone(f"(c) analyze, {label}: model load ({per})",
                              [r[f"load_{clock}_s"] for r in runs]))
        rows.append(alone(f"(c) analyze, {label}: LLM calls, first run",
                          [r["llm_calls_first"] for r in runs], digits=0))
        rows.append(alone(f"(d) peak RSS, analyze {label} (MiB)",
                          [r["peak_rss_mb"] for r in runs], RSS_LIMIT_MB, below=True, digits=0))
        rows.append(alone(f"(d) RSS after model load, {label} (MiB)",
                          [r["rss_after_load_mb"] for r in runs], digits=0))
        for q in ("p50", "p95"):
            rows.append(alone(f"(e) event latency {q}, analysis events, {label} (ms)",
                              [r[f"event_latency_{q}_ms"] for r in runs], digits=0))
        if mode != "nodescribe":
            rows.append(alone(f"(e) event latency p50, windows picked for a description, "
                              f"{label} (ms)",
                              [r["fresh_event_latency_p50_ms"] for r in runs], digits=0))
            rows.append(alone(f"(e) description latency p50, {label} (ms)",
                              [r["description_latency_p50_ms"] for r in runs], digits=0))
            rows.append(alone(f"(e) description latency p95, {label} (ms)",
                              [r["description_latency_p95_ms"] for r in runs],
                              DESCRIPTION_P95_MS + 0.001, below=True, digits=0))
    for clock, per in CLOCKS:
        key = f"x_realtime_preloaded_{clock}"
        rows.append(compared(f"(c) analyze preloaded, descriptions vs none (x real time, "
                             f"per {per})", [r[key] for r in analyses["describe"]],
                             [r[key] for r in analyses["nodescribe"]], None, digits=2))
    for clock, per in CLOCKS:
        key = f"x_realtime_preloaded_{clock}"
        rows.append(compared(f"(c) analyze preloaded, descriptions with drafts vs without "
                             f"(x real time, per {per})", [r[key] for r in analyses["describe"]],
                             [r[key] for r in analyses["nodrafts"]], None, digits=2))
    for q in ("p50", "p95"):
        key = "description_latency_" + q + "_ms"
        rows.append(compared(f"(e) description latency {q}, with drafts vs without (ms)",
                             [r[key] for r in analyses["describe"]],
                             [r[key] for r in analyses["nodrafts"]], None, digits=0))
    for q in ("p50", "p95"):
        key = f"fresh_event_latency_{q}_ms"
        rows.append(compared(f"(e) event latency {q} of windows picked for a description, "
                             f"follow vs inline (ms)",
                             [r[key] for r in analyses["describe"]],
                             [r[key] for r in analyses["inline"]], None, digits=0))
    for q in ("p50", "p95"):
        key = f"event_latency_{q}_ms"
        rows.append(compared(f"(e) event latency {q}, follow vs inline (ms)",
                             [r[key] for r in analyses["describe"]],
                             [r[key] for r in analyses["inline"]], None, digits=0))
    rows.append(alone("(d) peak RSS, this process: stages a+b (MiB)", [bench_rss_mb], digits=0))
    return rows


def print_table(rows: list[Row]) -> None:
    def ratio(row: Row) -> str:
        if row.ratio is None:
            return "-"
        return (f"{row.ratio_median:.3f} ({min(row.ratio.values):.3f}-"
                f"{max(row.ratio.values):.3f})")

    def met(row: Row) -> str:
        return "-" if row.met is None else ("yes" if row.met else "NO")

    cells = [(row.name, row.value.text(row.digits),
              row.baseline.text(row.digits) if row.baseline else "-",
              ratio(row), row.target, met(row)) for row in rows]
    header = ("measurement", "facestream", "baseline", "ratio", "target", "met")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        print("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths))))


def timings_json(timings: list[Timing]) -> dict:
    out = {"items": timings[0].items,
           "wall_s": Stat(tuple(t.wall_s for t in timings)).as_json(),
           "cpu_s": Stat(tuple(t.cpu_s for t in timings)).as_json(),
           "rate_wall": Stat(tuple(t.rate("wall") for t in timings)).as_json(2),
           "rate_cpu": Stat(tuple(t.rate("cpu") for t in timings)).as_json(2)}
    if timings[0].faces is not None:
        out["faces"] = [t.faces for t in timings]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", "--repeat", type=int, default=5,
                        help="interleaved rounds per measurement, after one warm-up run of "
                             "each side (3x as many for decode); medians reported")
    parser.add_argument("--all-cores", action="store_true",
                        help="do not pin to one core: the describer's thread then runs beside "
                             "the face stage, as on a worker with cores to spare (libraries "
                             "still get one thread each)")
    parser.add_argument("--child-analyze", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    core = None if args.all_cores else pin_to_one_core()
    global ALL_CORES
    ALL_CORES = args.all_cores                              # the analyze children's too
    # What the facestream CLI does at start-up; baselines in this process get it too.
    tune_allocator()
    if args.child_analyze:
        result = child_analyze(args.child_analyze)
        print(CHILD_PREFIX + json.dumps(result))
        return

    load_before = os.getloadavg()
    started = time.monotonic()
    settings = Settings.load({"threads": 1})
    spec = clip_spec(settings)
    decode = bench_decode(spec, settings, args.rounds)
    faces = bench_faces(spec, settings, args.rounds)
    bench_rss_mb = rss_mb()
    analyses = bench_analyze(args.rounds)
    load_after = os.getloadavg()

    where = f"pinned to CPU core {core}" if core is not None else "on every core"
    print(f"clip {spec.target}, {where} of {machine_note()}, one thread per "
          f"library; warm-up run of every side, then {args.rounds} interleaved rounds "
          f"({args.rounds * DECODE_ROUNDS} for decode): median (min-max); ratio = median / "
          f"median (min-max of the per-round ratios)")
    print(f"load average (1/5/15 min) before {'/'.join(f'{x:.2f}' for x in load_before)}, "
          f"after {'/'.join(f'{x:.2f}' for x in load_after)}; "
          f"{time.monotonic() - started:.0f} s")
    frames = analyses["nodescribe"][0]
    print(f"analyze: {frames['media_s']:.2f} s of media, {frames['frames']} frames, "
          f"{frames['windows']} windows; torch imported without descriptions: "
          f"{sorted({bool(r['torch_imported']) for r in analyses['nodescribe']})}, with: "
          f"{sorted({bool(r['torch_imported']) for r in analyses['describe']})}")
    print_table(build_rows(decode, faces, analyses, bench_rss_mb))
    result = {
        "clip": CLIP, "core": core, "machine": machine_note(), "rounds": args.rounds,
        "decode_rounds": args.rounds * DECODE_ROUNDS,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "decode": {name: timings_json(t) for name, t in decode.items()},
        "faces": {name: timings_json(t) for name, t in faces.items()},
        "analyze": {mode: {key: Stat(tuple(r[key] for r in runs)).as_json()
                           for key in runs[0]}
                    for mode, runs in analyses.items()},
        "bench_process_peak_rss_mb": round(bench_rss_mb, 1),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
