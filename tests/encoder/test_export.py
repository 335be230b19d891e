"""ONNX / TensorRT export, the engine cache and the runtime backends, each against torch.

Tolerances (max absolute difference from the torch module in fp32 on CPU):
* ONNX Runtime, CPU, fp32: ORT_ATOL = 1e-4; measured about 1e-6 on the expression net.
* ONNX Runtime CUDA and torch on CUDA: CUDA_ATOL = 5e-3.  Measured on an H200, torch CUDA
  vs CPU on the expression net: 1.1e-3 with cuDNN's default TF32 convolutions, 1.5e-6
  without; ONNX Runtime CUDA not measured (onnxruntime-gpu was not available).
* TensorRT fp16: TRT_FP16_ATOL = 2e-2 on softmax outputs (only measurable with TensorRT and a GPU).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from facestream import assets
from facestream.config import BatchProfile, Settings
from facestream.encoder import compact, export
from facestream.encoder.backends import (TENSORRT_HINT, OnnxBackend, TensorRTBackend, TorchBackend,
                                         compare_backends)
from facestream.encoder.export import EngineCache, export_onnx
from facestream.encoder.expression import (INPUT_NAME, OUTPUT_NAME, example_input,
                                           load_expression_net, preprocess)
from facestream.errors import AssetError, ConfigError, InputError
from tests.helpers import run_cli

ORT_ATOL = 1e-4
CUDA_ATOL = 5e-3
TRT_FP16_ATOL = 2e-2
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()
# Marks, not in-test skips, so a skipped test never loads its fixtures' models.
needs_tensorrt_gpu = pytest.mark.skipif(
    not (HAS_TENSORRT and HAS_CUDA),
    reason="tensorrt not installed" if not HAS_TENSORRT else "needs a CUDA device")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
needs_ort_cuda = pytest.mark.skipif(
    not (HAS_CUDA and "CUDAExecutionProvider" in ort.get_available_providers()),
    reason="needs onnxruntime-gpu and a CUDA device")


class TwoInOut(nn.Module):
    """A tiny net with two named inputs and two outputs, for the export and cache mechanics."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(5, 4)

    def forward(self, images: torch.Tensor, extra: torch.Tensor):
        # images: [B, 3, 8, 8], extra: [B, 5] -> mixed: [B, 4], probs: [B, 4]
        feat = self.norm(self.conv(images)).mean((2, 3))
        return feat + self.fc(extra), feat.softmax(-1)


TINY_OUT = ("mixed", "probs")


def tiny_inputs(batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"images": rng.standard_normal((batch, 3, 8, 8), np.float32),
            "extra": rng.standard_normal((batch, 5), np.float32)}


def as_torch(inputs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(x) for n, x in inputs.items()}


def tiny_torch(net: nn.Module) -> TorchBackend:
    return TorchBackend(net, input_names=("images", "extra"), output_names=TINY_OUT)


@pytest.fixture(scope="module")
def expression_net(settings):
    return load_expression_net(assets.require(settings.cache_dir, compact.EXPRESSION_HDF5))


@pytest.fixture(scope="module")
def face_chips(face_analyzer, sample):
    """[7, 1, 64, 64] preprocessed expression crops of seven real faces."""
    from facestream.scenes import load_rgb

    chips = [face_analyzer(load_rgb(sample(name))).chips.expression
             for name in ("multi_face.jpg", "0-f1-su-ph.jpg", "45-m7-di-ph.jpg")]
    x = preprocess(np.concatenate(chips))
    assert x.shape == (7, 1, 64, 64), x.shape
    return x


@pytest.fixture(scope="module")
def expression_onnx(expression_net, tmp_path_factory):
    return EngineCache(tmp_path_factory.mktemp("engines")).onnx(
        "expression", expression_net, example_input(), output_names=(OUTPUT_NAME,))


@pytest.fixture
def models_cache(settings, tmp_path):
    """A cache dir of our own whose models/ are the pulled ones (engines land in tmp_path)."""
    (tmp_path / "models").symlink_to(settings.cache_dir / "models")
    return tmp_path


