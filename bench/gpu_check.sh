#!/usr/bin/env bash
# Every GPU check and benchmark in one run of under 8 minutes (a machine with one CUDA
# device, torch + transformers installed, no network), each part under its own time limit
# (the limits sum to 470 s):
#   gpu, versions   the device and the library versions
#   gpu-tests       the CUDA-marked tests (every test file that marks one pytest.mark.gpu)
#   vision-image    the Face-LLaVA vision path (ViT-L + fusion, fp16), image crops, eager /
#                   compiled / ONNX Runtime (where its CUDA provider is installed)
#   vision-video    the same, 8-frame video windows, eager
#   llm-7b          the engine's 7B-shaped benchmark at batch 64 with 64-token answers
#   llm-stall       the running answers' longest stall while 16 long prompts are admitted,
#                   whole prompts vs llm_prefill_chunk 512
#   llm-decode      its decode step alone at batch 8 and 64: the step as it was rebuilt on
#                   the host, the static step, and the static step replayed as CUDA graphs
# then a summary table (bench/gpu_summary.py): one line per part, ok / fail / timeout and
# its key figures, and the line `gpu-windows-per-s: N`.  Each part's output goes to
# $OUT/<part>.txt (or ./gpu-out), the table to $OUT/summary.txt.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
: > "$out/parts.tsv"

part() {    # name, limit in seconds, command...: output to the terminal and $out/<name>.txt
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$out/parts.tsv"
}

mapfile -t gpu_tests < <(grep -rlF --include='*.py' 'pytest.mark.gpu' tests | sort)
part gpu 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
part versions 20 python3 -c "import torch, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__)"
part gpu-tests 110 python3 -m pytest -q -m gpu -p no:cacheprovider "${gpu_tests[@]}"
part vision-image 90 python3 bench/bench_vision.py --device cuda --shape vitl --kind image \
    --dtype fp16 --batches 1,4,16,64 --backends eager,compiled,onnxruntime --seconds 0.5
part vision-video 40 python3 bench/bench_vision.py --device cuda --shape vitl --kind video \
    --dtype fp16 --batches 1,4,16 --backends eager --seconds 0.5
part llm-7b 110 python3 bench/bench_llm.py --device cuda --model-shape 7b --batches 64 \
    --answer-tokens 64
part llm-stall 30 python3 bench/bench_llm.py --stall --device cuda --model-shape 7b --rounds 1
part llm-decode 60 python3 bench/bench_llm.py --decode-step --device cuda --model-shape 7b \
    --batches 8,64 --steps 10 --rounds 2
echo "== summary"
python3 bench/gpu_summary.py "$out" | tee "$out/summary.txt"
