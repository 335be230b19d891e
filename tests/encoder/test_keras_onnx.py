"""The torch-free Keras HDF5 -> ONNX converter against the torch rebuild of the same file.

``facestream.encoder.keras_graph`` (torch) is the reference; the graph
``facestream.encoder.keras_onnx`` writes must give the same probabilities (max abs diff
below PARITY_ATOL; measured about 1e-6 on the expression net) and must be written with torch
unimportable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from facestream import assets
from facestream.encoder import compact
from facestream.encoder.backends import OnnxBackend, TorchBackend, compare_backends
from facestream.encoder.expression import (INPUT_NAME, OUTPUT_NAME, export_expression_onnx,
                                           load_expression_net, preprocess)
from facestream.encoder.keras_graph import load_keras_hdf5
from facestream.encoder.keras_onnx import keras_hdf5_to_onnx
from facestream.errors import AssetError

PARITY_ATOL = 1e-5
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hdf5(settings):
    return assets.require(settings.cache_dir, compact.EXPRESSION_HDF5)


@pytest.fixture(scope="module")
def converted(hdf5, tmp_path_factory):
    return OnnxBackend(export_expression_onnx(hdf5, tmp_path_factory.mktemp("keras_onnx")
                                              / "expression.onnx"))


@pytest.fixture(scope="module")
def reference(hdf5):
    return TorchBackend(load_expression_net(hdf5), input_names=(INPUT_NAME,),
                        output_names=(OUTPUT_NAME,))


@pytest.fixture(scope="module")
def real_faces(face_analyzer, sample):
    """[5, 1, 64, 64] preprocessed expression crops of the five faces in multi_face.jpg."""
    from facestream.scenes import load_rgb

    x = preprocess(face_analyzer(load_rgb(sample("multi_face.jpg"))).chips.expression)
    assert x.shape == (5, 1, 64, 64), x.shape
    return x


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("source", ["random", "real faces"])
def test_converted_graph_matches_the_torch_module(source, batch, converted, reference,
                                                  real_faces):
    x = (compact.random_inputs("expression", 5)[INPUT_NAME] if source == "random"
         else real_faces)[:batch]
    agreement = compare_backends(reference, converted, {INPUT_NAME: x})
    assert agreement.max_abs < PARITY_ATOL, agreement
    probs = converted.run({INPUT_NAME: x})[OUTPUT_NAME]
    assert probs.shape == (batch, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_graph_has_the_expression_contract(hdf5):
    graph = keras_hdf5_to_onnx(hdf5, input_name=INPUT_NAME, output_name=OUTPUT_NAME).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*graph.input, *graph.output)]
    assert [v.name for v in (*graph.input, *graph.output)] == [INPUT_NAME, OUTPUT_NAME]
    assert dims == [["batch", 1, 64, 64], ["batch", 7]]


def test_export_needs_no_torch(hdf5, tmp_path):
    """``models pull``'s conversion and ``encoder export --backend onnx``'s artefact, in a
    process where ``import torch`` fails."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(hdf5.parent)
    code = f"""
import sys
sys.modules["torch"] = None
import numpy as np
import onnxruntime as ort
from facestream.encoder.compact import export_artefacts
from facestream.encoder.expression import export_expression_onnx
path = export_expression_onnx({str(hdf5)!r}, {str(tmp_path / 'expression.onnx')!r})
first = export_artefacts({str(tmp_path / 'cache')!r}, backend="onnx")["expression"]
again = export_artefacts({str(tmp_path / 'cache')!r}, backend="onnx")["expression"]
for onnx_file in (path, first.path):
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    probs = session.run(None, {{"faces": np.zeros((3, 1, 64, 64), np.float32)}})[0]
    print(probs.shape)
print(first.built, again.built, again.path == first.path)
"""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["(3, 7)", "(3, 7)", "True False True"], out.stdout


# --- small synthetic models in the Keras 2 HDF5 layout ------------------------------------

def _layer(kind, name, inputs=(), weights=None, **config):
    return {"class_name": kind, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else [],
            "weights": weights or {}}


