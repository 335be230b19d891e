"""Loading tiny released-layout Face-LLaVA checkpoints (tests/tiny_facellava.py), CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from facestream.encoder.facellava import checkpoint as checkpoint_module
from facestream.encoder.facellava.checkpoint import (FUSION_PREFIXES, llama_config,
                                                     load_facellava)
from facestream.encoder.facellava.tokenizer import SentencePieceTokenizer
from facestream.errors import AssetError, ConfigError
from tests.tiny_facellava import read_state, tiny_config, write_tiny_checkpoint

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One simple-variant safetensors checkpoint with towers, shared by read-only tests."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "facellava")


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_facellava(tiny, dtype=torch.float32)


def _renamed(old: str, new: str):
    def edit(state):
        state[new] = state.pop(old)
    return edit


# ---- round trip -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, shards, cross_attn_type", [
    ("safetensors", 1, "simple"),
    ("bin", 1, "masked"),
    ("safetensors", 3, "masked"),
    ("bin", 2, "simple"),
])
def test_every_tensor_round_trips(tmp_path, fmt, shards, cross_attn_type):
    path = write_tiny_checkpoint(tmp_path / "ckpt", fmt=fmt, shards=shards,
                                 cross_attn_type=cross_attn_type)
    written = read_state(path)
    model = load_facellava(path, dtype=torch.float32)
    llm = model.llm.state_dict()
    fusion = {"model." + k: v for k, v in model.fusion.state_dict().items()}
    assert set(llm) | set(fusion) == set(written)
    for key, tensor in {**llm, **fusion}.items():
        assert torch.equal(tensor, written[key]), key


def test_llm_matches_a_llama_built_from_the_same_fields(tiny, loaded):
    """Logits equal those of a LlamaForCausalLM built directly from config.json's fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((tiny / "config.json").read_text())
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
              "max_position_embeddings", "tie_word_embeddings")
    reference = LlamaForCausalLM(LlamaConfig(**{k: config[k] for k in fields})).eval()
    written = read_state(tiny)
    reference.load_state_dict({k: written[k] for k in reference.state_dict()})
    ids = loaded.tokenizer("A chat between a curious human", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.llm(ids).logits, reference(ids).logits,
                                   rtol=1e-5, atol=1e-5)


def test_tokenizer_and_embeddings_agree(loaded):
    assert len(loaded.tokenizer) == loaded.llm.config.vocab_size == loaded.config["vocab_size"]


def test_vision_paths_from_config_tower_paths(loaded):
    video, image = loaded.vision_path("video"), loaded.vision_path("image")
    with torch.no_grad():
        assert video(torch.randn(1, 3, 8, 224, 224), torch.rand(1, 8, 136)).shape == (
            1, 8 * 257, 64)
        assert image(torch.randn(1, 3, 224, 224), torch.rand(1, 136)).shape == (1, 256, 64)
    assert video.fusion is image.fusion is loaded.fusion


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_everywhere(tiny, dtype):
    model = load_facellava(tiny, dtype=dtype)
    for module in (model.llm, model.fusion, model.image_tower, model.video_tower):
        assert {p.dtype for p in module.parameters()} == {dtype}


def test_vision_only_load_skips_the_llm(tiny, monkeypatch):
    """``load_llm=False``: no LLM tensor is read out of the weights file, and everything the
    vision worker needs is there, equal to what the files hold: the fusion weights, both
    towers' weights and the checkpoint's tokenizer (prompts are built with it)."""
    import safetensors
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    read: list[tuple[Path, str]] = []         # (file, key) of every tensor read
    real_open = safetensors.safe_open

    class RecordingOpen:
        def __init__(self, filename, *args, **kwargs):
            self._path = Path(filename).resolve()
            self._file = real_open(filename, *args, **kwargs)

        def __enter__(self):
            self._handle = self._file.__enter__()
            return self

        def __exit__(self, *exc):
            return self._file.__exit__(*exc)

        def keys(self):
            return self._handle.keys()

        def get_tensor(self, key):
            read.append((self._path, key))
            return self._handle.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", RecordingOpen)
    model = load_facellava(tiny, dtype=torch.float32, load_llm=False)
    monkeypatch.undo()

    written = read_state(tiny)
    fusion_keys = {k for k in written if k.startswith(FUSION_PREFIXES)}
    llm_keys = set(written) - fusion_keys
    weights = (tiny / "model.safetensors").resolve()
    from_checkpoint = {key for path, key in read if path == weights}
    # The recorder saw the checkpoint being read (else the next line would prove nothing).
    assert from_checkpoint == fusion_keys
    assert not from_checkpoint & llm_keys
    assert model.llm is None

    fusion = {"model." + k: v for k, v in model.fusion.state_dict().items()}
    assert set(fusion) == fusion_keys
    for key in fusion_keys:
        assert torch.equal(fusion[key], written[key]), key

    config = json.loads((tiny / "config.json").read_text())
    for kind, tower in (("image", model.image_tower), ("video", model.video_tower)):
        on_disk = load_file(str(Path(config[f"mm_{kind}_tower"]) / "model.safetensors"))
        state = tower.state_dict()
        assert state and set(state) <= set(on_disk), kind
        for key, value in state.items():
            assert torch.equal(value, on_disk[key]), (kind, key)

    reference = AutoTokenizer.from_pretrained(str(tiny), local_files_only=True)
    text = "A chat between a curious human and an artificial intelligence assistant."
    assert model.tokenizer(text).input_ids == reference(text).input_ids
    assert len(model.tokenizer) == len(reference) == config["vocab_size"]


