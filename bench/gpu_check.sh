#!/usr/bin/env bash
# Every GPU check and measurement in one script, stages ordered by value, each with a timeout
# (about 6.5 minutes on an H200, at most 10.5): the CUDA-graph step against the eager one
# (bench/graph_check.py); step time of dense and tickets (p = 0.3 / 0.6 / 0.8)
# eager vs CUDA graph, bf16 autocast vs bf16 weights, at batch 128 with a host-sync check; 1 vs
# 3 vs 4 p = 0.8 tickets sharing the GPU; the same step modes at batch 512; torch.compile vs
# the graph; the suite (bf16 vs fp32 loss over 200 steps, MFU, sampling); a short real training
# run with fast.cuda_graph and sampling on CUDA.
# Without a CUDA device it falls back to the CPU suite in smoke mode and says so.
# Results go to $OUT/gpu_check.txt (OUT defaults to bench/out).
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY="$(pwd)/.venv/bin/python"
if [ -d .whl ] && ! "$PY" -c "import torch_pruning, pytorch_fid" 2>/dev/null; then
  # carried wheels for machines without the project's dependencies
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
log() { echo "$@" | tee -a "$OUT/gpu_check.txt"; }
: > "$OUT/gpu_check.txt"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$OUT/gpu_check.txt"
  # first, whether the CUDA-graph step is right at all: eager vs graph over 8 batches, fresh
  # noise per replay, resume of a state saved without the graph, bf16_weights, a DataLoader
  (timeout 90 "$PY" bench/graph_check.py --device cuda) 2>&1 | tee -a "$OUT/gpu_check.txt"
  # most decision-relevant first; each stage prints its rows as it measures them, so a stage cut
  # off by its timeout still leaves numbers in the log
  (cd bench && timeout 100 "$PY" step_modes.py --device cuda --batch 128 --iters 10 \
      --ratios 0.3 0.6 0.8 --sync_check) 2>&1 | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 100 "$PY" shared_gpu.py --device cuda --batch 128 --counts 1 3 4 \
      --steps 30) 2>&1 | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 70 "$PY" step_modes.py --device cuda --batch 512 --iters 5 \
      --ratios 0.3 0.6 0.8) 2>&1 | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 70 "$PY" step_modes.py --device cuda --batch 128 --iters 10 \
      --ratios 0.8 --compile) 2>&1 | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 120 "$PY" suite.py --device cuda --batch 128 --iters 10 \
      --bf16_steps 200 --sample_steps 100) 2>&1 | tee -a "$OUT/gpu_check.txt"
  E=$(mktemp -d)
  timeout 40 "$PY" main.py --config digits.yml --exp "$E" --doc gpu --ni --override \
    training.n_epochs=2 earlybird.enabled=true fast.cuda_graph=true 2>&1 | tail -2 | tee -a "$OUT/gpu_check.txt"
  timeout 30 "$PY" main.py --config digits.yml --exp "$E" --doc gpu --ni --sample --use_ema \
    --image_folder "$E/s" --n_samples 64 2>&1 | tail -1 | tee -a "$OUT/gpu_check.txt"
else
  log "no CUDA device: running the CPU suite in smoke mode instead"
  (cd bench && "$PY" suite.py --smoke --device cpu) 2>&1 | tee -a "$OUT/gpu_check.txt"
fi