# --- ONNX export -----------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 7])
def test_expression_net_on_onnxruntime_matches_torch_on_real_faces(
        batch, expression_net, expression_onnx, face_chips):
    reference = TorchBackend(expression_net, input_names=(INPUT_NAME,),
                             output_names=(OUTPUT_NAME,))
    candidate = OnnxBackend(expression_onnx.path)
    # exported with a batch of 2: other batch sizes prove the batch axis is dynamic
    inputs = {INPUT_NAME: face_chips[:batch]}
    agreement = compare_backends(reference, candidate, inputs)
    assert agreement.max_abs < ORT_ATOL, agreement
    assert candidate.run(inputs)[OUTPUT_NAME].shape == (batch, 7)


@pytest.mark.parametrize("dynamic, batch_dims", [(True, "batch"), (False, 2)])
def test_every_input_and_output_gets_the_batch_axis(dynamic, batch_dims, tmp_path):
    path = export_onnx(TwoInOut(), as_torch(tiny_inputs(2)), output_names=TINY_OUT,
                       path=tmp_path / "tiny.onnx", dynamic_batch=dynamic)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images", "extra"]
    assert [o.name for o in graph.output] == list(TINY_OUT)
    for value in [*graph.input, *graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        assert (first.dim_param or first.dim_value) == batch_dims, value.name
    batch = 3 if dynamic else 2
    agreement = compare_backends(tiny_torch(TwoInOut()), OnnxBackend(path), tiny_inputs(batch))
    assert agreement.max_abs < ORT_ATOL, agreement


def test_large_nets_keep_their_weights_in_one_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    path = export_onnx(TwoInOut(), as_torch(tiny_inputs(2)), output_names=TINY_OUT,
                       path=tmp_path / "tiny.onnx")
    assert sorted(os.listdir(tmp_path)) == ["tiny.onnx", "tiny.onnx.data"]
    agreement = compare_backends(tiny_torch(TwoInOut()), OnnxBackend(path), tiny_inputs(4))
    assert agreement.max_abs < ORT_ATOL, agreement


# --- the cache -------------------------------------------------------------------------

@pytest.fixture
def export_calls(monkeypatch):
    calls = []
    real = export.export_onnx

    def counted(*args, **kwargs):
        calls.append(kwargs["path"])
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "export_onnx", counted)
    return calls