def test_explained_extra_keys_are_accepted(tmp_path):
    """Old transformers' rotary buffers and tower copies inside the checkpoint are skipped."""
    def add_tower_copy(state):
        state["model.video_tower.video_tower.vision_model.pre_layrnorm.weight"] = torch.ones(32)
    path = write_tiny_checkpoint(tmp_path / "ckpt", rotary_buffers=True, edit_state=add_tower_copy)
    model = load_facellava(path, dtype=torch.float32)
    assert not any("inv_freq" in k for k in model.llm.state_dict())


# ---- bad checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("edit, named", [
    (_renamed("model.landmarks_cross_attn.linear_proj.bias",
              "model.landmarks_cross_attn.linear_proj.b"),
     ["model.landmarks_cross_attn.linear_proj.bias", "model.landmarks_cross_attn.linear_proj.b"]),
    (_renamed("model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.upproj.weight"),
     ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.upproj.weight"]),
    (_renamed("lm_head.weight", "model.lm_head.weight"), ["model.lm_head.weight"]),
    (lambda s: s.__setitem__("model.vision_resampler.weight", torch.zeros(4)),
     ["model.vision_resampler.weight"]),
    (lambda s: s.pop("model.norm.weight"), ["model.norm.weight"]),
    (lambda s: s.__setitem__("model.norm.weight", torch.zeros(65)), ["model.norm.weight"]),
])
def test_key_mismatches_are_named(tmp_path, edit, named):
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False, edit_state=edit)
    with pytest.raises(AssetError) as err:
        load_facellava(path, dtype=torch.float32, image_tower=str(tmp_path),
                       video_tower=str(tmp_path))
    message = str(err.value)
    assert all(key in message for key in named), message
    assert "\n" not in message


def _drop(name):
    return lambda path: (path / name).unlink()


def _set_model_type(path):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "clip"}))


def _drop_shard(path):
    next(path.glob("model-00002-of-*.safetensors")).unlink()


def _broken_sentencepiece(path):
    (path / "tokenizer.json").unlink()
    (path / "tokenizer.model").write_bytes(b"not a sentencepiece model")


@pytest.mark.parametrize("damage, message", [
    (_drop("config.json"), "has no config.json"),
    (_broken_sentencepiece, "tokenizer.model is not a sentencepiece model"),
    (_drop("model.safetensors"), "has no weights"),
    (_set_model_type, "model_type 'clip'"),
    (_drop("tokenizer.json"), "tokenizer"),
])
def test_not_a_checkpoint(tmp_path, damage, message):
    path = write_tiny_checkpoint(tmp_path / "ckpt")
    damage(path)
    with pytest.raises(AssetError, match=message) as err:
        load_facellava(path, dtype=torch.float32)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_sentencepiece_only_checkpoint_loads_the_slow_tokenizer(tmp_path):
    """The release may carry only tokenizer.model (the reference reads it with use_fast=False):
    it loads through sentencepiece, and it wins over a tokenizer.json beside it."""
    path = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer="sentencepiece")
    assert sorted(p.name for p in path.glob("tokenizer*")) == ["tokenizer.model"]
    model = load_facellava(path, dtype=torch.float32)
    assert isinstance(model.tokenizer, SentencePieceTokenizer)
    assert len(model.tokenizer) == model.llm.config.vocab_size
    ids = model.tokenizer("hello there").input_ids
    assert ids[0] == model.llm.config.bos_token_id == 1
    with torch.no_grad():
        assert torch.isfinite(model.llm(torch.tensor([ids])).logits).all()
    (path / "tokenizer.json").write_text("{}")                # unreadable as a fast tokenizer
    again = load_facellava(path, dtype=torch.float32, load_llm=False)
    assert again.tokenizer("hello there").input_ids == ids


def test_missing_shard_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False, shards=2)
    _drop_shard(path)
    with pytest.raises(AssetError, match="model-00002-of-00002.safetensors"):
        load_facellava(path, dtype=torch.float32, image_tower=str(tmp_path),
                       video_tower=str(tmp_path))


