"""Write a Keras 2 functional model stored in HDF5 as an ONNX graph, without TensorFlow or torch.

The expression net ships as Keras HDF5 and the compact profile runs it on ONNX Runtime.
Converting it through PyTorch (:mod:`facestream.encoder.keras_graph`, then ``torch.onnx``)
would make torch a requirement of ``models pull`` for a profile that never runs torch, so
this module writes the graph itself with ``onnx.helper``, from numpy and h5py alone.  It reads
the same things ``keras_graph`` reads (the file's ``model_config`` for the layers and how
they connect, ``model_weights`` for the tensors) and builds the same computation:

* NCHW throughout, kernels moved from channels-last;
* axis 0 symbolic ("batch"); the spatial sizes come from the input layer, so TensorFlow's
  'same' padding (any odd pixel goes to the bottom/right) becomes explicit ``pads`` on
  Conv and MaxPool.  ONNX MaxPool never picks a padded cell, as if it held -inf;
* BatchNormalization stays a node (ONNX Runtime and TensorRT fold it into the convolution).

Supported layer types: InputLayer, Conv2D, SeparableConv2D (depth multiplier 1),
BatchNormalization, Activation (relu, softmax, linear), MaxPooling2D, Add,
GlobalAveragePooling2D, one input and one output.  Anything else fails with the layer named.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from facestream.encoder.export import DEFAULT_OPSET
from facestream.errors import AssetError

CONVERTER_VERSION = 1        # bump when the graph written for the same file changes
_ACTIVATIONS = {"relu": "Relu", "softmax": "Softmax", "linear": "Identity"}
_LAYERS = ("Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "MaxPooling2D",
           "GlobalAveragePooling2D", "Add")                # and the one InputLayer
_SPATIAL = ("Conv2D", "SeparableConv2D", "MaxPooling2D", "GlobalAveragePooling2D")


class _Graph:
    """The nodes and weights written so far, and each layer's output: tensor name and shape
    without the batch axis ((C, H, W), or (C,) once pooled)."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.weights: list = []
        self.outputs: dict[str, tuple[str, tuple[int, ...]]] = {}

    def weight(self, name: str, value: np.ndarray) -> str:
        self.weights.append(self.numpy_helper.from_array(
            np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _weights(group, name: str) -> list[np.ndarray]:
    if name not in group:
        return []
    layer = group[name]
    return [np.asarray(layer[w.decode() if isinstance(w, bytes) else w], dtype=np.float32)
            for w in layer.attrs["weight_names"]]


def _pads(hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
          same: bool) -> tuple[list[int], tuple[int, int]]:
    """ONNX ``pads`` [top, left, bottom, right] and the output (H, W) for Keras padding."""
    begin, end, out = [], [], []
    for size, k, s in zip(hw, kernel, stride):
        total = max((-(-size // s) - 1) * s + k - size, 0) if same else 0
        begin.append(total // 2)
        end.append(total - total // 2)
        out.append((size + total - k) // s + 1)
    return begin + end, (out[0], out[1])


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _check(name: str, cfg: dict) -> None:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise ValueError(f"layer {name}: data_format {cfg['data_format']} is not supported")
    if _pair(cfg.get("dilation_rate", 1)) != (1, 1):
        raise ValueError(f"layer {name}: dilation_rate {cfg['dilation_rate']} is not supported")
    if cfg.get("activation", "linear") not in _ACTIVATIONS:
        raise ValueError(f"layer {name}: activation {cfg['activation']} is not supported")


def _activation(g: _Graph, kind: str, x: str, out: str) -> str:
    attrs = {"axis": 1} if kind == "softmax" else {}      # channels, in NCHW and [B, C] alike
    return g.node(_ACTIVATIONS[kind], [x], out, **attrs)


def _conv(g: _Graph, name: str, x: str, shape: tuple[int, ...], weight: np.ndarray,
          bias: np.ndarray | None, cfg: dict, out: str, *, depthwise: bool = False):
    """One Conv node; ``weight`` is already [out, in/groups, kh, kw]."""
    kernel, stride = weight.shape[2:], _pair(cfg.get("strides", 1))
    pads, hw = _pads(shape[1:], kernel, stride, cfg.get("padding") == "same")
    inputs = [x, g.weight(f"{name}/weight", weight)]
    if bias is not None:
        inputs.append(g.weight(f"{name}/bias", bias))
    g.node("Conv", inputs, out, kernel_shape=list(kernel), strides=list(stride), pads=pads,
           group=shape[0] if depthwise else 1)
    return out, (weight.shape[0], *hw)


def _layer(g: _Graph, spec: dict, w: list[np.ndarray], out: str) -> tuple[str, tuple[int, ...]]:
    """Append the nodes of one layer, the last one writing ``out``; its output and shape."""
    kind, cfg, name = spec["class_name"], spec["config"], spec["name"]
    if kind not in _LAYERS:
        raise ValueError(f"layer {name}: Keras layer type {kind} is not supported")
    inputs = [node[0] for node in spec["inbound_nodes"][0]] if spec["inbound_nodes"] else []
    missing = [i for i in inputs if i not in g.outputs]
    if not inputs or missing:
        raise ValueError(f"layer {name}: inputs {missing or 'none'} are not defined before it")
    _check(name, cfg)
    x, shape = g.outputs[inputs[0]]
    if kind in _SPATIAL and len(shape) != 3:
        raise ValueError(f"layer {name}: {kind} needs a [C, H, W] input, got {list(shape)}")
    needed = {"Conv2D": 1, "SeparableConv2D": 2,
              "BatchNormalization": 2 + cfg.get("scale", True) + cfg.get("center", True)}
    if len(w) < needed.get(kind, 0):
        raise ValueError(f"layer {name}: {len(w)} weight tensors stored, {kind} needs "
                         f"{needed[kind]}")
    act = cfg.get("activation", "linear")
    pre = f"{name}/linear" if act != "linear" else out
    if kind == "Conv2D":
        # Keras kernel [kh, kw, in, out] -> [out, in, kh, kw]
        y, shape = _conv(g, name, x, shape, w[0].transpose(3, 2, 0, 1),
                         w[1] if len(w) > 1 else None, cfg, pre)
    elif kind == "SeparableConv2D":
        if cfg.get("depth_multiplier", 1) != 1:
            raise ValueError(f"layer {name}: depth_multiplier != 1 is not supported")
        # depthwise [kh, kw, C, 1] -> [C, 1, kh, kw]; pointwise [1, 1, C, F] -> [F, C, 1, 1]
        y, shape = _conv(g, f"{name}/depthwise", x, shape, w[0].transpose(2, 3, 0, 1), None,
                         cfg, f"{name}/depthwise", depthwise=True)
        y, shape = _conv(g, f"{name}/pointwise", y, shape, w[1].transpose(3, 2, 0, 1),
                         w[2] if len(w) > 2 else None, {}, pre)
    elif kind == "BatchNormalization":
        if cfg.get("axis", -1) not in (-1, 3):
            raise ValueError(f"layer {name}: normalising axis {cfg['axis']} is not supported")
        w = list(w)
        gamma = w.pop(0) if cfg.get("scale", True) else np.ones(shape[0], np.float32)
        beta = w.pop(0) if cfg.get("center", True) else np.zeros(shape[0], np.float32)
        params = [g.weight(f"{name}/{p}", v) for p, v in
                  zip(("gamma", "beta", "mean", "var"), (gamma, beta, *w))]
        y = g.node("BatchNormalization", [x, *params], out,
                   epsilon=float(cfg.get("epsilon", 1e-3)))
    elif kind == "Activation":
        return _activation(g, cfg["activation"], x, out), shape
    elif kind == "MaxPooling2D":
        kernel = _pair(cfg["pool_size"])
        stride = _pair(cfg.get("strides") or kernel)
        pads, hw = _pads(shape[1:], kernel, stride, cfg.get("padding") == "same")
        y = g.node("MaxPool", [x], out, kernel_shape=list(kernel), strides=list(stride),
                   pads=pads)
        shape = (shape[0], *hw)
    elif kind == "GlobalAveragePooling2D":
        pooled = g.node("GlobalAveragePool", [x], f"{name}/pooled")     # [B, C, 1, 1]
        y, shape = g.node("Flatten", [pooled], out, axis=1), shape[:1]
    else:                                                       # Add
        shapes = {g.outputs[i][1] for i in inputs}
        if len(inputs) < 2 or len(shapes) != 1:
            raise ValueError(f"layer {name}: Add needs two or more inputs of one shape, got "
                             f"{[g.outputs[i][1] for i in inputs]}")
        y = x
        for k, other in enumerate(inputs[1:], start=2):
            y = g.node("Add", [y, g.outputs[other][0]],
                       out if k == len(inputs) else f"{name}/{k}")
    if act != "linear":
        y = _activation(g, act, y, out)
    return y, shape


def keras_hdf5_to_onnx(path: Path, *, input_name: str, output_name: str,
                       opset: int = DEFAULT_OPSET):
    """The ``onnx.ModelProto`` of the Keras model in ``path``: input ``input_name``
    [batch, C, H, W] float32, output ``output_name`` [batch, ...].

    Raises OSError / KeyError / ValueError as h5py and the layer builders do (callers turn
    those into a message for the user); AssetError if the graph fails ``onnx.checker``.
    """
    import h5py
    import onnx
    from onnx import TensorProto, helper

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])["config"]
        group = f["model_weights"]
        layers = [(spec, _weights(group, spec["name"])) for spec in config["layers"]]
    ends = [[io[0] for io in config.get(key) or []] for key in ("input_layers", "output_layers")]
    if [len(e) for e in ends] != [1, 1]:
        raise ValueError(f"the model has inputs {ends[0]} and outputs {ends[1]}; only one of "
                         "each is supported")
    (first,), (last,) = ends
    g = _Graph()
    for spec, weights in layers:
        name = spec["name"]
        if spec["class_name"] == "InputLayer":
            if name != first:
                raise ValueError(f"layer {name}: a second input layer is not supported")
            shape = spec["config"].get("batch_input_shape") or []
            if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
                raise ValueError(f"layer {name}: input shape {shape} is not [batch, H, W, C] "
                                 "with H, W and C fixed")
            height, width, channels = shape[1:]
            g.outputs[name] = (input_name, (channels, height, width))
            continue
        g.outputs[name] = _layer(g, spec, weights, output_name if name == last else name)
    if last not in g.outputs or g.outputs[last][0] != output_name:
        raise ValueError(f"output layer {last} is not a layer the graph computes")
    graph = helper.make_graph(
        g.nodes, Path(path).stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       ["batch", *g.outputs[first][1]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT,
                                       ["batch", *g.outputs[last][1]])],
        initializer=g.weights)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="facestream",
                              producer_version=f"keras_onnx-{CONVERTER_VERSION}")
    model.ir_version = helper.find_min_ir_version_for(opsets)   # what older runtimes read
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:    # onnx raises ValidationError and friends
        raise AssetError(f"the ONNX graph built from {path} is invalid "
                         f"({str(exc).splitlines()[0]}); report it with the model") from None
    return model


def save_onnx(model, path: Path) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file, then a rename); returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as fh:
        fh.write(model.SerializeToString())
    os.replace(fh.name, path)
    return path
