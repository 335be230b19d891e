"""Face-LLaVA vision path throughput: tower -> projector -> landmark cross-attention.

The vision path (``facestream.encoder.facellava.VisionPath``) is built at a chosen shape
with random weights (the released weights cannot be fetched here; speed does not depend on
their values) and run by each backend on the same inputs:

* ``eager``        torch, the module as written (the baseline every ratio is against);
* ``compiled``     ``torch.compile`` of the tower (the fusion stays eager: inductor cannot
                   lower its cross-attention in torch 2.13); CUDA only by default, on the CPU
                   the compile time dwarfs a short benchmark;
* ``onnxruntime``  the module exported through ``facestream.encoder.export.export_onnx``
                   (fp32 graph, dynamic batch), run by ONNX Runtime with the providers that
                   are installed: CUDA when ``onnxruntime-gpu`` is, else CPU (skipped on a
                   CUDA run where ORT has no CUDA provider: a CPU ORT beside a GPU says
                   nothing).

Shapes: ``tiny`` (the test suite's 32-wide towers, real 224 px / 14 px patches, so the real
256 / 257 token counts) and ``vitl`` (LanguageBind ViT-L/14: 1024 wide, 24 layers; fusion to
a 4096-wide LLM, as Face-LLaVA-7B).  ``--kind video`` runs 8-frame windows (2,056 tokens per
window), ``image`` single crops (256 tokens).

Per backend and batch: images/s (video: frames/s = windows/s x 8), the ratio to eager at
the same batch, the largest difference from eager's output, and on CUDA the peak memory.
Timing: warm-up calls, then repeated calls for at least ``--seconds``, CUDA synchronised.
The last line is ``RESULT {json}``.

    .venv/bin/python bench/bench_vision.py                           # CPU: tiny + ViT-L image
    python bench/bench_vision.py --device cuda --shape vitl --dtype fp16 \\
        --batches 1,2,4,8,16,32,64 --kind video                       # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facestream.encoder.facellava import Fusion, FusionConfig, TowerConfig, VisionPath, VisionTower  # noqa: E402
from facestream.encoder.export import VISION_INPUTS, VISION_OUTPUT, export_onnx, vision_inputs  # noqa: E402

SHAPES = {
    # tower width, MLP width, layers, heads; LLM width
    "tiny": dict(hidden=32, intermediate=64, layers=3, heads=4, llm=64),
    "vitl": dict(hidden=1024, intermediate=4096, layers=24, heads=16, llm=4096),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(shape: str, kind: str, *, device: str, dtype: torch.dtype) -> VisionPath:
    s = SHAPES[shape]
    tower_cfg = TowerConfig(kind=kind, hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                            num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                            image_size=224, patch_size=14, num_frames=8 if kind == "video" else 1)
    fusion_cfg = FusionConfig(mm_hidden_size=s["hidden"], hidden_size=s["llm"],
                              cross_attn_type="simple")
    torch.manual_seed(0)
    with torch.device(device):
        tower, fusion = VisionTower(tower_cfg), Fusion(fusion_cfg)
    with torch.no_grad():
        for p in list(tower.parameters()) + list(fusion.parameters()):
            if p.dim() > 1:
                p.normal_(0.0, 0.02)
    return VisionPath(tower, fusion, kind=kind).to(device=device, dtype=dtype).eval()


def timed(call, *, device: str, seconds: float, warmup: int = 2) -> float:
    """Seconds per call: ``warmup`` calls, then as many as fit in ``seconds`` (at least 3)."""
    for _ in range(warmup):
        call()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        call()
        n += 1
        if device == "cuda" and n % 4 == 0:
            sync()
    sync()
    return (time.perf_counter() - start) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--shape", action="append", choices=tuple(SHAPES))
    ap.add_argument("--kind", default=None, choices=("image", "video"))
    ap.add_argument("--dtype", default=None, choices=tuple(DTYPES))
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes")
    ap.add_argument("--backends", default=None, help="eager,compiled,onnxruntime")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args()
    cuda = args.device == "cuda"
    shapes = args.shape or (["vitl"] if cuda else ["tiny", "vitl"])
    backends = (args.backends or ("eager,compiled,onnxruntime" if cuda else "eager,onnxruntime")).split(",")
    dtype_name = args.dtype or ("fp16" if cuda else "fp32")
    seconds = args.seconds or (1.0 if cuda else 2.0)
    results = []
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'} · torch {torch.__version__} · "
          f"{dtype_name} · random weights")
    print(f"{'shape':6} {'kind':5} {'batch':>5} {'backend':12} {'img/s':>9} {'vs eager':>8} "
          f"{'max|diff|':>10} {'peak MB':>8}")
    for shape in shapes:
        kind = args.kind or ("video" if cuda or shape == "tiny" else "image")
        default_batches = "1,2,4,8,16,32,64" if cuda else ("1,4,16" if shape == "tiny" else "1,2")
        batches = [int(b) for b in (args.batches or default_batches).split(",")]
        frames = 8 if kind == "video" else 1
        dtype = DTYPES[dtype_name]
        vision = build(shape, kind, device=args.device, dtype=dtype)
        runners = {}
        if "eager" in backends:
            runners["eager"] = vision
        if "compiled" in backends:
            # The tower (all but a few per cent of the work) through inductor, the fusion
            # eager: inductor fails to lower the fusion's cross-attention (9 keys against
            # 256/257 queries: "Attempting to broadcast a dimension of length 9") in torch 2.13.
            runners["compiled"] = VisionPath(torch.compile(vision.tower),   # batch dynamic after 2nd size
                                             vision.fusion, kind=kind)
        ort_session = None
        if "onnxruntime" in backends:
            ort_session, why = _onnx_session(vision, cuda=cuda, shape=shape)
            if ort_session is None:
                print(f"{shape:6} {kind:5} {'-':>5} {'onnxruntime':12} skipped: {why}")
        for batch in batches:
            inputs = vision_inputs(vision, batch)
            tensors = [torch.from_numpy(inputs[n]).to(args.device, dtype) for n in VISION_INPUTS]
            reference = None
            base = None
            for name in [*runners, *(["onnxruntime"] if ort_session is not None else [])]:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                try:
                    if name == "onnxruntime":
                        feeds = {n: inputs[n] for n in VISION_INPUTS}
                        out = torch.from_numpy(ort_session.run([VISION_OUTPUT], feeds)[0])
                        per_call = timed(lambda: ort_session.run([VISION_OUTPUT], feeds),
                                         device="cpu", seconds=seconds)
                    else:
                        module = runners[name]
                        with torch.inference_mode():
                            out = module(*tensors).float().cpu()
                            per_call = timed(lambda: module(*tensors), device=args.device,
                                             seconds=seconds)
                except torch.cuda.OutOfMemoryError:
                    print(f"{shape:6} {kind:5} {batch:5d} {name:12} out of memory")
                    continue
                peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
                rate = batch * frames / per_call
                if name == "eager":
                    reference, base = out, rate
                diff = float((out - reference).abs().max()) if reference is not None else float("nan")
                ratio = rate / base if base else float("nan")
                print(f"{shape:6} {kind:5} {batch:5d} {name:12} {rate:9.1f} {ratio:8.2f} "
                      f"{diff:10.2e} {peak:8.0f}")
                results.append(dict(shape=shape, kind=kind, batch=batch, backend=name,
                                    dtype=dtype_name, images_per_s=round(rate, 2),
                                    windows_per_s=round(rate / frames, 3),
                                    vs_eager=round(ratio, 3), max_abs_diff=diff,
                                    peak_mb=None if not cuda else round(peak)))
        vision = runners = ort_session = None      # free the model before the next shape
    print("RESULT " + json.dumps({"device": args.device, "results": results}))
    return 0


def _onnx_session(vision: VisionPath, *, cuda: bool, shape: str):
    """(ONNX Runtime session over the fp32 export of ``vision``, None) or (None, reason)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime not installed"
    providers = ort.get_available_providers()
    if cuda and "CUDAExecutionProvider" not in providers:
        return None, f"no CUDAExecutionProvider (installed: {', '.join(providers)}; needs onnxruntime-gpu)"
    fp32 = build(shape, vision.kind, device="cpu", dtype=torch.float32)
    fp32.load_state_dict({k: v.float().cpu() for k, v in vision.state_dict().items()})
    example = {n: torch.from_numpy(x) for n, x in vision_inputs(fp32, 2).items()}
    out_dir = Path(tempfile.mkdtemp(prefix="bench-vision-"))
    path = export_onnx(fp32, example, output_names=(VISION_OUTPUT,), path=out_dir / "vision.onnx")
    chosen = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=chosen), None


if __name__ == "__main__":
    sys.exit(main())
