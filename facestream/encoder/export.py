"""ONNX export, TensorRT engine builds, and the cache that keeps both.

Any ``nn.Module`` whose forward takes its named inputs positionally exports through
:func:`export_onnx` (batch axis dynamic on every input and output).  :class:`EngineCache`
keeps the artefacts under ``<cache_dir>/engines`` named

    <name>-<key[:16]>-<backend>-<backend version>[-fp16][-b<min>-<opt>-<max>].onnx | .plan

where ``key`` is :func:`module_key` (sha256 over the state dict — names, dtypes, shapes,
bytes — the input signature and :data:`EXPORT_CODE_VERSION`) for a torch source,
:func:`file_key` for a net that ships as an ONNX file, or that and the converter's name for
a graph converted from another format without torch (:meth:`EngineCache.onnx_from_file`).
A changed weight gives a new name; an artefact whose bytes no longer match the digest
recorded beside it is rebuilt with a warning.  Builds write a temporary file and rename it,
under a per-artefact lock file, so concurrent processes on one host never see a
half-written artefact.

Engines are specific to the TensorRT version and the GPU's compute capability; both are in
the name.  fp16 engines use TensorRT 10's builder flag (TensorRT 11 builds strongly typed
networks only, which would need the precision inside the ONNX graph).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from facestream.assets import sha256_of
from facestream.config import DEFAULT_PROFILE, BatchProfile
from facestream.errors import AssetError, ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

EXPORT_CODE_VERSION = 1          # bump when export_onnx or build_engine change what they write
DEFAULT_OPSET = 17
# Parameters above this size are written as one external-data file beside the .onnx
# (protobuf cannot hold 2 GiB; the ViT-L vision path is about 1.3 GB).
EXTERNAL_DATA_BYTES = 1 << 30
WORKSPACE_BYTES = 4 << 30        # TensorRT builder scratch memory
ENGINES_DIR = "engines"          # under the settings' cache_dir


@dataclass(frozen=True)
class Artefact:
    """One cached file; ``built`` is False when it was reused, ``seconds`` the build time."""

    name: str
    backend: str               # "onnx" | "tensorrt"
    path: Path
    key: str                   # the full sha256 the file name abbreviates
    built: bool
    seconds: float

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in _files_of(self.path))


# --- keys ------------------------------------------------------------------------------

def module_key(module, inputs: Mapping[str, "torch.Tensor"], *, output_names: Sequence[str],
               opset: int = DEFAULT_OPSET) -> str:
    """sha256 naming what an export of ``module`` on inputs shaped like ``inputs`` produces.

    Covers the module's class, every state-dict tensor (name, dtype, shape, bytes), the
    inputs' names, dtypes and non-batch shapes, the output names, the opset and
    :data:`EXPORT_CODE_VERSION`.  Reads every weight once (about 1 s per GB).
    """
    import torch

    digest = hashlib.sha256()
    kind = type(module)
    digest.update(f"facestream-export-{EXPORT_CODE_VERSION}|{kind.__module__}.{kind.__qualname__}"
                  f"|opset{opset}|out={','.join(output_names)}".encode())
    for name, x in inputs.items():
        digest.update(f"|in={name}:{x.dtype}:{tuple(x.shape[1:])}".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"|{name}:{t.dtype}:{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_key(path: Path) -> str:
    """sha256 of an ONNX file (and its external data) and :data:`EXPORT_CODE_VERSION`."""
    digest = hashlib.sha256(f"facestream-export-{EXPORT_CODE_VERSION}".encode())
    for part in _files_of(Path(path)):
        digest.update(sha256_of(part).encode())
    return digest.hexdigest()


# --- ONNX ------------------------------------------------------------------------------

def export_onnx(module, inputs: Mapping[str, "torch.Tensor"], *, output_names: Sequence[str],
                path: Path, dynamic_batch: bool = True, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``module(*inputs.values())`` to ``path``; returns ``path``.

    ``inputs`` are example tensors, in the order forward takes them; their names become the
    graph's input names.  With ``dynamic_batch`` axis 0 of every input and output is
    symbolic ("batch").  The graph passes ``onnx.checker`` before it replaces ``path``
    atomically; a module with more than :data:`EXTERNAL_DATA_BYTES` of parameters gets its
    weights in ``<path>.data``.  Blocking; uses the tracing exporter (``dynamo=False``).
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    axes = ({n: {0: "batch"} for n in [*names, *output_names]} if dynamic_batch else None)
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        traced = Path(tmp) / "traced.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")     # tracer notes about shapes turned constants
            torch.onnx.export(module.eval(), tuple(inputs.values()), str(traced),
                              input_names=names, output_names=list(output_names),
                              opset_version=opset, dynamic_axes=axes, dynamo=False)
        try:
            onnx.checker.check_model(str(traced))
        except Exception as exc:    # onnx raises ValidationError and friends
            raise AssetError(f"exporting {type(module).__name__} gave an invalid ONNX graph "
                             f"({str(exc).splitlines()[0]}); report it with the model") from None
        if weight_bytes > EXTERNAL_DATA_BYTES or len(os.listdir(tmp)) > 1:
            graph = onnx.load(str(traced))
            staged = Path(tmp) / "staged.onnx"
            onnx.save_model(graph, str(staged), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=path.name + ".data",
                            size_threshold=0)
            os.replace(Path(tmp) / (path.name + ".data"), _data_path(path))
            os.replace(staged, path)
        else:
            _data_path(path).unlink(missing_ok=True)
            os.replace(traced, path)
    return path


# --- TensorRT --------------------------------------------------------------------------

def tensorrt_tag(*, fp16: bool, profile: BatchProfile) -> str:
    """``tensorrt-<version>-sm<cc>[-fp16]-b<min>-<opt>-<max>``; ConfigError without TensorRT
    or a CUDA device."""
    from facestream.encoder.backends import import_tensorrt

    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("building a TensorRT engine needs a CUDA device and none is visible; "
                          "build it on the machine that will run it")
    major, minor = torch.cuda.get_device_capability()
    return f"tensorrt-{trt.__version__}-sm{major}{minor}{'-fp16' if fp16 else ''}-{profile.tag}"


def build_engine(onnx_path: Path, *, path: Path, fp16: bool, profile: BatchProfile,
                 workspace_bytes: int = WORKSPACE_BYTES) -> Path:
    """Build a TensorRT engine for the current GPU from an ONNX graph; returns ``path``.

    One optimisation profile: every input's axis 0 spans ``profile.min..profile.max``, tuned
    for ``profile.opt``; all other axes must be static.  Blocking (seconds for the compact
    nets, minutes for the ViT-L vision path).
    """
    from facestream.encoder.backends import import_tensorrt

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "no parser message"
        raise AssetError(f"TensorRT cannot parse {onnx_path} ({first}); rebuild it with "
                         "`facestream encoder export --backend onnx --force`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ConfigError(f"TensorRT {trt.__version__} has no fp16 builder flag; install "
                              "tensorrt>=10,<11 or set encoder_precision=fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise ConfigError(f"input {tensor.name} has shape {tuple(tensor.shape)}; only the "
                              "batch axis may be dynamic for a TensorRT engine")
        shapes.set_shape(tensor.name, (profile.min, *rest), (profile.opt, *rest),
                         (profile.max, *rest))
    config.add_optimization_profile(shapes)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise AssetError(f"TensorRT could not build an engine from {onnx_path} (its log above "
                         "says why)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                     delete=False) as fh:
        fh.write(memoryview(plan))
    os.replace(fh.name, path)
    return path


# --- the cache -------------------------------------------------------------------------

class EngineCache:
    """Exported graphs and engines under ``root``, each built at most once per key.

    Methods are blocking and safe to call from several processes on one host at once: a
    lock file per artefact lets one build while the others wait and then reuse it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def onnx(self, name: str, module, inputs: Mapping[str, "torch.Tensor"], *,
             output_names: Sequence[str], opset: int = DEFAULT_OPSET,
             force: bool = False) -> Artefact:
        """The ONNX export of ``module`` (see :func:`export_onnx`), built if absent."""
        key = module_key(module, inputs, output_names=output_names, opset=opset)
        path = self.root / f"{name}-{key[:16]}-onnx-opset{opset}.onnx"
        return self._get(name, "onnx", key, path, force=force, build=lambda: export_onnx(
            module, inputs, output_names=output_names, path=path, opset=opset))

    def onnx_from_file(self, name: str, source: Path, convert: Callable[[Path, Path], Path], *,
                       converter: str, opset: int = DEFAULT_OPSET,
                       force: bool = False) -> Artefact:
        """The ONNX graph ``convert(source, path)`` writes from a model file that is not ONNX
        (no torch involved), built if absent; keyed by :func:`file_key` of ``source`` and
        ``converter``, which names the converter and its version.  ``opset`` only names the
        file: pass the one ``convert`` writes."""
        key = hashlib.sha256(f"{file_key(source)}|{converter}".encode()).hexdigest()
        path = self.root / f"{name}-{key[:16]}-onnx-opset{opset}.onnx"
        return self._get(name, "onnx", key, path, force=force,
                         build=lambda: convert(Path(source), path))

    def tensorrt(self, name: str, source: Artefact | Path, *, fp16: bool,
                 profile: BatchProfile, force: bool = False) -> Artefact:
        """A TensorRT engine from an ONNX artefact (keyed by its module) or an ONNX file."""
        key = source.key if isinstance(source, Artefact) else file_key(source)
        onnx_path = source.path if isinstance(source, Artefact) else Path(source)
        path = self.root / f"{name}-{key[:16]}-{tensorrt_tag(fp16=fp16, profile=profile)}.plan"
        return self._get(name, "tensorrt", key, path, force=force, build=lambda: build_engine(
            onnx_path, path=path, fp16=fp16, profile=profile))

    def _get(self, name: str, backend: str, key: str, path: Path, *, force: bool,
             build) -> Artefact:
        with _locked(path):
            if not force and path.is_file():
                if _stamp_matches(path):
                    return Artefact(name, backend, path, key, built=False, seconds=0.0)
                log.warning("cached %s does not match the digest recorded when it was built; "
                            "rebuilding it", path)
            start = time.perf_counter()
            build()
            _write_stamp(path)
            return Artefact(name, backend, path, key, built=True,
                            seconds=time.perf_counter() - start)


