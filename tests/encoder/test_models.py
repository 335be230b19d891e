"""The compact profile's nets on real photos with their real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facestream import assets
from facestream.encoder import action_units
from facestream.encoder.backends import OnnxBackend, TorchBackend
from facestream.encoder.expression import INPUT_NAME, OUTPUT_NAME, load_expression_net, preprocess
from facestream.errors import AssetError
from tests.helpers import analyze_in_process, read_events


def _only_face(models, sample, name, tmp_path):
    _, evs = analyze_in_process(sample(name), models, tmp_path)
    analysis = [ev["data"] for ev in evs if ev["type"] == "facestream.face.analysis"]
    assert len(analysis) == 1, f"{name}: expected one face, got {len(analysis)}"
    return analysis[0]


@pytest.mark.parametrize("photo, label", [
    ("0-f1-su-ph.jpg", "surprise"),
    ("0-f15-hao-ph.jpg", "happy"),
])
def test_posed_photos_get_their_expression(photo, label, models, sample, tmp_path):
    face = _only_face(models, sample, photo, tmp_path)
    assert face["expression"]["label"] == label, face["expression"]


@pytest.mark.parametrize("photo, gender", [
    ("0-f1-su-ph.jpg", "female"),
    ("0-f15-hao-ph.jpg", "female"),
    ("15-f13-anc-ph.jpg", "female"),
    ("45-m7-di-ph.jpg", "male"),
])
def test_gender_of_posed_photos(photo, gender, models, sample, tmp_path):
    face = _only_face(models, sample, photo, tmp_path)
    assert face["attributes"]["gender"]["label"] == gender
    age = face["attributes"]["age"]
    assert 10 <= age["low"] <= age["years"] <= age["high"] <= 70


def test_geometric_action_units_follow_the_posed_expression(models, sample, tmp_path):
    surprise = _only_face(models, sample, "0-f1-su-ph.jpg", tmp_path / "s")["action_units"]
    happy = _only_face(models, sample, "0-f15-hao-ph.jpg", tmp_path / "h")["action_units"]
    anger = _only_face(models, sample, "15-f13-anc-ph.jpg", tmp_path / "a")["action_units"]
    assert happy["AU12"] > surprise["AU12"] and happy["AU12"] >= 2       # lip corners up
    assert surprise["AU5"] > happy["AU5"] and surprise["AU25"] >= 2      # eyes wide, lips apart
    assert anger["AU4"] > happy["AU4"] and anger["AU4"] > surprise["AU4"]  # brows lowered
    for aus in (surprise, happy, anger):
        assert set(action_units.GEOMETRIC_AUS) <= {k for k, v in aus.items() if v is not None}
        assert aus["AU9"] is None and aus["AU6"] is None


def test_onnx_export_matches_torch(settings, face_analyzer, sample):
    from facestream.scenes import load_rgb

    net = load_expression_net(assets.require(settings.cache_dir, "models/emotion_model.hdf5"))
    onnx = OnnxBackend(assets.require(settings.cache_dir, assets.EXPRESSION_ONNX))
    torch_net = TorchBackend(net, input_names=(INPUT_NAME,), output_names=(OUTPUT_NAME,))
    chips = face_analyzer(load_rgb(sample("multi_face.jpg"))).chips.expression
    x = preprocess(chips)                                  # a batch of 5 real faces
    with torch.no_grad():
        reference = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx.run({INPUT_NAME: x})[OUTPUT_NAME], reference, atol=1e-5)
    np.testing.assert_allclose(torch_net.run({INPUT_NAME: x})[OUTPUT_NAME], reference, atol=1e-6)
    assert np.allclose(reference.sum(1), 1, atol=1e-5)


def test_torch_backend_gives_the_same_events(settings, sample, tmp_path):
    from facestream.config import Settings
    from facestream.workers.compose import Models

    results = {}
    for backend in ("onnxruntime", "torch"):
        models = Models.load(Settings.load({"describe": False, "encoder_backend": backend}))
        face = _only_face(models, sample, "0-f15-hao-ph.jpg", tmp_path / backend)
        results[backend] = face["expression"]["scores"]
    for label, score in results["onnxruntime"].items():
        assert results["torch"][label] == pytest.approx(score, abs=1e-3)


def test_the_workers_onnx_sessions_sleep_between_runs(models):
    """ONNX Runtime's pool threads must not busy-wait after a run: on a worker's two cores
    that spin took the CPU MediaPipe and the decoder needed (docs/PERFORMANCE.md)."""
    encoder = models.analyzer.encoder
    for net in (encoder._expression, encoder._age, encoder._gender):
        options = net._session.get_session_options()
        for pool in ("intra_op", "inter_op"):
            assert options.get_session_config_entry(f"session.{pool}.allow_spinning") == "0"


def test_corrupt_model_file_is_reported_with_the_fix(tmp_path):
    bad = tmp_path / "emotion_model.hdf5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(AssetError, match="models pull --force"):
        load_expression_net(bad)
    bad_onnx = tmp_path / "age.onnx"
    bad_onnx.write_bytes(b"\x00" * 100)
    with pytest.raises(AssetError, match="cannot be loaded.*models pull --force"):
        OnnxBackend(bad_onnx)


def test_descriptions_are_written_from_the_results(models_with_llm, sample, tmp_path):
    face = _only_face(models_with_llm, sample, "0-f15-hao-ph.jpg", tmp_path)
    assert face["description_follows"] and face["description"] is None
    described = [ev["data"] for ev in read_events(tmp_path / "events.jsonl")
                 if ev["type"] == "facestream.face.description"]
    assert [d["window"] for d in described] == [face["window"]]
    text = described[0]["description"]
    assert isinstance(text, str) and 3 <= len(text.split()) <= 60
    assert "happy" in text.lower() or "smil" in text.lower(), text
    assert face["description_reused"] is False
    assert face["model"]["components"]["description"].startswith("SmolLM2-135M")


def test_descriptions_through_the_engine_equal_hf_generate(settings):
    """The compact describer on the torch runtime batches its requests in the torch engine
    (shared system-prompt prefix, sentence-end stop strings); each text is what HF
    ``generate`` writes alone.  (The llama.cpp runtime against this: tests/llm.)"""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from facestream.llm.smollm import SmolDescriber, _trim

    describer = SmolDescriber(settings.cache_dir / assets.SMOLLM_DIR, runtime="torch",
                              max_new_tokens=settings.description_max_tokens)
    facts = ["a woman, about 29 years old; expression: happy (88%)",
             "a man, about 41 years old; expression: surprise (61%); action units: AU1 2.3, AU2 2.8",
             "a woman, about 35 years old; expression: neutral (70%)"]
    texts = describer.describe(facts)
    model_dir = settings.cache_dir / assets.SMOLLM_DIR
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    for line, text in zip(facts, texts):
        ids = tokenizer(describer.prompt(line), return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=settings.description_max_tokens,
                                 do_sample=False)
        raw = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
        ends = [i for i, ch in enumerate(raw) if ch in ".!?\n"]
        assert text == _trim(raw[:ends[0] + 1] if ends else raw)
