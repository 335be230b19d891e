"""One typed settings object for every facestream process.

Values come from, in order of precedence: explicit keyword arguments (the CLI), environment
variables ``FACESTREAM_<FIELD>``, then the defaults below.  Unknown keys fail loudly with the
closest known name, so a misspelt option is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from facestream.errors import ConfigError
from facestream.vocabulary import PROFILES, TASKS, task_media

ENV_PREFIX = "FACESTREAM_"
# FACESTREAM_* variables that are not settings (the names without the prefix).  Any other
# FACESTREAM_* name that is not a setting is refused by Settings.load, so a name read by
# facestream's own tooling must be listed here, or exporting it would stop every command:
#   DEBUG                        the CLI shows tracebacks (facestream/cli.py)
#   VENV, FUZZ_OUT               ./dev: the virtualenv, the fuzzers' output folder
#   SERVICES_DIR, SERVICES_RUN_DIR, KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT
#                                deploy/dev-services: where and on which ports Kafka and
#                                Redis run (bench/services.py sets them too)
#   BENCH_*                      bench/bench_llm_runtimes.py: the interpreters and model
#                                builds it compares
# tests/test_config.py checks that every FACESTREAM_* name the repository uses is a setting
# or is listed here.
TOOLING_ENV = frozenset({
    "DEBUG", "VENV", "FUZZ_OUT",
    "SERVICES_DIR", "SERVICES_RUN_DIR", "KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "REDIS_PORT",
    "BENCH_TORCH_PYTHON", "BENCH_LLAMA_PYTHON", "BENCH_GENAI_PYTHON", "BENCH_GENAI_MODEL",
    "BENCH_GENAI_MODEL_INT8", "BENCH_GENAI_MODEL_FP32",
})


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facestream"


def _doc(text: str, *, ge: float | None = None, le: float | None = None,
         choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"doc": text, "ge": ge, "le": le, "choices": choices}


@dataclass(frozen=True)
class BatchProfile:
    """TensorRT optimisation profile over the batch axis: smallest, tuned-for, largest."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max <= 4096:
            raise ConfigError(f"batch profile {self.min},{self.opt},{self.max}: expected "
                              "1 <= min <= opt <= max <= 4096")

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """"1,8,32" -> (1, 8, 32); "1,32" -> (1, 32, 32); "8" -> (8, 8, 8)."""
        try:
            sizes = [int(part) for part in str(text).split(",")]
        except ValueError:
            sizes = []
        if not 1 <= len(sizes) <= 3:
            raise ConfigError(f"setting encoder_batch_sizes={text!r}: expected one to three "
                              "comma-separated batch sizes such as '1,8,32'")
        low, high = sizes[0], sizes[-1]
        return cls(low, sizes[1] if len(sizes) == 3 else high, high)

    @property
    def tag(self) -> str:
        return f"b{self.min}-{self.opt}-{self.max}"


