#!/usr/bin/env bash
# One prepared GPU check for a session lent a CUDA machine (nothing in CI needs a GPU):
# the gpu-marked inference tests on CUDA (the OOM fallback among them), then a 20-study run
# of phantom-unet on CUDA in fp32 and fp16 (the model's busy share of the wall time), then
# the sliding-window benchmark against MONAI on CUDA in fp32 and fp16, then one GPU Ray
# actor vs the local run, then 1 vs 2 GPUs (replicas; skipped with fewer than two). Bounded to ~8 minutes; results land in bench/results/
# (and are copied to $OUT when that is set). On CUDA the sliding-window bench times ours and
# MONAI's on the network as loaded (the CPU-only freeze of TorchModel.network does not apply).
# bench_infer.py and bench_large_volume.py measure python cards on the CPU: no GPU variant.
#   PYTHON  interpreter with autolabel's dependencies (default: .venv/bin/python, else python3)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
status=0
# Each step gets its own limit, cut to what is left of the 8 minutes (480 s, 10 s kept for
# copying results); a step with under 10 s left is skipped and counted as a failure.
deadline=$((SECONDS + 470))
step() {
  local cap=$1 left
  shift
  left=$((deadline - SECONDS))
  if [ "$left" -lt 10 ]; then
    echo "gpu_check: skipped, the 8-minute budget is spent: $*" >&2
    status=1
    return
  fi
  timeout "$((cap < left ? cap : left))" "$@" || status=1
}
step 180 "$py" -m pytest -m gpu tests/test_inference_gpu.py -q -rs -p no:cacheprovider
# The model's busy share of the wall time over a 20-study run of phantom-unet, fp32 vs fp16.
for autocast in off fp16; do
  step 110 "$py" bench/bench_pipeline.py --studies 20 --shape 256 256 128 --repeats 1 \
    --contenders autolabel --model models/phantom-unet --autocast "$autocast" \
    --run-args=--device=cuda --out "bench/results/pipeline_gpu_$autocast.json"
done
for autocast in off fp16; do
  step 75 "$py" bench/bench_sliding_window.py --device cuda --autocast "$autocast" \
    --shape 256 256 192 --repeats 3
done
step 150 "$py" bench/bench_ray.py gpu --repeats 2
# One warm replica per GPU (--device cuda:0,cuda:1) against one GPU; skips below two GPUs.
step 120 "$py" bench/bench_replicas.py --devices cuda:0,cuda:1 --volumes 8
if [ -n "${OUT:-}" ]; then
  cp bench/results/pipeline_gpu_*.json bench/results/sliding_window_cuda_*.json \
    bench/results/ray_gpu.json bench/results/replicas_2.json "$OUT"/ 2>/dev/null || true
fi
exit "$status"
