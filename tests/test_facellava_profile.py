"""The facellava profile end to end, on a tiny random Face-LLaVA of the exact architecture
written in the released checkpoint layout (the 7B checkpoint cannot be fetched here), over
real video: worker stages -> vision path with landmarks -> engine -> parsers -> events."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from facestream import events
from facestream.config import Settings
from facestream.encoder.facellava import load_facellava
from facestream.encoder.facellava.preprocess import clip_pixels, uniform_indices
from facestream.ingest.sources import parse_source
from facestream.retry import Backoff
from facestream.llm.prompts import STOP, build_prompt, tokenize_prompt
from facestream.workers.decode import Decoder
from facestream.workers.facellava import IMAGE_TOKEN_ID, answer_fields, load_stage
from facestream.workers.faces import FaceAnalyzer
from facestream.workers.windows import FaceSample, FaceWindow
from tests.conftest import check_events_file, read_events, run_cli
from tests.tiny_facellava import write_tiny_checkpoint

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("facellava") / "tiny-facellava",
                                 cross_attn_type="masked")


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


def test_answers_are_what_hf_generate_gives_for_the_same_visual_tokens(checkpoint, window):
    """The stage's whole chain — 8 frames picked, crops preprocessed, landmarks passed,
    2,056 visual tokens spliced at the placeholders, the engine's greedy decode — equals a
    direct computation with the vision path and HF ``generate`` on ``inputs_embeds``."""
    settings = Settings.load({"profile": "facellava", "facellava_checkpoint": str(checkpoint),
                              "facellava_tasks": "expression,age",
                              "facellava_max_new_tokens": NEW_TOKENS})
    stage = load_stage(settings)
    [answer] = stage.answer([(window, None)])

    model = load_facellava(checkpoint, dtype=torch.float32)
    picks = uniform_indices(len(window.samples), 8)
    for task, kind, frames in (("expression", "video", picks),
                               ("age", "image", [len(window.samples) // 2])):
        crops = np.concatenate([window.samples[i].chips.square for i in frames])
        marks = np.concatenate([window.samples[i].chips.square_landmarks for i in frames])
        pixels = torch.from_numpy(clip_pixels(crops, kind=kind))           # [F, 3, 224, 224]
        pixels = pixels.permute(1, 0, 2, 3)[None] if kind == "video" else pixels   # video [1, 3, 8, ..]
        path = model.vision_path(kind)
        with torch.inference_mode():
            visual = path(pixels, torch.from_numpy(marks)[None])[0]       # [N, hidden]
            ids = torch.tensor(tokenize_prompt(model.tokenizer, build_prompt(task, frames=len(frames)),
                                               image_token_id=IMAGE_TOKEN_ID,
                                               tokens_per_image=path.tokens_per_frame))
            assert int((ids == IMAGE_TOKEN_ID).sum()) == visual.shape[0] == len(frames) * path.tokens_per_frame
            embeds = model.llm.get_input_embeddings()(ids.clamp(min=0))
            embeds[ids == IMAGE_TOKEN_ID] = visual
            out = model.llm.generate(inputs_embeds=embeds[None], max_new_tokens=NEW_TOKENS,
                                     do_sample=False, attention_mask=torch.ones(1, len(ids)))
        expected = model.tokenizer.decode(out[0], skip_special_tokens=True).split(STOP)[0].strip()
        assert answer.fields["answers"][task] == expected, task
    assert answer.description == answer.fields["answers"]["expression"]


def test_remote_llm_tier_gives_the_same_answers(checkpoint, window):
    """With ``llm_endpoint`` set, the vision worker loads no LLM: it splices the visual tokens
    into prompt embeddings and sends them to an OpenAI-compatible server (here facestream's
    own, serving the checkpoint's LLM); the answers equal the in-process engine's."""
    from facestream.llm.server import LLMServer

    base = {"profile": "facellava", "facellava_checkpoint": str(checkpoint),
            "facellava_tasks": "expression,deepfake", "facellava_max_new_tokens": NEW_TOKENS}
    local = load_stage(Settings.load(base)).answer([(window, None)])
    model = load_facellava(checkpoint, dtype=torch.float32)
    with LLMServer(model.llm, model.tokenizer, max_batch=4, max_seq_len=2560, port=0) as server:
        remote_stage = load_stage(Settings.load({**base, "llm_endpoint": server.url}))
        remote = remote_stage.answer([(window, None)])
        assert server.stats["tokens"] > 0
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
])
def test_answers_become_event_fields(texts, expected):
    fields = answer_fields(texts)
    for key, value in expected.items():
        if key == "attributes":
            age = fields["attributes"]["age"]
            assert age["years"] == value["age"]["years"]
        else:
            assert fields[key] == value


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
    reused = [e["data"] for e in analysis if e["data"]["description_reused"]]
    for data in reused:
        source = next(f for f in reversed(fresh)
                      if f["window"]["start_s"] == data["description_from_s"])
        assert data["answers"] == source["answers"]


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
