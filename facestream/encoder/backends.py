"""Runtime backends for the visual nets: named numpy arrays in, named numpy arrays out.

Every backend satisfies :class:`Backend`, so the compact encoder, the Face-LLaVA vision path
and the checks in :func:`compare_backends` never know which runtime they hold:

* :class:`OnnxBackend` — ONNX Runtime on an exported graph; CUDA when ``onnxruntime-gpu`` is
  installed and a device is visible, else CPU.
* :class:`TorchBackend` — the torch module itself, eager (optionally ``torch.compile``), on
  CPU or a CUDA device.  Only nets with a torch source have one: the age and gender nets
  ship as ONNX files only, so for them this backend does not apply.
* :class:`TensorRTBackend` — a serialized TensorRT engine built from the ONNX graph
  (:func:`facestream.encoder.export.build_engine`), executed on torch CUDA tensors so no
  other CUDA binding is needed.  ``tensorrt`` is imported lazily, only here.

Axis 0 of every input and output is the batch.  Inputs are float32 host arrays; outputs come
back as float32 host arrays in the net's declared output order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from facestream.errors import AssetError, ConfigError, InputError

TENSORRT_HINT = ("tensorrt not installed: pip install 'facestream[tensorrt]' (needs NVIDIA's "
                 "index) or use encoder_backend=onnxruntime")
ONNX_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
# Whether ONNX Runtime's pool threads busy-wait for the next operator after a run.  They do by
# default, which on a worker's few cores takes CPU from MediaPipe and the decoder between the
# encoder's batches (docs/PERFORMANCE.md, "Worker CPU per analysed frame"); the outputs are the
# same either way.  bench/profile_worker.py sets it for its before side.
ONNX_SPINNING = False


class Backend(Protocol):
    """One net behind one runtime.

    ``run`` is blocking and not thread-safe (give each thread its own backend); it returns a
    dict with exactly ``output_names`` as keys, each array's axis 0 the input batch.
    """

    name: str                        # "onnxruntime" | "torch" | "tensorrt"
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Agreement(NamedTuple):
    """How far a candidate backend's outputs are from a reference's, over all outputs.

    ``max_rel`` is ``max_abs`` over the largest reference magnitude of the same output
    (scale-relative, so near-zero probabilities do not blow it up).
    """

    max_abs: float
    max_rel: float


def compare_backends(reference: Backend, candidate: Backend,
                     inputs: Mapping[str, np.ndarray]) -> Agreement:
    """Run both backends on the same inputs; AssetError if their outputs do not line up."""
    want, got = reference.run(inputs), candidate.run(inputs)
    if set(want) != set(got):
        raise AssetError(f"{candidate.name} outputs {sorted(got)}, {reference.name} outputs "
                         f"{sorted(want)}; rebuild it with `facestream encoder export --force`")
    max_abs = max_rel = 0.0
    for name, ref in want.items():
        out = got[name]
        if out.shape != ref.shape:
            raise AssetError(f"{candidate.name} output {name!r} has shape {out.shape}, "
                             f"{reference.name} {ref.shape}; rebuild it with "
                             "`facestream encoder export --force`")
        diff = float(np.abs(out.astype(np.float64) - ref).max(initial=0.0))
        scale = float(np.abs(ref).max(initial=0.0))
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return Agreement(max_abs, max_rel)


def _batch_of(inputs: Mapping[str, np.ndarray], names: Sequence[str]) -> int:
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"net inputs {list(names)} expected, got {sorted(inputs)}; "
                         f"missing {missing}")
    batches = {inputs[n].shape[0] for n in names}
    if len(batches) != 1:
        raise InputError(f"inputs {list(names)} must share the batch axis, got sizes "
                         f"{[inputs[n].shape[0] for n in names]}")
    return batches.pop()


class OnnxBackend:
    """ONNX Runtime session on ``path``; providers CUDA then CPU, as installed.  Its pool
    threads sleep between runs instead of spinning (:data:`ONNX_SPINNING`)."""

    name = "onnxruntime"

    def __init__(self, path: Path, *, threads: int = 0,
                 providers: Sequence[str] = ONNX_PROVIDERS) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        spinning = "1" if ONNX_SPINNING else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = [p for p in providers if p in available]
        if not chosen:
            raise ConfigError(f"ONNX Runtime providers {list(providers)} requested, installed "
                              f"are {available}; install onnxruntime-gpu for CUDA")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:   # onnxruntime raises its own untyped errors
            raise AssetError(f"model file {path} cannot be loaded ({str(exc).splitlines()[0]}); "
                             "run `facestream models pull --force`") from None
        self.path = Path(path)
        self.providers = tuple(self._session.get_providers())
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _batch_of(inputs, self.input_names)
        feeds = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        return dict(zip(self.output_names, self._session.run(None, feeds)))


class TorchBackend:
    """The torch module, called with the inputs positionally in ``input_names`` order.

    ``threads`` sets torch's process-wide CPU thread count.  ``compiled`` wraps the module in
    ``torch.compile(dynamic=True)``: the first calls are slow (graph capture and codegen).
    """

    name = "torch"

    def __init__(self, module, *, input_names: Sequence[str], output_names: Sequence[str],
                 device: str = "cpu", compiled: bool = False, threads: int = 0) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)
        self._call = torch.compile(self.module, dynamic=True) if compiled else self.module
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        _batch_of(inputs, self.input_names)
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device)
                for n in self.input_names]
        with torch.inference_mode():
            out = self._call(*args)
        outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if len(outs) != len(self.output_names):
            raise ConfigError(f"module returns {len(outs)} outputs, output_names lists "
                              f"{len(self.output_names)}: {list(self.output_names)}")
        return {n: t.float().cpu().numpy() for n, t in zip(self.output_names, outs)}


def import_tensorrt():
    """The ``tensorrt`` module, or ConfigError with the install hint."""
    try:
        import tensorrt
    except ImportError:
        raise ConfigError(TENSORRT_HINT) from None
    return tensorrt


class TensorRTBackend:
    """A serialized TensorRT engine run on the current CUDA device through torch tensors.

    Calls with more rows than the engine's optimisation profile allows are split into
    profile-sized pieces; fewer rows than its minimum is an InputError.  One execution
    context: not thread-safe.
    """

    name = "tensorrt"

    def __init__(self, path: Path) -> None:
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("encoder_backend=tensorrt needs a CUDA device and none is "
                              "visible; use encoder_backend=onnxruntime")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise AssetError(f"TensorRT engine {path} cannot be loaded (built by another "
                             "TensorRT version or GPU?); run `facestream encoder export "
                             "--backend tensorrt --force`")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        low, _, high = engine.get_tensor_profile_shape(self.input_names[0], 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.path = Path(path)
        self._device = torch.device("cuda", torch.cuda.current_device())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        batch = _batch_of(inputs, self.input_names)
        if batch < self.min_batch:
            raise InputError(f"batch of {batch} is below the engine's smallest, "
                             f"{self.min_batch}; rebuild it with encoder_batch_sizes starting "
                             f"at {batch}")
        pieces: dict[str, list] = {n: [] for n in self.output_names}
        stream = torch.cuda.current_stream(self._device)
        for start in range(0, batch, self.max_batch):
            stop = min(start + self.max_batch, batch)
            if stop - start < self.min_batch:      # a short tail: overlap the previous piece
                start = stop - self.min_batch
            keep = []                              # device tensors must outlive the launch
            for n in self.input_names:
                # x: [b, ...] rows start:stop of input n, on the device in the engine's dtype
                x = torch.from_numpy(np.ascontiguousarray(inputs[n][start:stop]))
                x = x.to(self._device, self._dtypes[n]).contiguous()
                self._context.set_input_shape(n, tuple(x.shape))
                self._context.set_tensor_address(n, x.data_ptr())
                keep.append(x)
            for n in self.output_names:
                y = torch.empty(tuple(self._context.get_tensor_shape(n)), dtype=self._dtypes[n],
                                device=self._device)
                self._context.set_tensor_address(n, y.data_ptr())
                keep.append(y)
                pieces[n].append((start, y))
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise AssetError(f"TensorRT engine {self.path} failed to run a batch of "
                                 f"{stop - start}; rebuild it with `facestream encoder export "
                                 "--backend tensorrt --force`")
        stream.synchronize()
        out = {}
        for n, parts in pieces.items():
            rows, done = [], 0
            for start, y in parts:
                rows.append(y[done - start:])      # drop rows an overlapping tail repeated
                done = start + y.shape[0]
            out[n] = torch.cat(rows).float().cpu().numpy()
        return out


def _torch_dtype(trt, dtype):
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
    if dtype not in table:
        raise AssetError(f"TensorRT tensor type {dtype} is not supported at the net's inputs "
                         "and outputs; export the net with float32 inputs and outputs")
    return table[dtype]