def _data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def _files_of(path: Path) -> list[Path]:
    data = _data_path(path)
    return [path, data] if data.is_file() else [path]


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _digest_line(path: Path) -> str:
    return " ".join(f"{sha256_of(p)}:{p.stat().st_size}" for p in _files_of(path)) + "\n"


def _write_stamp(path: Path) -> None:
    stamp = _stamp_path(path)
    tmp = stamp.with_name(stamp.name + f".{os.getpid()}")
    tmp.write_text(_digest_line(path))
    os.replace(tmp, stamp)


def _stamp_matches(path: Path) -> bool:
    stamp = _stamp_path(path)
    return stamp.is_file() and stamp.read_text() == _digest_line(path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_artefact(artefact: Artefact, *, threads: int = 0):
    """The backend that runs ``artefact``: ONNX Runtime for .onnx, TensorRT for .plan."""
    from facestream.encoder.backends import OnnxBackend, TensorRTBackend

    if artefact.backend == "tensorrt":
        return TensorRTBackend(artefact.path)
    return OnnxBackend(artefact.path, threads=threads)


# --- the Face-LLaVA vision path ----------------------------------------------------------

VISION_INPUTS = ("pixels", "landmarks")
VISION_OUTPUT = "visual_tokens"


def vision_inputs(vision, batch: int, *, seed: int = 0) -> dict:
    """Random inputs for a Face-LLaVA ``VisionPath``, in the ranges preprocessing produces.

    Shapes follow ``vision.kind`` and its tower's config (S = ``image_size``, T =
    ``num_frames``): video pixels [B, 3, T, S, S], landmarks [B, T, 136]; image pixels
    [B, 3, S, S], landmarks [B, 1, 136].  Pixels ~ N(0, 1) (CLIP-normalised), landmarks in
    [0, 1) (68 points divided by the 256-px crop size); float32.
    """
    import numpy as np

    config = vision.tower.config
    size = config.image_size
    frames = config.num_frames if vision.kind == "video" else 1
    pixels = (batch, 3, frames, size, size) if vision.kind == "video" else (batch, 3, size, size)
    rng = np.random.default_rng(seed)
    return {"pixels": rng.standard_normal(pixels, np.float32),
            "landmarks": rng.random((batch, frames, 136), np.float32)}


def export_vision_path(cache: EngineCache, vision, *, backend: str, fp16: bool = True,
                       profile: BatchProfile = DEFAULT_PROFILE,
                       force: bool = False) -> Artefact:
    """The ONNX export (``backend="onnx"``) or TensorRT engine of a Face-LLaVA ``VisionPath``
    (``vision(pixels, landmarks) -> visual_tokens [B, T*N, hidden]``), named
    ``facellava-vision-<kind>``.  Export it in float32.  Blocking: minutes and several GB of
    memory for ViT-L.
    """
    import torch

    example = {n: torch.from_numpy(x) for n, x in vision_inputs(vision, 2).items()}
    artefact = cache.onnx(f"facellava-vision-{vision.kind}", vision, example,
                          output_names=(VISION_OUTPUT,), force=force)
    if backend == "tensorrt":
        artefact = cache.tensorrt(artefact.name, artefact, fp16=fp16, profile=profile,
                                  force=force)
    return artefact