def test_missing_directory_is_one_line(tmp_path):
    with pytest.raises(AssetError) as err:
        load_facellava(tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and "chaubeyG/FaceLLaVA" in message and "\n" not in message


@pytest.mark.parametrize("kind", ["image", "video"])
def test_hub_tower_name_asks_for_a_local_path(tmp_path, kind):
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False)
    local = {"image_tower": str(tmp_path), "video_tower": str(tmp_path)}
    local.pop(f"{kind}_tower")
    with pytest.raises(AssetError, match=f"facellava_{kind}_tower") as err:
        load_facellava(path, dtype=torch.float32, **local)
    assert "LanguageBind/LanguageBind_" in str(err.value)


def test_tower_of_the_wrong_width(tmp_path, tiny):
    config = json.loads((tiny / "config.json").read_text())
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False, mm_hidden=48)
    with pytest.raises(AssetError, match="mm_hidden_size is 48"):
        load_facellava(path, dtype=torch.float32, image_tower=config["mm_image_tower"],
                       video_tower=config["mm_video_tower"])


@pytest.mark.parametrize("options, error", [
    ({"dtype": torch.int8}, ConfigError),
    ({"quantization": "int4"}, ConfigError),
    ({"grid": "yx"}, ConfigError),
])
def test_bad_options(tiny, options, error):
    with pytest.raises(error):
        load_facellava(tiny, **options)


# ---- config mapping and quantization --------------------------------------------------------

@pytest.mark.parametrize("change, rope", [
    ({}, {"rope_type": "default", "rope_theta": 10000.0}),
    ({"rope_theta": 500000.0}, {"rope_type": "default", "rope_theta": 500000.0}),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}},
     {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
])
def test_llama_config_maps_legacy_rope_fields(change, rope):
    config = llama_config({**tiny_config(), **change})
    assert {k: config.rope_parameters[k] for k in rope} == rope
    assert config.rms_norm_eps == 1e-5 and config.tie_word_embeddings is False


def test_nf4_without_bitsandbytes_says_so(tiny, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(checkpoint_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(AssetError,
                       match="bitsandbytes not installed; install it or use dtype fp16"):
        load_facellava(tiny, quantization="nf4")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_BNB or not torch.cuda.is_available(),
                    reason="bitsandbytes not installed" if not HAS_BNB else "needs a CUDA device")
def test_nf4_quantizes_the_llm_linears(tiny):
    import bitsandbytes as bnb

    model = load_facellava(tiny, quantization="nf4", device="cuda")
    q_proj = model.llm.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.quant_type == "nf4"
    ids = torch.tensor([model.tokenizer("hello").input_ids], device="cuda")
    with torch.no_grad():
        assert torch.isfinite(model.llm(ids).logits).all()


# ---- tower feature selection from the checkpoint's config -----------------------------------

def _select(**fields):
    def edit(config):
        for key, value in fields.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
    return edit


def test_select_layer_and_feature_come_from_the_config(tmp_path):
    """mm_vision_select_layer picks the hidden state (here: -1, the last of the 2 tiny
    layers, against the default -2); "cls_patch" keeps the image tower's CLS row, which
    "patch" drops; the video tower keeps CLS either way.  Missing fields: -2 and "patch"."""
    pixels = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    outputs = {}
    for name, fields in (("released", {}),
                         ("missing", {"mm_vision_select_layer": None,
                                      "mm_vision_select_feature": None}),
                         ("last", {"mm_vision_select_layer": -1}),
                         ("cls", {"mm_vision_select_feature": "cls_patch"})):
        path = write_tiny_checkpoint(tmp_path / name, edit_config=_select(**fields))
        model = load_facellava(path, dtype=torch.float32, load_llm=False)
        assert model.video_tower.num_tokens == 257
        with torch.no_grad():
            outputs[name] = model.image_tower(pixels)
        assert model.image_tower.config.layers_run == (2 if name == "last" else 1)
    assert outputs["released"].shape == (1, 256, 32)
    torch.testing.assert_close(outputs["missing"], outputs["released"], rtol=0, atol=0)
    assert not torch.allclose(outputs["last"], outputs["released"])
    assert outputs["cls"].shape == (1, 257, 32)
    torch.testing.assert_close(outputs["cls"][:, 1:], outputs["released"], rtol=0, atol=0)


@pytest.mark.parametrize("fields, message", [
    ({"mm_vision_select_layer": "penultimate"}, "mm_vision_select_layer 'penultimate'"),
    ({"mm_vision_select_layer": -9}, "select_layer must lie in [-3, 2]"),
    ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature 'cls'"),
])
def test_bad_select_fields_are_one_line(tmp_path, fields, message):
    path = write_tiny_checkpoint(tmp_path / "ckpt", edit_config=_select(**fields))
    with pytest.raises(AssetError) as err:
        load_facellava(path, dtype=torch.float32, load_llm=False)
    assert message in str(err.value) and "\n" not in str(err.value)
