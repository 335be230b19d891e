"""The facellava profile end to end, on a tiny random Face-LLaVA of the exact architecture
written in the released checkpoint layout (the 7B checkpoint cannot be fetched here) with only
a sentencepiece tokenizer.model, as the release ships, over real video: worker stages ->
vision path with or without landmarks -> engine -> parsers -> events."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facestream import events
from facestream.config import Settings
from facestream.encoder.facellava import load_facellava
from facestream.ingest.sources import parse_source
from facestream.llm.facellava import answer_fields, load_stage, video_frames
from facestream.retry import Backoff
from facestream.types import FaceSample, FaceWindow
from facestream.vision.decode import Decoder
from facestream.vision.faces import FaceAnalyzer
from facestream.workers.pipeline import StreamState
from facestream.workers.windows import CLIP_SLOTS
from tests.helpers import check_events_file, read_events, run_cli
from tests.tiny_facellava import write_tiny_checkpoint

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("facellava") / "tiny-facellava",
                                 cross_attn_type="masked", tokenizer="sentencepiece")


@pytest.fixture(scope="module")
def window(sample):
    """One real second of WolfgangLanger: 10 frames of one face, with Face-LLaVA crops."""
    analyzer = FaceAnalyzer(square_crops=True)
    decoder = Decoder(parse_source(str(sample("WolfgangLanger_Pexels.mp4"))), stream_id="w",
                      fps=10.0, backoff=Backoff(0, 0.0, 0.0))
    samples = []
    try:
        for frame in decoder.frames():
            faces = analyzer(frame.image)
            assert len(faces) == 1
            samples.append(FaceSample(frame.time_s, frame.pts, frame.arrival, faces.boxes[0],
                                      faces.landmarks[0], faces.mesh[0], faces.chips.take(0)))
            if len(samples) == 10:
                break
    finally:
        decoder.close()
        analyzer.close()
    return FaceWindow("w", "t1", tuple(samples), (640, 360))


@pytest.fixture(scope="module")
def track_windows(sample, checkpoint):
    """The first four windows of WolfgangLanger's face (10 fps, 1 s windows, its first 4.5 s)
    from the stream stage with the video window at 3 s and at 0: {3.0: windows, 0.0: windows}."""
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint)}
    states = {span: StreamState("w", Settings.load({**base, "facellava_video_window_s": span}))
              for span in (3.0, 0.0)}
    windows: dict[float, list[FaceWindow]] = {span: [] for span in states}
    analyzer = FaceAnalyzer(square_crops=True)
    decoder = Decoder(parse_source(str(sample("WolfgangLanger_Pexels.mp4"))), stream_id="w",
                      fps=10.0, backoff=Backoff(0, 0.0, 0.0))
    try:
        for frame in decoder.frames():
            if frame.time_s > 4.45:
                break
            faces = analyzer(frame.image)
            for span, state in states.items():
                windows[span] += state.observe(frame, faces)[1]
    finally:
        decoder.close()
        analyzer.close()
    assert [len(w.samples) for w in windows[3.0]] == [10, 10, 10, 10]
    return windows


# The reference side of the chain test, written out here from the public Face-LLaVA code
# (facestream.llm.prompts and facestream.encoder.facellava.preprocess quote the same facts),
# so that it shares no code with the stage it checks.
PLACEHOLDER = -200                     # LLaVA's IMAGE_TOKEN_INDEX
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The "
          "assistant gives helpful, detailed, and polite answers to the human's questions.")
QUESTIONS = {"expression": "What emotion is shown in the video?",           # video form
             "age": "How old do you think the person in the picture is, and what makes you "
                    "think so?"}                                            # image form
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
# np.linspace(0, 9, 8) = 9 i / 7 = 0, 1.29, 2.57, 3.86, 5.14, 6.43, 7.71, 9, truncated: the
# 8 frames the reference samples from a 10-frame window; an image task takes frame 10 // 2.
VIDEO_PICKS = [0, 1, 2, 3, 5, 6, 7, 9]
IMAGE_PICKS = [5]
# 224 / 14 = 16 x 16 patches: the image tower gives the 256 patch tokens, the video tower
# the class token too (257 per frame).
TOKENS_PER_FRAME = {"image": 256, "video": 257}


def reference_pixels(crops: np.ndarray, kind: str, *, antialias: bool = True) -> torch.Tensor:
    """LanguageBind's processors on 256² crops: [0, 1], short side to 224 (video: bilinear,
    never antialiased; image: bicubic, antialiased as torchvision >= 0.17 does by default, the
    reference installing torch 2.5.1; ``antialias=False``: torchvision < 0.17), nothing left
    to centre-crop, CLIP mean/std."""
    x = torch.from_numpy(crops.copy()).permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(224, 224), align_corners=False,
                                        mode="bilinear" if kind == "video" else "bicubic",
                                        antialias=antialias and kind == "image")
    return (x - CLIP_MEAN) / CLIP_STD                                    # [F, 3, 224, 224]


def reference_visual(model, crops: np.ndarray, marks: np.ndarray | None,
                     kind: str, *, antialias: bool = True) -> torch.Tensor:
    """Tower -> fusion with the frames' landmarks (None: the projector alone, the released
    inference script's mode); frame t's tokens are rows t * P ..
    (t + 1) * P.  The tower and fusion modules have their own reference tests
    (test_facellava_towers, test_facellava_fusion); the order and shapes here are written
    from the public code, not taken from facestream's VisionPath."""
    pixels = reference_pixels(crops, kind, antialias=antialias)
    if kind == "video":
        features = model.video_tower(pixels.permute(1, 0, 2, 3)[None])   # [1, F, 257, C]
    else:
        features = model.image_tower(pixels)[:, None]                    # [1, 1, 256, C]
    assert features.shape[2] == TOKENS_PER_FRAME[kind]
    landmarks = None if marks is None else torch.from_numpy(marks)[None]
    tokens = model.fusion(features, landmarks)                           # [1, F, P, D]
    return torch.cat(list(tokens[0]))                                    # [F * P, D]


