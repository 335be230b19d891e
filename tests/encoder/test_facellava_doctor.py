"""`facestream facellava check`: the checkpoint doctor on tiny released-layout checkpoints.

Each damage is one a download really suffers (a tower not fetched, a shard missing, a
tensor renamed by a conversion script, a tensor saved in another dtype, a truncated file);
each must come out as exactly one problem line naming the thing and the fix, with exit 2.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from facestream.encoder.facellava.doctor import check_checkpoint, read_header
from facestream.errors import AssetError
from tests.helpers import run_cli
from tests.tiny_facellava import write_tiny_checkpoint

RENAMED = "model.layers.1.mlp.up_proj.weight"
CAST = "model.mm_projector.2.bias"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("doctor") / "ckpt", shards=2,
                                 tokenizer="sentencepiece")


def test_a_healthy_checkpoint_passes_through_the_cli(healthy):
    result = run_cli("facellava", "check", str(healthy))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("problem:")]
    assert lines[-1] == f"{healthy}: loads as Face-LLaVA"
    assert any("tokenizer.model (768 tokens, sentencepiece)" in line for line in lines)
    assert any(line.startswith("ok: video tower:") for line in lines)


def _rename(state):
    state[RENAMED.replace("up_proj", "upproj")] = state.pop(RENAMED)


def _cast(state):
    state[CAST] = state[CAST].double()


def _drop_shard(path):
    next(path.glob("model-00002-of-*.safetensors")).unlink()


def _drop_video_tower(path):
    shutil.rmtree(path / "LanguageBind_Video_merge")


def _truncate(path):
    shard = next(path.glob("model-00001-of-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-100])


@pytest.mark.parametrize("edit_state, damage, expected", [
    (None, _drop_video_tower, "video tower '{path}/LanguageBind_Video_merge' is not a local "
                              "directory: download LanguageBind/LanguageBind_Video_merge and "
                              "pass --video-tower DIR"),
    (None, _drop_shard, "shard model-00002-of-00002.safetensors (listed in "
                        "model.safetensors.index.json) is missing: download "
                        "model-00002-of-00002.safetensors again"),
    (_rename, None, f"tensor {RENAMED.replace('up_proj', 'upproj')} "
                    f"(model-0000"),
    (_cast, None, f"tensor {CAST} (model-0000"),
    (None, _truncate, "model-00001-of-00002.safetensors is truncated"),
])
def test_each_damage_is_one_problem_line(tmp_path, edit_state, damage, expected):
    path = write_tiny_checkpoint(tmp_path / "ckpt", shards=2, tokenizer="sentencepiece",
                                 edit_state=edit_state)
    if damage is not None:
        damage(path)
    report = check_checkpoint(path)
    assert len(report.problems) == 1, report.problems
    assert expected.format(path=path) in report.problems[0], report.problems[0]
    assert "\n" not in report.problems[0]


def test_a_broken_checkpoint_exits_2_through_the_cli(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "ckpt", shards=2, tokenizer="sentencepiece",
                                 edit_state=_rename)
    _drop_shard(path)
    result = run_cli("facellava", "check", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) in (1, 2) and "model-00002-of-00002.safetensors" in problems[0]
    assert result.stdout.splitlines()[-1] == f"{path}: {len(problems)} problem(s)"
    assert "Traceback" not in result.stderr


def test_renamed_key_and_wrong_dtype_say_what_to_fix(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "ckpt", tokenizer="sentencepiece",
                                 edit_state=lambda s: (_rename(s), _cast(s)))
    report = check_checkpoint(path)
    assert sorted(report.problems) == sorted([
        f"tensor {RENAMED.replace('up_proj', 'upproj')} (model.safetensors) should be named "
        f"{RENAMED}: rename it, or download the checkpoint again",
        f"tensor {CAST} (model.safetensors) is F64 while the others are F32: download the "
        "checkpoint again"])


@pytest.mark.parametrize("edit_config, expected", [
    (lambda c: c.update(vocab_size=700), "tokenizer.model holds 768 tokens but vocab_size is 700"),
    (lambda c: c.pop("cross_attn_type"), "lacks cross_attn_type"),
    (lambda c: c.update(hidden_size=48), "tensor(s) have shapes config.json does not describe"),
])
def test_config_problems(tmp_path, edit_config, expected):
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False, tokenizer="sentencepiece",
                                 edit_config=edit_config)
    report = check_checkpoint(path, image_tower=path, video_tower=path)
    assert any(expected in line for line in report.problems), report.problems
    assert all("\n" not in line for line in report.problems)


def test_an_unnamed_tower_and_a_missing_tokenizer(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "ckpt", towers=False, tokenizer="sentencepiece")
    (path / "tokenizer.model").unlink()
    report = check_checkpoint(path)
    assert [p.split(":")[0] for p in report.problems] == [
        f"{path} has no tokenizer (tokenizer.model or tokenizer.json)",
        "image tower 'LanguageBind/LanguageBind_Image' is not a local directory",
        "video tower 'LanguageBind/LanguageBind_Video_merge' is not a local directory"]


def test_headers_match_what_safetensors_reads(healthy):
    """The directly read header gives every tensor's dtype and shape as safetensors does."""
    from safetensors import safe_open

    shard = next(healthy.glob("model-00001-of-*.safetensors"))
    header = read_header(shard)
    with safe_open(str(shard), framework="pt") as f:
        assert sorted(header) == sorted(f.keys())
        for key in f.keys():
            tensor = f.get_tensor(key)
            assert header[key].shape == tuple(tensor.shape)
            assert header[key].dtype == {torch.float32: "F32"}[tensor.dtype]


def test_a_bin_checkpoint_is_read_without_loading(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "ckpt", fmt="bin", tokenizer="sentencepiece",
                                 edit_state=_cast)
    report = check_checkpoint(path)
    assert report.problems == [f"tensor {CAST} (pytorch_model.bin) is F64 while the others "
                               "are F32: download the checkpoint again"]


@pytest.mark.parametrize("content", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{}", b"x" * 20])
def test_garbage_is_not_a_safetensors_file(tmp_path, content):
    file = tmp_path / "model.safetensors"
    file.write_bytes(content)
    with pytest.raises(AssetError, match="model.safetensors is not a safetensors file"):
        read_header(file)


def test_not_a_directory_and_bad_config(tmp_path):
    assert check_checkpoint(tmp_path / "nowhere").problems[0].startswith(
        f"{tmp_path / 'nowhere'} is not a directory")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert "model_type 'clip' is not a LLaVA-LLaMA model" in check_checkpoint(tmp_path).problems[0]