def test_cache_reuses_an_export_and_rebuilds_when_weights_change(tmp_path, export_calls):
    cache, net, example = EngineCache(tmp_path), TwoInOut(), as_torch(tiny_inputs(2))
    first = cache.onnx("tiny", net, example, output_names=TINY_OUT)
    mtime = first.path.stat().st_mtime_ns
    again = cache.onnx("tiny", net, example, output_names=TINY_OUT)
    assert (first.built, again.built) == (True, False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    assert len(export_calls) == 1

    with torch.no_grad():
        net.fc.bias.add_(0.5)
    changed = cache.onnx("tiny", net, example, output_names=TINY_OUT)
    assert changed.built and changed.path != first.path and first.path.is_file()
    assert len(export_calls) == 2
    assert changed.path.name.startswith(f"tiny-{changed.key[:16]}-onnx-opset17")
    agreement = compare_backends(tiny_torch(net), OnnxBackend(changed.path), tiny_inputs(3))
    assert agreement.max_abs < ORT_ATOL, agreement


def test_cache_key_follows_input_shapes_not_batch(tmp_path):
    net = TwoInOut()
    key = export.module_key(net, as_torch(tiny_inputs(2)), output_names=TINY_OUT)
    assert export.module_key(net, as_torch(tiny_inputs(5)), output_names=TINY_OUT) == key
    wider = {"images": torch.zeros(2, 3, 16, 16), "extra": torch.zeros(2, 5)}
    assert export.module_key(net, wider, output_names=TINY_OUT) != key


def _garbage_same_size(path):
    path.write_bytes(b"\0" * path.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _drop_stamp(path):
    path.with_name(path.name + ".sha256").unlink()


@pytest.mark.parametrize("damage", [_garbage_same_size, _truncate, _drop_stamp])
def test_a_damaged_cached_artefact_is_rebuilt_with_a_warning(damage, tmp_path, export_calls,
                                                             caplog):
    cache, net, example = EngineCache(tmp_path), TwoInOut(), as_torch(tiny_inputs(2))
    first = cache.onnx("tiny", net, example, output_names=TINY_OUT)
    damage(first.path)
    with caplog.at_level(logging.WARNING, logger="facestream.encoder.export"):
        again = cache.onnx("tiny", net, example, output_names=TINY_OUT)
    assert again.built and again.path == first.path and len(export_calls) == 2
    assert "rebuilding" in caplog.text
    agreement = compare_backends(tiny_torch(net), OnnxBackend(again.path), tiny_inputs(3))
    assert agreement.max_abs < ORT_ATOL, agreement


def test_force_rebuilds_a_good_artefact(tmp_path, export_calls):
    cache, net, example = EngineCache(tmp_path), TwoInOut(), as_torch(tiny_inputs(2))
    cache.onnx("tiny", net, example, output_names=TINY_OUT)
    assert cache.onnx("tiny", net, example, output_names=TINY_OUT, force=True).built
    assert len(export_calls) == 2


# --- backends and their comparison -----------------------------------------------------

class _Fixed:
    """A stand-in backend that returns given arrays."""

    name = "fixed"
    input_names = ("images", "extra")

    def __init__(self, outputs):
        self._outputs = outputs
        self.output_names = tuple(outputs)

    def run(self, inputs):
        return self._outputs


def test_compare_backends_measures_the_largest_difference():
    reference = tiny_torch(TwoInOut())
    want = reference.run(tiny_inputs(3))
    shifted = {"mixed": want["mixed"] + 0.25, "probs": want["probs"]}
    agreement = compare_backends(reference, _Fixed(shifted), tiny_inputs(3))
    assert agreement.max_abs == pytest.approx(0.25, abs=1e-6)
    scale = max(np.abs(want["mixed"]).max(), 1e-12)
    assert agreement.max_rel == pytest.approx(0.25 / scale, rel=1e-4)


@pytest.mark.parametrize("outputs, message", [
    (lambda want: {"mixed": want["mixed"]}, "outputs"),
    (lambda want: {"mixed": want["mixed"][:2], "probs": want["probs"]}, "shape"),
])
def test_compare_backends_rejects_outputs_that_do_not_line_up(outputs, message):
    reference = tiny_torch(TwoInOut())
    candidate = _Fixed(outputs(reference.run(tiny_inputs(3))))
    with pytest.raises(AssetError, match=message):
        compare_backends(reference, candidate, tiny_inputs(3))


@pytest.mark.parametrize("inputs, message", [
    ({"images": np.zeros((2, 3, 8, 8), np.float32)}, "missing \\['extra'\\]"),
    ({"images": np.zeros((2, 3, 8, 8), np.float32), "extra": np.zeros((3, 5), np.float32)},
     "share the batch axis"),
])
@pytest.mark.parametrize("make", ["torch", "onnxruntime"])
def test_backends_reject_inputs_that_do_not_fit(make, inputs, message, tmp_path):
    net = TwoInOut()
    if make == "torch":
        backend = tiny_torch(net)
    else:
        backend = OnnxBackend(export_onnx(net, as_torch(tiny_inputs(2)), output_names=TINY_OUT,
                                          path=tmp_path / "tiny.onnx"))
    with pytest.raises(InputError, match=message):
        backend.run(inputs)


@pytest.mark.slow
def test_compiled_torch_backend_matches_eager():
    net = TwoInOut()
    compiled = TorchBackend(net, input_names=("images", "extra"), output_names=TINY_OUT,
                            compiled=True)
    for batch in (2, 5):
        agreement = compare_backends(tiny_torch(net), compiled, tiny_inputs(batch))
        assert agreement.max_abs < ORT_ATOL, agreement


# --- settings --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1,8,32", BatchProfile(1, 8, 32)),
    ("1,32", BatchProfile(1, 32, 32)),
    ("8", BatchProfile(8, 8, 8)),
    ("0,4", ConfigError),
    ("8,4", ConfigError),
    ("1,64,32", ConfigError),
    ("a,b", ConfigError),
    ("1,2,3,4", ConfigError),
    ("", ConfigError),
])
def test_batch_profile_parsing(text, expected):
    if isinstance(expected, BatchProfile):
        assert BatchProfile.parse(text) == expected
    else:
        with pytest.raises(expected, match="1 <= min|encoder_batch_sizes"):
            BatchProfile.parse(text)