DEFAULT_PROFILE = BatchProfile(1, 8, 32)    # the settings' default encoder_batch_sizes


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Settings shared by ``analyze``, the workers and the benchmarks."""

    cache_dir: Path = field(default_factory=_default_cache_dir, metadata=_doc(
        "Where `facestream models pull` puts model files and sample media (default "
        "$XDG_CACHE_HOME/facestream, else ~/.cache/facestream)."))
    fps: float = field(default=10.0, metadata=_doc(
        "Analysis rate in frames per second of media time; frames are picked by timestamp.",
        ge=0.1, le=120))
    window_s: float = field(default=1.0, metadata=_doc(
        "Length of one analysis window per track, in seconds of media time.", ge=0.2, le=10))
    min_detection_confidence: float = field(default=0.5, metadata=_doc(
        "MediaPipe full-range detector score threshold.", ge=0.05, le=0.99))
    min_face_px: int = field(default=20, metadata=_doc(
        "Faces whose box is narrower than this many source pixels are ignored.", ge=8))
    max_faces: int = field(default=16, metadata=_doc(
        "Most faces analysed per frame (largest first).", ge=1, le=256))
    detect_interval_s: float = field(default=1.0, metadata=_doc(
        "Media seconds between runs of the face detector on a stream (and at every GOP's "
        "first analysed frame, and while no face is in the picture); between them each face "
        "is found again by its mesh from the previous frame, and a face entering beside "
        "them is found at the next detection.  0: detect on every analysed frame.  The "
        "facellava profile always detects.",
        ge=0, le=10))
    detect_motion_threshold: float = field(default=8.0, metadata=_doc(
        "A picture with no face is detected again before detect_interval_s only when it "
        "changed since its last detection: some pixel of its 64-pixel-wide grey thumbnail "
        "(each the mean of the area it covers) moved by more than this many levels of 255.  "
        "A static camera's empty scene then costs a thumbnail per frame, not a detection; a "
        "face entering it changes it.  0: detect an empty picture on every analysed frame.",
        ge=0, le=255))
    track_confirm_hits: int = field(default=2, metadata=_doc(
        "Detections needed before a tentative track is confirmed.", ge=1, le=30))
    track_max_lost_s: float = field(default=1.0, metadata=_doc(
        "A track missing for longer than this (media seconds) ends.", ge=0, le=30))
    track_min_iou: float = field(default=0.1, metadata=_doc(
        "Smallest IoU between a predicted track box and a detection to associate them.",
        ge=0, le=1))
    encoder_backend: str = field(default="onnxruntime", metadata=_doc(
        "Runtime for the visual nets (tensorrt needs a CUDA device and `pip install "
        "'facestream[tensorrt]'`; its engines are built once into cache_dir/engines).",
        choices=("onnxruntime", "torch", "tensorrt")))
    encoder_batch_sizes: str = field(default="1,8,32", metadata=_doc(
        "TensorRT optimisation profile: smallest, typical and largest faces per encoder call, "
        "comma-separated ('8' fixes the batch); larger calls are split."))
    encoder_precision: str = field(default="fp16", metadata=_doc(
        "Arithmetic of TensorRT engines; ONNX Runtime and torch always run fp32.",
        choices=("fp16", "fp32")))
    threads: int = field(default=0, metadata=_doc(
        "CPU threads for the nets and the LLM; 0 lets each library choose.", ge=0, le=256))
    describe: bool = field(default=True, metadata=_doc(
        "Write a natural-language description with the small LLM."))
    description_max_tokens: int = field(default=32, metadata=_doc(
        "Longest description, in tokens.", ge=8, le=512))
    description_mode: str = field(default="follow", metadata=_doc(
        "When the compact profile's descriptions are published: follow (a window's event goes "
        "out when the window closes; its fresh description follows as a "
        "facestream.face.description event) or inline (the event waits for its description).",
        choices=("follow", "inline")))
    description_runtime: str = field(default="llamacpp", metadata=_doc(
        "Where the compact profile's SmolLM2 runs: llamacpp (the shipped 4-bit GGUF, no "
        "torch) or torch (the fp32 copy models pull converts, through the torch engine).",
        choices=("llamacpp", "torch")))

    # Change-triggered descriptions (facestream.workers.scheduler): a track's window goes to
    # the LLM when the track is new, when a cheap signal moved more than its threshold since
    # the track's last described window, or when llm_max_interval_s passed; otherwise the
    # last description is reused.  A threshold at its upper limit turns its trigger off.
    # Defaults tuned with bench/bench_scheduling.py (docs/PERFORMANCE.md, "Scheduling").
    llm_trigger_label: bool = field(default=True, metadata=_doc(
        "Describe afresh when the expression label differs from the last described window's."))
    llm_trigger_expression: float = field(default=1.0, metadata=_doc(
        "Describe afresh when the 7 expression scores moved more than this (L1 distance, "
        "0..2).", ge=0, le=2))
    llm_trigger_au: float = field(default=3.0, metadata=_doc(
        "Describe afresh when one geometric AU intensity moved more than this (0..5 scale).",
        ge=0, le=5))
    llm_trigger_pose_deg: float = field(default=30.0, metadata=_doc(
        "Describe afresh when head yaw, pitch or roll moved more than this many degrees.",
        ge=0, le=180))
    llm_trigger_motion: float = field(default=0.15, metadata=_doc(
        "Describe afresh when the 68 landmarks moved relative to the eyes by more than this "
        "on average (units of the distance between the eyes; position, size and roll of the "
        "face do not count).", ge=0, le=10))
    llm_max_interval_s: float = field(default=10.0, metadata=_doc(
        "Describe afresh at least this often (media seconds); 0 describes every window.",
        ge=0, le=3600))
    reconnect_attempts: int = field(default=5, metadata=_doc(
        "Reconnects tried for a live source that drops, before giving up.", ge=0, le=1000))
    reconnect_backoff_s: float = field(default=0.5, metadata=_doc(
        "First reconnect delay; doubles each try (with jitter) up to reconnect_backoff_max_s.",
        ge=0, le=60))
    reconnect_backoff_max_s: float = field(default=8.0, metadata=_doc(
        "Longest delay between reconnects.", ge=0, le=600))
    open_timeout_s: float = field(default=10.0, metadata=_doc(
        "How long opening or reading a network source may block.", ge=0.1, le=600))

    # Distributed mode: Kafka in, Redis out.
    kafka_bootstrap: str = field(default="localhost:9092", metadata=_doc(
        "Kafka bootstrap servers, comma-separated host:port."))
    kafka_security_protocol: str = field(default="PLAINTEXT", metadata=_doc(
        "Kafka security protocol.", choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")))
    kafka_sasl_mechanism: str = field(default="", metadata=_doc(
        "SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) when the protocol uses SASL."))
    kafka_sasl_username: str = field(default="", metadata=_doc("SASL user name."))
    kafka_sasl_password: str = field(default="", metadata=_doc("SASL password."))
    kafka_ssl_cafile: str = field(default="", metadata=_doc(
        "CA bundle that signed the brokers' certificates (SSL protocols)."))
    kafka_connect_timeout_s: float = field(default=5.0, metadata=_doc(
        "How long streams, ingest and worker wait for the Kafka broker to answer when they "
        "start, before giving up with one line (exit 2).", ge=0.5, le=600))
    video_topic: str = field(default="facestream.video", metadata=_doc(
        "Topic of encoded video chunks, keyed by stream id."))
    dlq_topic: str = field(default="facestream.dlq", metadata=_doc(
        "Topic for messages that could not be processed (header fs-error says why)."))
    consumer_group: str = field(default="facestream-workers", metadata=_doc(
        "Kafka consumer group of the workers."))
    max_message_bytes: int = field(default=1_000_000, metadata=_doc(
        "Largest Kafka message the publisher sends; bigger chunks are split into parts.",
        ge=10_000, le=100_000_000))
    redis_url: str = field(default="redis://localhost:6379/0", metadata=_doc(
        "Redis URL (rediss:// for TLS; user and password in the URL for ACLs)."))
    events_stream: str = field(default="facestream:events", metadata=_doc(
        "Redis stream of every event; facestream:events:{stream id} holds one stream's."))
    chunk_max_s: float = field(default=0.5, metadata=_doc(
        "A live source's publisher sends what it has of the current GOP every this many "
        "seconds of video (as unfinished and continued chunks) instead of waiting for the "
        "GOP to end, so a frame reaches a worker within about this long whatever the "
        "camera's keyframe interval; 0 sends whole GOPs only.  Files always go as whole GOPs.",
        ge=0, le=60))
    live_max_lag_s: float = field(default=10.0, metadata=_doc(
        "A worker drops chunks of live streams that reach it this many seconds after they "
        "were published (it has fallen behind), and counts them; file chunks are never "
        "dropped.", ge=0.5, le=3600))
    orphan_part_timeout_s: float = field(default=30.0, metadata=_doc(
        "A split chunk whose other parts have not arrived this many seconds after its first "
        "part is given up: its parts go to the dead-letter topic and the offset commit moves "
        "past them.", ge=1, le=3600))
    kafka_session_timeout_ms: int = field(default=10_000, metadata=_doc(
        "A worker that sends no heartbeat for this long is out of the group and its streams "
        "move to the others (the broker's group.min/max.session.timeout.ms bound it).",
        ge=1000, le=3_600_000))
    kafka_heartbeat_interval_ms: int = field(default=3000, metadata=_doc(
        "Heartbeat period of a worker's consumer; at most a third of the session timeout.",
        ge=100, le=1_200_000))
    kafka_max_poll_interval_ms: int = field(default=300_000, metadata=_doc(
        "Longest a worker may take over one round of messages before the group gives its "
        "streams away (covers the slowest model batch).", ge=1000, le=3_600_000))
    kafka_group_instance_id: str = field(default="", metadata=_doc(
        "Static group membership (Kafka group.instance.id): a stable, unique name per worker "
        "(e.g. the pod name), so a worker restarted within the session timeout gets its "
        "streams back without a rebalance.  Empty: dynamic membership."))
    worker_threads: int = field(default=0, metadata=_doc(
        "Threads a worker decodes chunks and finds faces on (one MediaPipe face stage "
        "each); 0 = min(2, CPU cores); 1 = everything on the consuming thread.",
        ge=0, le=64))
    round_max_s: float = field(default=0.5, metadata=_doc(
        "A worker's round delivers the events of the streams whose chunks are ready once "
        "it has run this many seconds, and a stream still being decoded or searched for "
        "faces carries its chunk (and its next messages) over to a later round instead of "
        "holding the others' events back; 0 waits for every chunk of the round.  Only with "
        "worker_threads > 1 (one thread does each chunk as it is admitted).",
        ge=0, le=600))
    registry_topic: str = field(default="facestream.streams", metadata=_doc(
        "Compacted topic of stream specs, keyed by stream id."))
    registry_schemes: str = field(default="rtsp,rtsps,http,https,rtmp,srt", metadata=_doc(
        "URL schemes a registry source may use, comma-separated."))
    registry_hosts: str = field(default="", metadata=_doc(
        "If set, the only hosts a registry source may name, comma-separated."))
    registry_allow_files: bool = field(default=False, metadata=_doc(
        "Let registry sources be local files (off: the control topic cannot read files)."))
    registry_allow_private: bool = field(default=False, metadata=_doc(
        "Let registry sources be private, loopback or link-local addresses."))
    # The camera supervisor (`facestream ingest --from-registry`) and the stream status it
    # shares with the workers (docs/EVENTS.md, "Stream status").
    supervisor_reconnect_attempts: int = field(default=0, metadata=_doc(
        "Reconnects the supervisor tries for a registered camera that is down or dropped "
        "before it marks it failed and stops trying; 0 = for as long as it is registered "
        "(one-shot `ingest SOURCE` uses reconnect_attempts).", ge=0, le=1_000_000))
    supervisor_backoff_max_s: float = field(default=30.0, metadata=_doc(
        "Longest delay between the supervisor's reconnects or publisher restarts of one "
        "camera (the first is reconnect_backoff_s, doubling, with jitter).", ge=0.1, le=3600))
    supervisor_metrics_port: int = field(default=9401, metadata=_doc(
        "Port of the supervisor's /metrics, /healthz and /readyz; 0 picks a free port (the "
        "supervisor prints it), -1 turns them off.", ge=-1, le=65535))
    stream_status_prefix: str = field(default="facestream:stream", metadata=_doc(
        "Redis key prefix of the stream status hashes ({prefix}:{stream id}) and snapshots "
        "({prefix}:{stream id}:snapshot)."))
    stream_status_interval_s: float = field(default=1.0, metadata=_doc(
        "How often the supervisor refreshes each stream's counters in its status hash (state "
        "changes are written at once).", ge=0.1, le=60))
    stream_removed_ttl_s: int = field(default=3600, metadata=_doc(
        "A removed stream's status hash is kept (state removed) this many seconds, then "
        "expires.", ge=1, le=31_536_000))
    snapshot_interval_s: float = field(default=1.0, metadata=_doc(
        "A worker stores a stream's latest analysed frame, annotated, as a JPEG at most this "
        "often; 0 = no snapshots.", ge=0, le=3600))
    snapshot_ttl_s: int = field(default=300, metadata=_doc(
        "Expiry of a stream's snapshot key, in seconds.", ge=1, le=86_400))
    metrics_port: int = field(default=9400, metadata=_doc(
        "Port of the worker's /metrics, /healthz and /readyz endpoints; 0 turns them off.",
        ge=0, le=65535))
    checkpoint_prefix: str = field(default="facestream:checkpoint", metadata=_doc(
        "Redis key prefix of the per-stream checkpoints workers resume streams from."))
    events_maxlen: int = field(default=100_000, metadata=_doc(
        "Approximate cap on each Redis events stream (XADD MAXLEN ~).", ge=100))
    events_retention_s: float = field(default=0.0, metadata=_doc(
        "Also trim each Redis events stream by age: entries older than this many seconds "
        "(by the writer's clock) go, in whole stream nodes (XTRIM MINID ~, Redis >= 6.2); "
        "0 = keep up to events_maxlen entries whatever their age.", ge=0, le=315_360_000))

    # Optional sinks beside Redis (facestream.sinks.fanout): the worker writes every round's
    # events to Redis, then to these, and checkpoints and commits only after all of them.
    events_topic: str = field(default="", metadata=_doc(
        "Kafka topic the workers also produce every event to (CloudEvents Kafka binding, "
        "binary mode: value = data as JSON, ce_* headers, key = stream id), acks=all; "
        "empty = off."))
    webhook_urls: str = field(default="", metadata=_doc(
        "HTTP(S) URLs the workers also POST every round's events to, comma-separated "
        "(CloudEvents HTTP binding, batched mode: application/cloudevents-batch+json); "
        "empty = off."))
    webhook_secret: str = field(default="", metadata=_doc(
        "Key of the HMAC-SHA256 of each webhook body, sent as X-Facestream-Signature: "
        "sha256=<hex>; empty = unsigned."))
    webhook_timeout_s: float = field(default=5.0, metadata=_doc(
        "Longest wait for one webhook request's answer, in seconds.", ge=0.1, le=600))
    webhook_max_attempts: int = field(default=5, metadata=_doc(
        "Tries per webhook request (a 2xx answer ends them); after the last failure its "
        "events go to the Redis stream webhook_dead_stream and the worker goes on.",
        ge=1, le=100))
    webhook_backoff_s: float = field(default=0.5, metadata=_doc(
        "Delay after a webhook request's first failure; doubles each try up to "
        "webhook_backoff_max_s.", ge=0, le=60))
    webhook_backoff_max_s: float = field(default=8.0, metadata=_doc(
        "Longest delay between webhook tries.", ge=0, le=600))
    webhook_dead_stream: str = field(default="facestream:webhooks:dead", metadata=_doc(
        "Redis stream of the events a webhook receiver never accepted (url, event id, "
        "reason, the event)."))

    # Downstream services (facestream.client.EventSubscriber, `facestream events tail`).
    subscriber_claim_idle_s: float = field(default=30.0, metadata=_doc(
        "A subscriber takes over (XAUTOCLAIM) an entry another consumer of its group has held "
        "unacknowledged this long, and retries its own failed entries after it: longer than "
        "a batch of events takes to handle.", ge=0.1, le=86_400))
    subscriber_max_deliveries: int = field(default=5, metadata=_doc(
        "An entry delivered this many times without being handled goes to the group's "
        "dead-letter stream ({events_stream}:dead:{group}) and is acknowledged.",
        ge=1, le=1000))

    # The control plane (`facestream serve`: facestream.api, docs/API.md).
    api_host: str = field(default="127.0.0.1", metadata=_doc(
        "Address `facestream serve` listens on; any address that is not loopback needs "
        "api_token."))
    api_port: int = field(default=8080, metadata=_doc(
        "Port of the HTTP API and the web console; 0 picks a free one (printed at start).",
        ge=0, le=65535))
    api_token: str = field(default="", metadata=_doc(
        "Bearer token every /api route requires (Authorization: Bearer <token>); empty = "
        "no token, allowed only on a loopback api_host."))

    # Analysis profile.  facellava needs the user's local copy of the released checkpoint
    # (non-commercial licence: never bundled) and the two LanguageBind towers.
    profile: str = field(default="compact", metadata=_doc(
        "Analysis profile: compact (CPU, bundled weights) or facellava (Face-LLaVA from a "
        "local checkpoint).", choices=PROFILES))
    facellava_checkpoint: str = field(default="", metadata=_doc(
        "Local directory of the released Face-LLaVA checkpoint (config.json, weights, "
        "tokenizer); required by the facellava profile."))
    facellava_tasks: str = field(default="expression", metadata=_doc(
        "Questions asked of each described window, comma-separated: expression, "
        "action_units, attributes, age, deepfake (one generation each)."))
    facellava_max_new_tokens: int = field(default=256, metadata=_doc(
        "Longest Face-LLaVA answer, in tokens; generation stops earlier at end-of-sequence "
        "(the reasoning answers run to about 100-200 tokens; the reference script allows "
        "1024).  Prompt + answer must fit llm_max_seq_len.", ge=4, le=1024))
    facellava_video_window_s: float = field(default=3.0, metadata=_doc(
        "Seconds of a track the video tasks (expression, deepfake) look at, ending at the "
        "window's last frame: 8 frames spread over them, as the reference spreads 8 over a "
        "face clip; the track's earlier windows are kept thinned to 16 samples (one per "
        "slot of this / 16 s).  0, or any length up to window_s: the window's own frames.",
        ge=0, le=10))
    facellava_landmarks: bool = field(default=True, metadata=_doc(
        "Face-LLaVA mode.  true: each frame's 68 landmarks go through the landmark projector "
        "and face-region cross-attention (the paper's model, as trained and evaluated); "
        "false: the projector alone, as the released inference script runs (no landmarks). "
        "false needs facellava_vision_backend=torch."))
    facellava_temperature: float = field(default=0.0, metadata=_doc(
        "Sampling temperature of Face-LLaVA's answers; 0 decodes greedily (deterministic, "
        "the default); the released inference script samples at 0.1.", ge=0.0, le=2.0))
    facellava_top_p: float = field(default=1.0, metadata=_doc(
        "Nucleus sampling: with temperature > 0, draw only from the most likely tokens whose "
        "probabilities add up to this (1 = all tokens).", ge=0.01, le=1.0))
    facellava_resize_antialias: bool = field(default=True, metadata=_doc(
        "Antialias the image tower's bicubic resize of the 256² face crop to 224², as "
        "torchvision >= 0.17 does by default on tensors (the reference installs torch 2.5.1, "
        "so torchvision 0.20.1); false is torchvision < 0.17 (Video-LLaVA's 0.15.2).  Video "
        "frames are never antialiased (pytorchvideo's ShortSideScale)."))
    facellava_quantization: str = field(default="none", metadata=_doc(
        "Weights of Face-LLaVA's language model: none (--dtype: fp16 about 14 GB) or nf4 "
        "(4-bit NF4 through bitsandbytes, about 4 GB, as the released inference script "
        "loads it; needs bitsandbytes and a CUDA device).  The towers and the fusion stage "
        "stay in --dtype.", choices=("none", "nf4")))
    facellava_crop_rule: str = field(default="facestream", metadata=_doc(
        "Where Face-LLaVA's face crop comes from.  facestream: each tracked face's own "
        "detector box (full-range BlazeFace, float box); reference: the reference crop "
        "tool's rule (short-range BlazeFace through MediaPipe's Tasks API, integer box, "
        "exactly one face per frame), a face it does not cover keeping facestream's crop.",
        choices=("facestream", "reference")))
    facellava_vision_backend: str = field(default="torch", metadata=_doc(
        "Runtime of the Face-LLaVA vision path (exports are cached under cache_dir/engines).",
        choices=("torch", "onnxruntime", "tensorrt")))
    device: str = field(default="cpu", metadata=_doc(
        "Device of the Face-LLaVA vision path and LLM: cpu or cuda (cuda:N)."))
    dtype: str = field(default="fp16", metadata=_doc(
        "Arithmetic of the Face-LLaVA model on CUDA; the CPU always runs fp32.",
        choices=("fp16", "bf16", "fp32")))
    # Face-LLaVA towers: the checkpoint's config names them by hub id; facestream never
    # downloads, so these point at local copies ("" = use the config's value if it is local).
    facellava_image_tower: str = field(default="", metadata=_doc(
        "Local directory of LanguageBind/LanguageBind_Image (config.json + weights)."))
    facellava_video_tower: str = field(default="", metadata=_doc(
        "Local directory of LanguageBind/LanguageBind_Video_merge (config.json + weights)."))

    # LLM engine (facestream.llm.engine): continuous batching over a preallocated slot KV
    # cache of llm_max_batch x llm_max_seq_len positions (2 x layers x kv heads x head dim
    # values each; Vicuna-7B fp16: 0.5 MiB per position).
    llm_max_batch: int = field(default=8, metadata=_doc(
        "Most requests the LLM engine decodes together (KV cache slots).", ge=1, le=512))
    llm_max_seq_len: int = field(default=2560, metadata=_doc(
        "Longest prompt + answer per request, in tokens (a Face-LLaVA video prompt is 2,056 "
        "visual tokens + the question).", ge=64, le=32768))
    llm_prefill_chunk: int = field(default=512, metadata=_doc(
        "Most prompt tokens the torch LLM engine prefills per step, so a long prompt being "
        "admitted stalls the running answers by at most this much (0 = whole prompts).",
        ge=0, le=32768))
    llm_queue_size: int = field(default=256, metadata=_doc(
        "Requests waiting for a slot; when full, the oldest non-urgent one is shed and "
        "counted.", ge=1, le=100_000))
    llm_draft_tokens: int = field(default=6, metadata=_doc(
        "Speculative decoding on llama.cpp (the compact profile's describer): up to this "
        "many tokens per step drafted from the engine's recent answers and checked in the "
        "same pass; greedy answers only (0 = off).", ge=0, le=32))
    llm_cuda_graphs: bool = field(default=True, metadata=_doc(
        "On CUDA, replay the LLM engine's decode step from CUDA graphs, one captured per "
        "batch and key-span bucket on its first use; false runs every step eagerly.  No "
        "effect on the CPU."))

    # Remote LLM tier (facestream.llm.remote): the same requests sent to an OpenAI-compatible
    # server that accepts prompt embeddings (vLLM with --enable-prompt-embeds, or
    # `facestream llm serve`); docs/LLM_SERVING.md.
    llm_endpoint: str = field(default="", metadata=_doc(
        "Base URL of the LLM server, e.g. http://llm-host:8000 (a trailing /v1 is accepted); "
        "empty runs the LLM in-process."))
    llm_timeout_s: float = field(default=120.0, metadata=_doc(
        "Longest wait for one answer from the LLM server, in seconds (not retried).",
        ge=0.1, le=3600))
    llm_max_in_flight: int = field(default=8, metadata=_doc(
        "Most requests a process has open at the LLM server at once; more wait their turn.",
        ge=1, le=1024))
    llm_api_key: str = field(default="", metadata=_doc(
        "API key of the LLM server (vLLM's --api-key): sent as Authorization: Bearer <key>; "
        "`facestream llm serve` requires it on its /v1 routes when set.  Empty: none."))

    @property
    def encoder_batch_profile(self) -> BatchProfile:
        return BatchProfile.parse(self.encoder_batch_sizes)

    @property
    def facellava_task_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.facellava_tasks.split(",") if t.strip())

    @property
    def facellava_clip_s(self) -> float:
        """Seconds of a track Face-LLaVA's video tasks look at when that reaches back past
        the analysis window; 0 when the window's own samples are what they see (another
        profile, no video task asked, or ``facellava_video_window_s`` <= ``window_s``)."""
        if (self.profile != "facellava" or self.facellava_video_window_s <= self.window_s
                or not any(task_media(t) == "video" for t in self.facellava_task_list)):
            return 0.0
        return self.facellava_video_window_s

    @property
    def webhook_url_list(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.webhook_urls.split(",") if u.strip())

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options shared by every kafka-python client facestream makes."""
        options: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap.split(","),
                                   "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options.update(sasl_mechanism=self.kafka_sasl_mechanism,
                           sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.kafka_sasl_password)
        if self.kafka_ssl_cafile:
            options["ssl_cafile"] = self.kafka_ssl_cafile
        return options

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if meta.get("ge") is not None and value < meta["ge"]:
                raise ConfigError(f"setting {f.name}={value!r}: must be >= {meta['ge']}")
            if meta.get("le") is not None and value > meta["le"]:
                raise ConfigError(f"setting {f.name}={value!r}: must be <= {meta['le']}")
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(
                    f"setting {f.name}={value!r}: must be one of {', '.join(meta['choices'])}")
        if self.reconnect_backoff_max_s < self.reconnect_backoff_s:
            raise ConfigError("setting reconnect_backoff_max_s must be >= reconnect_backoff_s")
        if self.supervisor_backoff_max_s < self.reconnect_backoff_s:
            raise ConfigError("setting supervisor_backoff_max_s must be >= reconnect_backoff_s")
        if self.webhook_backoff_max_s < self.webhook_backoff_s:
            raise ConfigError("setting webhook_backoff_max_s must be >= webhook_backoff_s")
        bad_urls = [u for u in self.webhook_url_list
                    if not u.lower().startswith(("http://", "https://"))]
        if bad_urls:
            raise ConfigError(f"setting webhook_urls: {bad_urls[0]!r} is not an http(s):// URL")
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ConfigError(
                f"setting kafka_heartbeat_interval_ms={self.kafka_heartbeat_interval_ms} must "
                f"be at most a third of kafka_session_timeout_ms={self.kafka_session_timeout_ms}")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ConfigError(f"setting kafka_security_protocol={self.kafka_security_protocol} "
                              "needs kafka_sasl_mechanism (and user name, password)")
        self.encoder_batch_profile       # refuses a malformed value
        if self.profile == "facellava" and not self.facellava_checkpoint:
            raise ConfigError("setting profile=facellava needs facellava_checkpoint: the local "
                              "directory of the released Face-LLaVA checkpoint")
        unknown = [t for t in self.facellava_task_list if t not in TASKS]
        if unknown or not self.facellava_task_list:
            raise ConfigError(f"setting facellava_tasks={self.facellava_tasks!r}: expected a "
                              f"comma-separated subset of {', '.join(TASKS)}")
        if not self.facellava_landmarks and self.facellava_vision_backend != "torch":
            raise ConfigError("setting facellava_landmarks=false runs the projector alone, "
                              "which only facellava_vision_backend=torch does; set it to torch "
                              "(exports carry the landmark path)")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"setting device={self.device!r}: expected cpu, cuda or cuda:N")
        if self.window_s < 1.0 / self.fps:
            raise ConfigError(
                f"setting window_s={self.window_s} is shorter than one sampled frame at "
                f"fps={self.fps}; raise window_s or fps")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, *,
             environ: Mapping[str, str] | None = None) -> "Settings":
        """Defaults, then ``FACESTREAM_*`` variables, then ``overrides`` (None values skipped)."""
        environ = os.environ if environ is None else environ
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in environ.items():
            if not key.startswith(ENV_PREFIX) or key[len(ENV_PREFIX):] in TOOLING_ENV:
                continue
            name = key[len(ENV_PREFIX):].lower()
            if name not in known:
                hint = difflib.get_close_matches(name, list(known), n=1)
                raise ConfigError(f"unknown setting {key} in the environment"
                                  + (f"; did you mean {ENV_PREFIX}{hint[0].upper()}?"
                                     if hint else "; see facestream/config.py"))
            values[name] = _coerce(known[name], raw, source=key)
        for name, value in (overrides or {}).items():
            if name not in known:
                hint = difflib.get_close_matches(name, list(known), n=1)
                raise ConfigError(f"unknown setting {name!r}"
                                  + (f"; did you mean {hint[0]!r}?" if hint else ""))
            if value is not None:
                values[name] = _coerce(known[name], value, source=name)
        return cls(**values)

    @classmethod
    def reference(cls) -> str:
        """docs/SETTINGS.md: every setting, its environment variable, default, allowed values
        and meaning, in Markdown (``python -m facestream.config`` prints it)."""
        lines = ["# Settings", "",
                 "Every facestream process (`analyze`, `worker`, `ingest`, `serve`, ...) reads "
                 "the same settings: defaults, then `FACESTREAM_<NAME>` environment variables, "
                 "then command-line options where a command has one. An unknown "
                 "`FACESTREAM_*` name or a value out of range stops the process with a "
                 "one-line error naming it. This page is generated from "
                 "`facestream/config.py` (`python -m facestream.config > docs/SETTINGS.md`; a "
                 "test keeps it current).", "",
                 "| environment variable | default | allowed | meaning |",
                 "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.default_factory is not dataclasses.MISSING:
                default = "(see meaning)"
            elif isinstance(f.default, bool):
                default = f"`{str(f.default).lower()}`"
            else:
                default = f"`{f.default}`" if f.default not in ("", None) else "(empty)"
            if meta.get("choices"):
                allowed = ", ".join(f"`{c}`" for c in meta["choices"])
            else:
                bounds = [f">= {meta['ge']:g}" if meta.get("ge") is not None else "",
                          f"<= {meta['le']:g}" if meta.get("le") is not None else ""]
                allowed = ", ".join(b for b in bounds if b)
            doc = " ".join(meta["doc"].split()).replace("|", "\\|")
            lines.append(f"| `{ENV_PREFIX}{f.name.upper()}` | {default} | {allowed} | {doc} |")
        return "\n".join(lines) + "\n"

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, Any]]:
        """(name, doc, default) for every setting, for help text and docs."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append((f.name, f.metadata["doc"], default))
        return out


def _coerce(f: dataclasses.Field, value: Any, *, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "Path":
            return Path(value).expanduser()
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {source}={value!r}: expected {kind}") from None


def loopback(host: str) -> bool:
    """True if ``host`` (an address to listen on) is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    print(Settings.reference(), end="")
