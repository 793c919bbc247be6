#!/usr/bin/env bash
# One prepared GPU check for a session lent a CUDA machine (nothing in CI needs a GPU):
# the gpu-marked inference tests on CUDA, then the sliding-window benchmark against MONAI
# on CUDA in fp32 and fp16, then one GPU Ray actor vs the local run, then 1 vs 2 GPUs
# (replicas; skipped with fewer than two). Bounded to ~8 minutes; results land in bench/results/
# (and are copied to $OUT when that is set).
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
timeout 180 "$py" -m pytest -m gpu tests/test_inference_gpu.py -q -rs -p no:cacheprovider || status=1
for autocast in off fp16; do
  timeout 75 "$py" bench/bench_sliding_window.py --device cuda --autocast "$autocast" \
    --shape 256 256 192 --repeats 3 || status=1
done
timeout 150 "$py" bench/bench_ray.py gpu --repeats 2 || status=1
# One warm replica per GPU (--device cuda:0,cuda:1) against one GPU; skips below two GPUs.
timeout 120 "$py" bench/bench_replicas.py --devices cuda:0,cuda:1 --volumes 8 || status=1
if [ -n "${OUT:-}" ]; then
  cp bench/results/sliding_window_cuda_*.json bench/results/ray_gpu.json \
    bench/results/replicas_2.json "$OUT"/ 2>/dev/null || true
fi
exit "$status"