def reference_ids(tokenizer, task: str, frames: int) -> list[int]:
    """Vicuna v1 one-turn prompt, placeholders joined by spaces, then the reference's
    tokenizer_image_token: chunks between placeholders tokenized alone, only the first
    chunk's BOS kept; each placeholder expanded to one id per visual token."""
    text = (f"{SYSTEM} USER: " + " ".join(["<image>"] * frames) + "\n" + QUESTIONS[task]
            + " ASSISTANT:")
    chunks = [tokenizer(chunk).input_ids for chunk in text.split("<image>")]
    drop = 1 if chunks[0][:1] == [tokenizer.bos_token_id] else 0
    ids = list(chunks[0])
    per_image = TOKENS_PER_FRAME["video" if frames > 1 else "image"]
    for chunk in chunks[1:]:
        ids += [PLACEHOLDER] * per_image + chunk[drop:]
    return ids


@pytest.mark.parametrize("landmarks", [True, False], ids=["paper-landmarks", "released-script"])
def test_answers_are_what_hf_generate_gives_for_the_same_visual_tokens(checkpoint, window,
                                                                       monkeypatch, landmarks):
    """The stage's whole chain — 8 frames picked, crops preprocessed, landmarks passed (or
    not: ``facellava_landmarks=false``, the projector alone), 2,056 visual tokens spliced at
    the placeholders, the engine's greedy decode — equals a direct computation written in
    this file (frame picks, pixels, prompt ids, splicing) over the checkpoint's tower and
    fusion modules and HF ``generate`` on ``inputs_embeds``.  What the stage hands the engine
    is checked too, not only the (short) decoded text."""
    from facestream.llm.engine import Engine

    submitted = []
    real_generate = Engine.generate

    def recording_generate(self, requests):
        submitted.extend(requests)
        return real_generate(self, requests)

    monkeypatch.setattr(Engine, "generate", recording_generate)
    settings = Settings.load({"profile": "facellava", "facellava_checkpoint": str(checkpoint),
                              "facellava_tasks": "expression,age",
                              "facellava_max_new_tokens": NEW_TOKENS,
                              "facellava_landmarks": landmarks})
    stage = load_stage(settings)
    assert stage.components["face_llava"].endswith("masked" if landmarks else "projector")
    [answer] = stage.answer([(window, None)])
    assert [r.request_id.rsplit("/", 1)[1] for r in submitted] == ["expression", "age"]

    assert len(window.samples) == 10
    model = load_facellava(checkpoint, dtype=torch.float32)
    for request, task, kind, frames in ((submitted[0], "expression", "video", VIDEO_PICKS),
                                        (submitted[1], "age", "image", IMAGE_PICKS)):
        crops = np.concatenate([window.samples[i].chips.square for i in frames])
        marks = np.concatenate([window.samples[i].chips.square_landmarks for i in frames])
        with torch.inference_mode():
            visual = reference_visual(model, crops, marks if landmarks else None, kind)
            ids = reference_ids(model.tokenizer, task, len(frames))
            assert ids.count(PLACEHOLDER) == visual.shape[0] == len(frames) * TOKENS_PER_FRAME[kind]
            assert list(request.prompt_ids) == ids, task
            assert (request.temperature, request.top_p) == (0.0, 1.0)       # greedy default
            torch.testing.assert_close(request.visual, visual, rtol=1e-5, atol=1e-5)
            ids_t = torch.tensor(ids)
            embeds = model.llm.get_input_embeddings()(ids_t.clamp(min=0))
            embeds[ids_t == PLACEHOLDER] = visual                       # in order, frame by frame
            out = model.llm.generate(inputs_embeds=embeds[None], max_new_tokens=NEW_TOKENS,
                                     do_sample=False, attention_mask=torch.ones(1, len(ids)))
        expected = model.tokenizer.decode(out[0], skip_special_tokens=True).split("</s>")[0]
        # A byte-fallback character cut off by max_new_tokens decodes to U+FFFD here; the
        # engine's incremental decoder never emits an incomplete character (TextTail).
        expected = expected.rstrip("\ufffd")
        assert answer.fields["answers"][task] == expected.strip(), task
    assert answer.description == answer.fields["answers"]["expression"]


