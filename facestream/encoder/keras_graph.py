"""Rebuild a Keras 2 functional model stored in HDF5 as a PyTorch module, without TensorFlow.

The file's own ``model_config`` says which layers exist and how they connect; the weights
are read from ``model_weights`` and converted from channels-last.  Supported layer types:
InputLayer, Conv2D, SeparableConv2D (depth multiplier 1), BatchNormalization, Activation
(relu, softmax, linear), MaxPooling2D, Add, GlobalAveragePooling2D.  Anything else fails
with the layer named.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


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



def load_keras_hdf5(path: Path) -> KerasGraphNet:
    """Build the module from the file.  Raises OSError / KeyError / ValueError as h5py and
    the layer builders do; callers turn those into a message for the user."""
    import h5py

    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        group = f["model_weights"]
        layers = [_build_layer(spec, group) for spec in config["config"]["layers"]]
    return KerasGraphNet(layers).eval()
