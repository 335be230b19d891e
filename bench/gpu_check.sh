#!/usr/bin/env bash
# The GPU checks in one short run (a machine with one CUDA device, torch + transformers
# installed, no network): the CUDA-marked tests, then the vision-path benchmark (ViT-L +
# fusion, fp16).  The engine's 7B-shaped benchmark is `bench/bench_llm.py --device cuda
# --model-shape 7b` (a few minutes on its own).  Output goes to $OUT (or ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_engine.py tests/test_export.py 2>&1 | tail -15 | tee "$out/gpu-tests.txt"
timeout 150 python3 bench/bench_vision.py --device cuda --shape vitl --kind image --dtype fp16 \
    --batches 1,2,4,8,16,32,64 --backends eager,compiled,onnxruntime --seconds 0.5 2>&1 | tee "$out/bench-vision-image.txt"
timeout 60 python3 bench/bench_vision.py --device cuda --shape vitl --kind video --dtype fp16 \
    --batches 1,2,4,8,16 --backends eager --seconds 0.5 2>&1 | tee "$out/bench-vision-video.txt"