@pytest.fixture
def submitted(monkeypatch) -> list:
    """Every request the engine is asked to generate, as it is handed over."""
    from facestream.llm.engine import Engine

    asked: list = []
    real_generate = Engine.generate
    monkeypatch.setattr(Engine, "generate",
                        lambda self, requests: asked.extend(requests)
                        or real_generate(self, requests))
    return asked


def test_landmarks_change_the_visual_tokens_and_sampling_settings_reach_the_engine(
        checkpoint, window, submitted):
    """The two modes hand the engine different visual tokens for the same window (so the
    landmark path really runs in one and not in the other); temperature / top_p settings
    go into every request."""
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression", "facellava_max_new_tokens": NEW_TOKENS,
            "facellava_temperature": 0.1, "facellava_top_p": 0.9}
    for landmarks in (True, False):
        load_stage(Settings.load({**base, "facellava_landmarks": landmarks})).answer(
            [(window, None)])
    with_marks, without = submitted
    assert with_marks.visual.shape == without.visual.shape == (8 * 257, 64)
    assert not torch.allclose(with_marks.visual, without.visual)
    assert {(r.temperature, r.top_p) for r in submitted} == {(0.1, 0.9)}


def test_resize_antialias_setting_reaches_the_image_tower(checkpoint, window, submitted):
    """``facellava_resize_antialias=false`` (torchvision < 0.17's resize) hands the engine the
    image task's visual tokens of the un-antialiased bicubic resize, and they differ from the
    default's (antialiased, the reference's pinned torchvision)."""
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "age", "facellava_max_new_tokens": NEW_TOKENS}
    for antialias in (True, False):
        load_stage(Settings.load({**base, "facellava_resize_antialias": antialias})).answer(
            [(window, None)])
    smooth, sharp = submitted
    model = load_facellava(checkpoint, dtype=torch.float32)
    crops = np.concatenate([window.samples[i].chips.square for i in IMAGE_PICKS])
    marks = np.concatenate([window.samples[i].chips.square_landmarks for i in IMAGE_PICKS])
    with torch.inference_mode():
        want = reference_visual(model, crops, marks, "image", antialias=False)
    torch.testing.assert_close(sharp.visual, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(smooth.visual, sharp.visual, rtol=1e-4, atol=1e-4)


def test_video_tasks_see_frames_spread_over_the_video_window(checkpoint, track_windows,
                                                            submitted):
    """With ``facellava_video_window_s`` 3, the fourth window's (3.0 … 3.9 s) expression
    question gets the visual tokens of 8 frames spread over the 3 s up to its last frame, not
    only over its own second; its age question still gets the window's middle frame."""
    window = track_windows[3.0][3]
    picked = video_frames(window)
    times = [s.time_s for s in picked]
    slot = 3.0 / CLIP_SLOTS
    assert times == sorted(set(times)) and times[-1] == window.end_s
    assert window.end_s - 3.0 < times[0] <= window.end_s - 3.0 + slot + 0.1
    assert times[0] < window.start_s - 1.5                  # two windows back
    # evenly spread: each within a slot and a frame of 8 evenly spaced times over the 3 s
    evenly = np.linspace(window.end_s - 3.0, window.end_s, 8)
    assert np.abs(np.array(times) - evenly).max() <= slot + 0.1
    stage = load_stage(Settings.load({
        "profile": "facellava", "facellava_checkpoint": str(checkpoint),
        "facellava_tasks": "expression,age", "facellava_max_new_tokens": NEW_TOKENS}))
    stage.answer([(window, None)])
    video, image = submitted
    model = load_facellava(checkpoint, dtype=torch.float32)
    middle = window.samples[len(window.samples) // 2]
    with torch.inference_mode():
        for request, frames, kind in ((video, picked, "video"), (image, [middle], "image")):
            crops = np.concatenate([s.chips.square for s in frames])
            marks = np.concatenate([s.chips.square_landmarks for s in frames])
            torch.testing.assert_close(request.visual,
                                       reference_visual(model, crops, marks, kind),
                                       rtol=1e-5, atol=1e-5)


def test_a_zero_video_window_gives_the_windows_own_frames(checkpoint, track_windows,
                                                          submitted):
    """``facellava_video_window_s=0``: the video question gets 8 frames of the window's own 10
    (the picks before the setting existed); the image question's tokens are those it gets
    with a 3 s video window (the same window, the same middle frame)."""
    own, reaching = track_windows[0.0][3], track_windows[3.0][3]
    assert own.clip == () and reaching.clip
    assert [s.time_s for s in own.samples] == [s.time_s for s in reaching.samples]
    assert video_frames(own) == [own.samples[i] for i in VIDEO_PICKS]
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression,age", "facellava_max_new_tokens": NEW_TOKENS}
    load_stage(Settings.load(base)).answer([(own, None), (reaching, None)])
    own_video, own_image, reaching_video, reaching_image = submitted
    model = load_facellava(checkpoint, dtype=torch.float32)
    crops = np.concatenate([own.samples[i].chips.square for i in VIDEO_PICKS])
    marks = np.concatenate([own.samples[i].chips.square_landmarks for i in VIDEO_PICKS])
    with torch.inference_mode():
        want = reference_visual(model, crops, marks, "video")
    torch.testing.assert_close(own_video.visual, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(reaching_video.visual, own_video.visual, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(reaching_image.visual, own_image.visual, rtol=0, atol=0)


def test_deepfake_sees_8_frames_and_attributes_and_action_units_the_middle_frame(
        checkpoint, track_windows, submitted):
    """The three tasks the chain test does not ask, about a window without a longer clip:
    the deepfake question gets the visual tokens of the window's 8 reference-picked frames
    (video form, 8 x 257 placeholders), the attributes and action-unit questions those of
    its middle frame (image form, 256), each equal to the reference path's tokens."""
    window = track_windows[0.0][3]
    load_stage(Settings.load({
        "profile": "facellava", "facellava_checkpoint": str(checkpoint),
        "facellava_tasks": "deepfake,attributes,action_units",
        "facellava_max_new_tokens": NEW_TOKENS})).answer([(window, None)])
    assert [r.request_id.rsplit("/", 1)[1] for r in submitted] == \
        ["deepfake", "attributes", "action_units"]
    model = load_facellava(checkpoint, dtype=torch.float32)
    with torch.inference_mode():
        for request, picks, kind in zip(submitted, (VIDEO_PICKS, IMAGE_PICKS, IMAGE_PICKS),
                                        ("video", "image", "image")):
            assert request.prompt_ids.count(PLACEHOLDER) == len(picks) * TOKENS_PER_FRAME[kind]
            crops = np.concatenate([window.samples[i].chips.square for i in picks])
            marks = np.concatenate([window.samples[i].chips.square_landmarks for i in picks])
            torch.testing.assert_close(request.visual,
                                       reference_visual(model, crops, marks, kind),
                                       rtol=1e-5, atol=1e-5)


def test_remote_llm_tier_gives_the_same_answers(checkpoint, window):
    """With ``llm_endpoint`` set, the vision worker loads no LLM: it splices the visual tokens
    into prompt embeddings and sends them to an OpenAI-compatible server (here facestream's
    own, serving the checkpoint's LLM); the answers equal the in-process engine's.  The two
    video tasks hand the in-process engine one visual-token tensor, so it prefills the
    window's prefix (system prompt, 8 x 257 placeholders) once and copies it into the second
    task's slot; the server gets separate prompt embeddings and prefills both in full."""
    from facestream.llm.server import LLMServer

    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression,deepfake", "facellava_max_new_tokens": NEW_TOKENS}
    stage = load_stage(Settings.load(base))
    local = stage.answer([(window, None)])
    assert stage.stats["shared_prefix_tokens"] > 8 * 257
    model = load_facellava(checkpoint, dtype=torch.float32)
    with LLMServer(model.llm, model.tokenizer, max_batch=4, max_seq_len=2560, port=0) as server:
        remote_stage = load_stage(Settings.load({**base, "llm_endpoint": server.url}))
        remote = remote_stage.answer([(window, None)])
        assert server.stats["tokens"] > 0 and server.stats["shared_prefix_tokens"] == 0
    assert remote[0].fields["answers"] == local[0].fields["answers"]


@pytest.mark.slow
def test_onnx_runtime_vision_backend_gives_the_same_answers(checkpoint, window, tmp_path):
    """``facellava_vision_backend=onnxruntime`` exports the vision path once into the engine
    cache and runs it there; the answers are the torch path's."""
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression,age", "facellava_max_new_tokens": NEW_TOKENS,
            "cache_dir": str(tmp_path)}
    torch_answer = load_stage(Settings.load(base)).answer([(window, None)])[0]
    onnx_stage = load_stage(Settings.load({**base, "facellava_vision_backend": "onnxruntime"}))
    assert len(list((tmp_path / "engines").glob("facellava-vision-*.onnx"))) == 2   # both towers
    onnx_answer = onnx_stage.answer([(window, None)])[0]
    assert onnx_answer.fields["answers"] == torch_answer.fields["answers"]


@pytest.mark.parametrize("texts, expected", [
    ({"expression": "The person's expression clearly indicates fear. Her eyes are wide open."},
     {"expression": {"label": "fear"}}),
    ({"expression": "Nothing to say.", "age": "She appears to be about 35 years old."},
     {"expression": {"label": None}, "attributes": {"age": {"years": 35.0, "low": 35.0, "high": 35.0}}}),
    ({"deepfake": "The video is authentic; there are no signs of manipulation."},
     {"deepfake": {"score": 0.0, "fake": False}}),
    # parse_age's documented table: "late twenties" -> (28, 27, 29), "between 30 and 40" ->
    # (35, 30, 40): bounds that differ from the years and from each other.
    ({"age": "She is in her late twenties."},
     {"attributes": {"age": {"years": 28.0, "low": 27.0, "high": 29.0}}}),
    ({"age": "He is likely between 30 and 40, judging by the wrinkles."},
     {"attributes": {"age": {"years": 35.0, "low": 30.0, "high": 40.0}}}),
])
def test_answers_become_event_fields(texts, expected):
    """Each asked task's fields, the age with its bounds; tasks not asked add nothing."""
    assert answer_fields(texts) == expected


@pytest.mark.slow
def test_analyze_with_the_facellava_profile_writes_valid_events(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run_cli("analyze", "sample:WolfgangLanger_Pexels.mp4", "--out", str(out),
                     "--fps", "5", "--profile", "facellava", "--checkpoint", str(checkpoint),
                     "--tasks", "expression,action_units,attributes,age,deepfake",
                     env={"FACESTREAM_FACELLAVA_MAX_NEW_TOKENS": str(NEW_TOKENS)})
    assert result.returncode == 0, result.stderr
    evs = read_events(out / "events.jsonl")
    analysis = [e for e in evs if e["type"] == events.FACE_ANALYSIS]
    assert len(analysis) >= 15
    check_events_file(out / "events.jsonl")
    fresh = [e["data"] for e in analysis if not e["data"]["description_reused"]]
    assert fresh and fresh[0]["description_trigger"] == "new_track"
    for data in (e["data"] for e in analysis):
        assert data["model"]["profile"] == "facellava"
        assert set(data["answers"]) == {"expression", "action_units", "attributes", "age",
                                        "deepfake"}
        assert data["description"] == data["answers"]["expression"]
        assert data["action_units"]["method"] == "model"
        assert len(data["expression"]["scores"]) == 7       # the cheap head's, kept
    # the video tasks looked back over the default 3 s, and the events say from where
    windows = [e["data"]["window"] for e in analysis]
    assert "clip_start_s" not in windows[0]                 # the track's first window
    back = [w for w in windows if "clip_start_s" in w]
    assert back and all(w["end_s"] - 3 < w["clip_start_s"] < w["start_s"] for w in back)
    reused = [e["data"] for e in analysis if e["data"]["description_reused"]]
    for data in reused:
        source = next(f for f in reversed(fresh)
                      if f["window"]["start_s"] == data["description_from_s"])
        assert data["answers"] == source["answers"]


def test_towers_given_on_the_command_line_are_used(tmp_path):
    """A checkpoint whose config names the towers by their hub ids (as the released one does):
    without ``--image-tower`` / ``--video-tower`` it is a one-line error naming them; with
    them, pointing at local tower directories, the run writes the profile's answers."""
    def hub_ids(config: dict) -> None:
        config["mm_image_tower"] = "LanguageBind/LanguageBind_Image"
        config["mm_video_tower"] = "LanguageBind/LanguageBind_Video_merge"

    released = write_tiny_checkpoint(tmp_path / "released", cross_attn_type="masked",
                                     tokenizer="sentencepiece", edit_config=hub_ids)
    args = ["analyze", "sample:single_face.jpg", "--profile", "facellava", "--checkpoint",
            str(released), "--tasks", "expression,age"]
    env = {"FACESTREAM_FACELLAVA_MAX_NEW_TOKENS": str(NEW_TOKENS)}
    refused = run_cli(*args, "--out", str(tmp_path / "refused"), env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "facellava_image_tower" in lines[0], refused.stderr
    out = tmp_path / "out"
    result = run_cli(*args, "--out", str(out), "--image-tower",
                     str(released / "LanguageBind_Image"), "--video-tower",
                     str(released / "LanguageBind_Video_merge"), env=env)
    assert result.returncode == 0, result.stderr
    analysis = [e["data"] for e in read_events(out / "events.jsonl")
                if e["type"] == events.FACE_ANALYSIS]
    assert analysis and set(analysis[0]["answers"]) == {"expression", "age"}


@pytest.mark.parametrize("args, message", [
    (["--profile", "facellava"], "needs facellava_checkpoint"),
    (["--profile", "facellava", "--checkpoint", "/nonexistent/facellava"], "/nonexistent/facellava"),
    (["--profile", "facellava", "--checkpoint", "CKPT", "--tasks", "expression,mood"],
     "facellava_tasks"),
])
def test_bad_facellava_settings_are_one_line_errors(args, message, checkpoint, tmp_path):
    args = [str(checkpoint) if a == "CKPT" else a for a in args]
    result = run_cli("analyze", "sample:single_face.jpg", "--out", str(tmp_path), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_the_quantization_setting_reaches_the_loader(checkpoint, monkeypatch):
    """``facellava_quantization=nf4`` asks the loader for NF4 (here: bitsandbytes hidden, so
    the loader's one-line refusal); ``none`` loads in --dtype."""
    import importlib.util

    from facestream.encoder.facellava import checkpoint as checkpoint_module
    from facestream.errors import AssetError

    real = importlib.util.find_spec
    monkeypatch.setattr(checkpoint_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression", "facellava_max_new_tokens": NEW_TOKENS}
    with pytest.raises(AssetError, match="bitsandbytes not installed"):
        load_stage(Settings.load({**base, "facellava_quantization": "nf4"}))
    assert load_stage(Settings.load({**base, "facellava_quantization": "none"})) is not None
