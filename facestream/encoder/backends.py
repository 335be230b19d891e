"""Runtime backends for a visual net: one call, numpy in, numpy out.

``OnnxNet`` runs an exported graph with ONNX Runtime (CUDA when ``onnxruntime-gpu`` is
installed and a device is present, else CPU); ``TorchNet`` runs the torch module directly.
Both take the net's single input and return its first output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestream.errors import AssetError


class OnnxNet:
    def __init__(self, path: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:   # onnxruntime raises its own untyped errors
            raise AssetError(f"model file {path} cannot be loaded ({str(exc).splitlines()[0]}); "
                             "run `facestream models pull --force`") from None
        self._input = self._session.get_inputs()[0].name
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]


class TorchNet:
    def __init__(self, module, *, threads: int = 0) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._module = module.eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._module(torch.from_numpy(x)).numpy()