def test_settings_accept_tensorrt_and_check_the_batch_sizes():
    s = Settings.load({"encoder_backend": "tensorrt"}, environ={})
    assert (s.encoder_batch_sizes, s.encoder_precision) == ("1,8,32", "fp16")
    with pytest.raises(ConfigError, match="encoder_batch_sizes='32,x'"):
        Settings.load({"encoder_batch_sizes": "32,x"}, environ={})
    with pytest.raises(ConfigError, match="encoder_precision='int8': must be one of fp16, fp32"):
        Settings.load({"encoder_precision": "int8"}, environ={})


# --- TensorRT and CUDA (skip where absent) ---------------------------------------------

@pytest.mark.gpu
@needs_tensorrt_gpu
def test_tensorrt_engine_matches_torch_over_the_profile(expression_net, expression_onnx,
                                                        face_chips, tmp_path):
    engine = EngineCache(tmp_path).tensorrt("expression", expression_onnx, fp16=True,
                                            profile=BatchProfile(1, 4, 8))
    assert engine.path.suffix == ".plan" and "-fp16-b1-4-8" in engine.path.name
    trt_net = TensorRTBackend(engine.path)
    reference = TorchBackend(expression_net, input_names=(INPUT_NAME,),
                             output_names=(OUTPUT_NAME,))
    many = np.concatenate([face_chips] * 3)            # 21 rows: split into pieces of 8
    for x in (face_chips[:1], face_chips, many):
        agreement = compare_backends(reference, trt_net, {INPUT_NAME: x})
        assert agreement.max_abs < TRT_FP16_ATOL, (len(x), agreement)


@pytest.mark.gpu
@needs_tensorrt_gpu
def test_compact_engines_match_their_references(models_cache):
    built = compact.export_artefacts(models_cache, backend="tensorrt", fp16=True,
                                     profile=BatchProfile(1, 8, 32))
    assert set(built) == {"expression", "age", "gender"}
    for name, art in built.items():
        agreement = compare_backends(compact.reference_backend(models_cache, name),
                                     TensorRTBackend(art.path),
                                     compact.random_inputs(name, 5))
        assert agreement.max_abs < TRT_FP16_ATOL, (name, agreement)


@pytest.mark.gpu
@needs_ort_cuda
def test_onnxruntime_cuda_matches_torch(expression_net, expression_onnx, face_chips):
    candidate = OnnxBackend(expression_onnx.path, providers=("CUDAExecutionProvider",))
    assert candidate.providers[0] == "CUDAExecutionProvider"
    reference = TorchBackend(expression_net, input_names=(INPUT_NAME,),
                             output_names=(OUTPUT_NAME,))
    agreement = compare_backends(reference, candidate, {INPUT_NAME: face_chips})
    assert agreement.max_abs < CUDA_ATOL, agreement


