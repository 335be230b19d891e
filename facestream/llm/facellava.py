"""The facellava profile's language stage: Face-LLaVA's answers for closed windows.

Per call, over windows of any number of tracks and streams:

1. **vision** — each window's frames go through the checkpoint's vision path (tower ->
   projector -> face-region landmark cross-attention) with their landmarks, or through the
   projector alone with ``landmarks=False`` (the released inference script's mode), all
   windows in one batch per tower: video tasks see 8 frames sampled uniformly from the
   window's clip (the reference's ``linspace`` sampling over a face clip; fewer samples
   repeat some): the track's last ``facellava_video_window_s`` seconds, thinned
   (``FaceWindow.clip``), or the window's own samples when it has no clip; image tasks the
   window's middle frame.  Crops and landmarks are the ones the face stage
   cut for this profile (``FaceChips.square`` / ``square_landmarks``: 256² crops,
   landmarks / 256).
2. **language** — one generation request per (window, task), every request of the call
   submitted together, so the engine batches faces of all streams in its running batch.
   A window's tasks of one medium carry the same visual-token tensor and prompts that agree
   up to the question, so the engine prefills that shared prefix (2,056 visual tokens for
   video) once per window and copies it to the other tasks.
   Greedy by default (``temperature`` 0; the released script samples at 0.1 with
   ``top_p`` 1), ending at end-of-sequence or the Vicuna separator ``</s>``, at most
   ``max_new_tokens``.
3. **parsing** — each answer becomes event fields (``facestream.llm.parsers``); the raw texts
   are kept.

Which task is asked of which medium follows the reference: expression and deepfake of
videos, age, attributes and action units of single images (``facestream.vocabulary.VIDEO_TASKS``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from facestream.encoder.facellava.preprocess import clip_pixels, uniform_indices
from facestream.errors import ConfigError
from facestream.llm import parsers
from facestream.llm.backends import make_engine
from facestream.llm.prompts import STOP, build_prompt, tokenize_prompt
from facestream.llm.requests import GenerationBackend, GenerationRequest
from facestream.types import Answer, FaceSample, FaceWindow
from facestream.vocabulary import TASKS, task_media

IMAGE_TOKEN_ID = -200        # LLaVA's IMAGE_TOKEN_INDEX: a placeholder no vocabulary holds
VIDEO_FRAMES = 8


def answer_fields(texts: Mapping[str, str]) -> dict[str, Any]:
    """Event data fields from the answers of the tasks asked (tasks not asked add nothing).

    Face-LLaVA names an expression label; it does not score the seven (the event keeps the
    cheap expression head's scores beside the label).
    """
    out: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    if "expression" in texts:
        out["expression"] = {"label": parsers.parse_expression(texts["expression"]).label}
    if "action_units" in texts:
        out["action_units"] = {**parsers.parse_action_units(texts["action_units"]),
                               "method": "model"}
    if "attributes" in texts:
        parsed = parsers.parse_attributes(texts["attributes"])
        gender = parsed.pop("gender")
        attributes["gender"] = {"label": gender, "score": None}
        attributes["celeba"] = parsed
    if "age" in texts:
        age = parsers.parse_age(texts["age"])
        attributes["age"] = {"years": age.years, "low": age.low, "high": age.high}
    if attributes:
        out["attributes"] = attributes
    if "deepfake" in texts:
        verdict = parsers.parse_deepfake(texts["deepfake"])
        out["deepfake"] = {"score": verdict.score, "fake": verdict.fake}
    return out


class FaceLlavaAnswerer:
    """Vision path + generation engine + parsers.  Blocking; not thread-safe.

    ``vision`` maps "video" / "image" to a callable ``(pixels, landmarks) -> tokens`` (a
    ``VisionPath`` or an exported backend wrapped by :func:`backend_vision`), ``engine`` is a
    :class:`~facestream.llm.requests.GenerationBackend` (only its ``generate`` is used) over
    the checkpoint's LLM and tokenizer.  ``landmarks=False`` calls the vision with None for
    the landmarks (the projector alone; ``tokens_per_frame`` must count without the landmark
    token); ``temperature`` and ``top_p`` go into every request."""

    def __init__(self, *, vision: Mapping[str, Any], tokens_per_frame: Mapping[str, int],
                 engine: GenerationBackend, tokenizer, tasks: Sequence[str], max_new_tokens: int,
                 components: Mapping[str, str], device: str | torch.device = "cpu",
                 landmarks: bool = True, temperature: float = 0.0, top_p: float = 1.0,
                 resize_antialias: bool = True) -> None:
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown:
            raise ConfigError(f"facellava_tasks {','.join(tasks)!r}: expected a comma-separated "
                              f"subset of {', '.join(TASKS)}")
        self.tasks = tuple(tasks)
        self.components = dict(components)
        self._vision = dict(vision)
        self._engine = engine
        self._max_new_tokens = max_new_tokens
        self._landmarks = landmarks
        self._temperature = temperature
        self._top_p = top_p
        self._resize_antialias = resize_antialias
        self._device = torch.device(device)
        self._prompts: dict[str, tuple[int, ...]] = {}
        for task in self.tasks:
            kind = task_media(task)
            if kind not in self._vision:
                raise ConfigError(f"task {task} needs the {kind} tower; pass its local "
                                  f"directory (setting facellava_{kind}_tower)")
            prompt = build_prompt(task, frames=VIDEO_FRAMES if kind == "video" else 1)
            self._prompts[task] = tuple(tokenize_prompt(
                tokenizer, prompt, image_token_id=IMAGE_TOKEN_ID,
                tokens_per_image=tokens_per_frame[kind]))

    @staticmethod
    def prefix_ids(tokenizer) -> tuple[int, ...]:
        """The ids every prompt starts with (BOS + system sentence + "USER: "), for the
        engine's shared-prefix cache."""
        ids = tokenize_prompt(tokenizer, build_prompt("expression", frames=1),
                              image_token_id=IMAGE_TOKEN_ID, tokens_per_image=1)
        return tuple(ids[:ids.index(IMAGE_TOKEN_ID)])

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters (queued, running, shed, tokens, ...).  Thread-safe."""
        return self._engine.stats

    def answer(self, items: Sequence[tuple[FaceWindow, Any]]) -> list[Answer | None]:
        """One answer per (window, cheap results), in order (None where the engine shed a
        request under load); the description is the expression answer when that task is
        asked, else the first task's."""
        windows = [w for w, _ in items]
        if not windows:
            return []
        kinds = {task_media(t) for t in self.tasks}
        tokens = {kind: self._encode(kind, windows) for kind in sorted(kinds)}
        requests = []
        for i, window in enumerate(windows):
            # One tensor per medium and window: the window's tasks hand the engine the same
            # visual tokens, so it computes their common prompt prefix once.
            visual = {kind: tokens[kind][i] for kind in kinds}         # [N, hidden] each
            for task in self.tasks:
                requests.append(GenerationRequest(
                    request_id=f"{window.stream_id}/{window.track_id}/{window.start_s:.3f}/{task}",
                    prompt_ids=self._prompts[task], visual=visual[task_media(task)],
                    max_new_tokens=self._max_new_tokens, stop=(STOP,),
                    temperature=self._temperature, top_p=self._top_p))
        results = self._engine.generate(requests)
        out: list[Answer | None] = []
        for k in range(0, len(results), len(self.tasks)):
            mine = results[k:k + len(self.tasks)]
            if any(r.finish_reason == "shed" for r in mine):
                out.append(None)                # not answered: the window keeps the last answer
                continue
            texts = {task: r.text.strip() for task, r in zip(self.tasks, mine)}
            description = texts.get("expression") or texts[self.tasks[0]]
            out.append(Answer(description, {**answer_fields(texts), "answers": texts}))
        return out

    def _encode(self, kind: str, windows: Sequence[FaceWindow]) -> torch.Tensor:
        """Visual tokens of every window for one tower: [W, tokens, hidden] (the landmarks
        are passed only in the landmarks mode)."""
        pixels, landmarks = [], []
        for window in windows:
            if window.samples[0].chips.square is None:
                raise ConfigError("windows carry no Face-LLaVA crops: the face stage must run "
                                  "with square_crops=True for the facellava profile")
            picked = video_frames(window) if kind == "video" else [image_frame(window)]
            crops = np.concatenate([s.chips.square for s in picked])        # [F, 256, 256, 3]
            marks = np.concatenate([s.chips.square_landmarks for s in picked])  # [F, 136]
            frames = clip_pixels(crops, kind=kind,                             # [F, 3, 224, 224]
                                 antialias=self._resize_antialias)
            pixels.append(frames.transpose(1, 0, 2, 3) if kind == "video" else frames[0])
            landmarks.append(marks)
        batch_pixels = np.stack(pixels)        # video [W, 3, 8, 224, 224]; image [W, 3, 224, 224]
        batch_marks = np.stack(landmarks)      # [W, F, 136]
        with torch.inference_mode():
            tokens = self._vision[kind](batch_pixels,                              # [W, N, hidden]
                                        batch_marks if self._landmarks else None)
        return tokens.to(self._device)


def video_frames(window: FaceWindow) -> list[FaceSample]:
    """The 8 samples a video task sees: spread uniformly over the window's clip (its own
    samples when it has none), first and last included."""
    clip = window.clip or window.samples
    return [clip[i] for i in uniform_indices(len(clip), VIDEO_FRAMES)]


def image_frame(window: FaceWindow) -> FaceSample:
    """The sample an image task sees: the window's middle one."""
    return window.samples[len(window.samples) // 2]


def torch_vision(path, *, device: str | torch.device, dtype: torch.dtype):
    """A ``VisionPath`` as ``(pixels, landmarks or None) numpy -> tokens`` on ``device``
    (None: the projector alone)."""
    def run(pixels: np.ndarray, landmarks: np.ndarray | None) -> torch.Tensor:
        return path(torch.from_numpy(pixels).to(device, dtype),
                    None if landmarks is None else torch.from_numpy(landmarks).to(device, dtype))
    return run


def backend_vision(backend):
    """An exported vision path (``facestream.encoder.backends`` Backend) as the same callable."""
    from facestream.encoder.export import VISION_OUTPUT

    def run(pixels: np.ndarray, landmarks: np.ndarray) -> torch.Tensor:
        out = backend.run({"pixels": pixels.astype(np.float32),
                           "landmarks": landmarks.astype(np.float32)})
        return torch.from_numpy(out[VISION_OUTPUT])
    return run


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def load_stage(settings) -> FaceLlavaAnswerer:
    """The facellava profile's language stage from settings: the checkpoint and towers from
    their local directories, the vision path on the configured backend, the LLM behind the
    continuous-batching engine — in this process, or at ``llm_endpoint`` (then only the
    embedding table is loaded here, to splice the visual tokens).  Blocking (seconds to
    minutes); raises AssetError or ConfigError with a one-line message."""
    import copy

    from facestream.encoder.facellava import load_facellava

    device = settings.device
    dtype = torch.float32 if device == "cpu" else DTYPES[settings.dtype]
    remote = bool(settings.llm_endpoint)      # the LLM tier runs elsewhere (vLLM or llm serve)
    model = load_facellava(settings.facellava_checkpoint,
                           image_tower=settings.facellava_image_tower or None,
                           video_tower=settings.facellava_video_tower or None,
                           dtype=dtype, device=device, load_llm=not remote,
                           quantization=(None if settings.facellava_quantization == "none"
                                         else settings.facellava_quantization))
    tasks = settings.facellava_task_list
    kinds = sorted({task_media(t) for t in tasks})
    vision, per_frame = {}, {}
    for kind in kinds:
        path = model.vision_path(kind)
        per_frame[kind] = path.fusion.tokens_per_frame(
            path.tower.num_tokens, with_landmarks=settings.facellava_landmarks)
        if settings.facellava_vision_backend == "torch":
            vision[kind] = torch_vision(path, device=device, dtype=dtype)
        else:
            from facestream.encoder.export import (ENGINES_DIR, EngineCache, export_vision_path,
                                                   open_artefact)

            fp32 = copy.deepcopy(path).float().cpu()     # exports are traced in fp32 on the CPU
            backend = "onnx" if settings.facellava_vision_backend == "onnxruntime" else "tensorrt"
            artefact = export_vision_path(
                EngineCache(settings.cache_dir / ENGINES_DIR), fp32, backend=backend,
                fp16=settings.encoder_precision == "fp16",
                profile=settings.encoder_batch_profile)
            del fp32
            vision[kind] = backend_vision(open_artefact(artefact, threads=settings.threads))
    embedding = None
    if remote:
        from facestream.llm.remote import load_embedding_table

        embedding = load_embedding_table(model.path, dtype=dtype)
    engine = make_engine(endpoint=settings.llm_endpoint, model=model.llm,
                         tokenizer=model.tokenizer, embedding=embedding,
                         image_token_id=IMAGE_TOKEN_ID,
                         prefix_ids=FaceLlavaAnswerer.prefix_ids(model.tokenizer),
                         max_batch=settings.llm_max_batch, max_seq_len=settings.llm_max_seq_len,
                         prefill_chunk=settings.llm_prefill_chunk,
                         queue_size=settings.llm_queue_size, timeout_s=settings.llm_timeout_s,
                         max_in_flight=settings.llm_max_in_flight,
                         cuda_graphs=settings.llm_cuda_graphs)
    mode = model.fusion.config.cross_attn_type if settings.facellava_landmarks else "projector"
    components = {"face_llava": f"{model.path.name}/{mode}",
                  "vision_backend": settings.facellava_vision_backend}
    return FaceLlavaAnswerer(vision=vision, tokens_per_frame=per_frame, engine=engine,
                             tokenizer=model.tokenizer, tasks=tasks,
                             max_new_tokens=settings.facellava_max_new_tokens,
                             components=components, device=device,
                             landmarks=settings.facellava_landmarks,
                             temperature=settings.facellava_temperature,
                             top_p=settings.facellava_top_p,
                             resize_antialias=settings.facellava_resize_antialias)
