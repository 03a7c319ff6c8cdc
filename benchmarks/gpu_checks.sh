#!/usr/bin/env bash
# Every check that needs a GPU, in one run (about 10 minutes on an H200): the CUDA tests, then the
# bfloat16 benchmarks.
#
#   bash benchmarks/gpu_checks.sh [results folder]      (default: results/benchmarks)
#
# Needs the benchmark environment (benchmarks/requirements.txt) with a CUDA build of torch. Each step has
# its own time limit and a failing step does not stop the others; the script's exit status is the
# number of steps that failed. Writes gpu-*.md/json into the results folder.
set -u
cd "$(dirname "$0")/.."
out=${1:-results/benchmarks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
failed=0

step() {  # step <seconds> <name> <command...>
    local limit=$1 name=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@"
    local status=$?
    if [ "$status" -ne 0 ]; then
        echo "== $name FAILED (exit $status; 124: over its $limit s)"
        failed=$((failed + 1))
    fi
    echo "== $name took $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

step 75 "CUDA tests" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_devices.py tests/test_accumulators.py tests/test_ngrams.py tests/test_count_tables.py tests/test_host_copies.py

speed=(--device cuda --dtype bfloat16 --fire-rate 0.05 --token-capacity 2048)
# 2048-token sequences, 128 of them (as much as the bundled held-out text gives): half a preset shard.
# capture: the presets' bounded token tables; capture_dense_tokens: token x neuron counts in a dense table
# per layer (7.4 GB for OPT-125m, 39.5 GB for OPT-1.3b in all)
for batch in 16 64; do
    step 90 "OPT-125m shapes, batch $batch" python3 benchmarks/interleaved_speed.py --architecture opt-125m \
        --modes bare capture capture_dense_tokens capture_fire_pos --n-seq 128 --seq-len 2048 \
        --batch-size "$batch" --rounds 2 "${speed[@]}" --out "$out/gpu-interleaved-opt-125m-batch$batch"
done
step 120 "OPT-125m shapes against TransformerLens and nnsight" python3 benchmarks/interleaved_speed.py \
    --architecture opt-125m --n-seq 64 --seq-len 2048 --batch-size 16 --rounds 2 "${speed[@]}" \
    --out "$out/gpu-interleaved-opt-125m-tools"
step 110 "OPT-1.3b shapes" python3 benchmarks/interleaved_speed.py --architecture opt-1.3b \
    --modes bare capture capture_dense_tokens capture_fire_pos --n-seq 32 --seq-len 2048 --batch-size 16 \
    --rounds 2 "${speed[@]}" --out "$out/gpu-interleaved-opt-1.3b"
step 150 "OPT-13b shapes over an 8 GiB GPU budget" python3 benchmarks/placement_speed.py --architecture opt-13b \
    --placements resident layerwise offload --gpu-budget 8GiB --n-seq 16 --seq-len 512 --batch-size 8 \
    --out "$out/gpu-placement-opt-13b"

echo "== $failed step(s) failed"
exit "$failed"