def _write_keras_hdf5(path: Path, layers: list[dict]) -> Path:
    """A Keras 2 functional model file: ``model_config`` JSON and per-layer ``model_weights``
    groups, each listing its tensors in ``weight_names``."""
    specs = [{k: v for k, v in layer.items() if k != "weights"} for layer in layers]
    config = {"class_name": "Model", "config": {
        "name": "tiny", "layers": specs, "input_layers": [[layers[0]["name"], 0, 0]],
        "output_layers": [[layers[-1]["name"], 0, 0]]}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        for layer in layers:
            own = group.create_group(layer["name"])
            names = [f"{layer['name']}/{w}:0" for w in layer["weights"]]
            for full, value in zip(names, layer["weights"].values()):
                own.create_dataset(full, data=value.astype(np.float32))
            own.attrs["weight_names"] = np.array([n.encode() for n in names])
    return path


def _tiny_layers(seed: int = 0) -> list[dict]:
    """Odd, non-square sizes, so every 'same' pad has an odd pixel: 9x7 -> 5x4 -> 3x2."""
    rng = np.random.default_rng(seed)

    def norm(c):
        return {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.1, c),
                "moving_mean": rng.normal(0, 0.1, c), "moving_variance": rng.uniform(0.5, 2, c)}

    same2 = {"padding": "same", "strides": [2, 2]}
    return [
        _layer("InputLayer", "input_1", batch_input_shape=[None, 9, 7, 2], dtype="float32"),
        _layer("Conv2D", "conv_a", ["input_1"], {"kernel": rng.normal(0, 0.5, (3, 3, 2, 4)),
                                                 "bias": rng.normal(0, 0.1, 4)},
               kernel_size=[3, 3], activation="relu", use_bias=True, **same2),
        _layer("BatchNormalization", "norm_a", ["conv_a"], norm(4), epsilon=1e-3),
        _layer("SeparableConv2D", "sep", ["norm_a"],
               {"depthwise_kernel": rng.normal(0, 0.5, (3, 3, 4, 1)),
                "pointwise_kernel": rng.normal(0, 0.5, (1, 1, 4, 4))},
               kernel_size=[3, 3], padding="same", strides=[1, 1], depth_multiplier=1,
               activation="linear", use_bias=False),
        _layer("MaxPooling2D", "pool", ["sep"], pool_size=[3, 3], **same2),
        _layer("Conv2D", "shortcut", ["norm_a"], {"kernel": rng.normal(0, 0.5, (1, 1, 4, 4))},
               kernel_size=[1, 1], activation="linear", use_bias=False, **same2),
        _layer("Add", "add", ["pool", "shortcut"]),
        _layer("Activation", "relu", ["add"], activation="relu"),
        _layer("Conv2D", "head", ["relu"], {"kernel": rng.normal(0, 0.5, (3, 3, 4, 3)),
                                            "bias": rng.normal(0, 0.1, 3)},
               kernel_size=[3, 3], padding="same", strides=[1, 1], activation="linear",
               use_bias=True),
        _layer("GlobalAveragePooling2D", "gap", ["head"]),
        _layer("Activation", "predictions", ["gap"], activation="softmax"),
    ]


@pytest.mark.parametrize("batch", [1, 5])
def test_tf_same_padding_on_odd_sizes_matches_the_torch_module(batch, tmp_path):
    from facestream.encoder.keras_onnx import save_onnx

    path = _write_keras_hdf5(tmp_path / "tiny.hdf5", _tiny_layers())
    onnx_file = save_onnx(keras_hdf5_to_onnx(path, input_name="x", output_name="p"),
                          tmp_path / "tiny.onnx")
    reference = TorchBackend(load_keras_hdf5(path), input_names=("x",), output_names=("p",))
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 2, 9, 7)).astype(np.float32)
    agreement = compare_backends(reference, OnnxBackend(onnx_file), {"x": x})
    assert agreement.max_abs < PARITY_ATOL, agreement


@pytest.mark.parametrize("replace, message", [
    (_layer("Dense", "dense_1", ["gap"], units=3), "layer dense_1: Keras layer type Dense"),
    (_layer("Activation", "predictions", ["gap"], activation="tanh"),
     "layer predictions: activation tanh"),
])
def test_an_unsupported_layer_is_named(replace, message, tmp_path):
    layers = _tiny_layers()
    layers[-1] = replace
    path = _write_keras_hdf5(tmp_path / "tiny.hdf5", layers)
    with pytest.raises(ValueError, match=message):
        keras_hdf5_to_onnx(path, input_name="x", output_name="p")
    with pytest.raises(AssetError, match=f"{message}.*models pull --force"):
        export_expression_onnx(path, tmp_path / "tiny.onnx")
    assert not (tmp_path / "tiny.onnx").exists()