@pytest.mark.gpu
@needs_cuda
def test_torch_backend_on_cuda_matches_cpu():
    net = TwoInOut()
    on_cpu = tiny_torch(net)
    reference = {n: x.copy() for n, x in on_cpu.run(tiny_inputs(6)).items()}
    on_gpu = TorchBackend(TwoInOut(), input_names=("images", "extra"), output_names=TINY_OUT,
                          device="cuda")
    got = on_gpu.run(tiny_inputs(6))
    for name in TINY_OUT:
        np.testing.assert_allclose(got[name], reference[name], atol=CUDA_ATOL)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_without_tensorrt_the_backend_names_the_install(tmp_path, expression_onnx):
    with pytest.raises(ConfigError, match="tensorrt not installed: pip install"):
        TensorRTBackend(tmp_path / "missing.plan")
    with pytest.raises(ConfigError) as caught:
        EngineCache(tmp_path).tensorrt("expression", expression_onnx, fp16=True,
                                       profile=BatchProfile(1, 8, 32))
    assert str(caught.value) == TENSORRT_HINT


# --- the command -----------------------------------------------------------------------

@pytest.mark.slow
def test_cli_exports_the_expression_net_and_checks_it_against_torch(models_cache):
    proc = run_cli("encoder", "export", "--backend", "onnx",
                   env={"FACESTREAM_CACHE_DIR": str(models_cache)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("expression: "), proc.stdout
    assert "built in" in lines[0] and "max abs diff vs torch" in lines[0]
    diff = float(lines[0].split("vs torch ")[1].split()[0])
    assert diff < ORT_ATOL
    written = list((models_cache / "engines").glob("expression-*-onnx-opset17.onnx"))
    assert len(written) == 1 and written[0].as_posix() in lines[0]


@pytest.mark.parametrize("args, message", [
    (("--backend", "tensorrt"), "tensorrt not installed: pip install 'facestream[tensorrt]'"),
    (("--backend", "onnx", "--profile", "facellava"), "--profile facellava needs --checkpoint"),
])
def test_cli_refuses_what_it_cannot_build_in_one_line(args, message, models_cache):
    if "tensorrt" in args and HAS_TENSORRT:
        pytest.skip("tensorrt is installed")
    proc = run_cli("encoder", "export", *args, env={"FACESTREAM_CACHE_DIR": str(models_cache)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --- the Face-LLaVA vision path --------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tests.tiny_facellava import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("facellava") / "ckpt",
                                 cross_attn_type="masked")


@pytest.mark.slow
def test_tiny_vision_path_exports_through_the_cache_and_matches_torch(tiny_checkpoint,
                                                                      tmp_path):
    from facestream.encoder.facellava import load_facellava

    model = load_facellava(tiny_checkpoint, load_llm=False, dtype=torch.float32)
    vision = model.vision_path("video")
    cache = EngineCache(tmp_path)
    art = export.export_vision_path(cache, vision, backend="onnx")
    assert art.built and art.path.name.startswith("facellava-vision-video-")
    assert not export.export_vision_path(cache, vision, backend="onnx").built
    reference = TorchBackend(vision, input_names=export.VISION_INPUTS,
                             output_names=(export.VISION_OUTPUT,))
    candidate = OnnxBackend(art.path)
    for batch in (1, 3):              # exported at batch 2
        inputs = export.vision_inputs(vision, batch, seed=batch)
        assert inputs["pixels"].shape == (batch, 3, 8, 224, 224)
        agreement = compare_backends(reference, candidate, inputs)
        assert agreement.max_abs < ORT_ATOL, (batch, agreement)
        tokens = candidate.run(inputs)[export.VISION_OUTPUT]
        assert tokens.shape == (batch, 8 * vision.tokens_per_frame, vision.hidden_size)


@pytest.mark.slow
def test_cli_exports_the_facellava_vision_path(tiny_checkpoint, tmp_path):
    proc = run_cli("encoder", "export", "--backend", "onnx", "--profile", "facellava",
                   "--checkpoint", str(tiny_checkpoint),
                   env={"FACESTREAM_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("facellava-vision-video: "), proc.stdout
    assert float(lines[0].split("vs torch ")[1].split()[0]) < ORT_ATOL
