#!/usr/bin/env bash
# Every GPU check and measurement in one script (about 6 minutes on an H200; each stage has a
# timeout, at most 10 minutes in all): ticket step time with and without pruning.round_to 8 at
# batch 128 and 512, a profile of kernel vs step time, the benchmark suite at the paper's batch
# (128) with bf16 vs fp32 loss over 200 steps and torch.compile timing, mask extraction cost, and
# a short real training + sampling smoke run on CUDA.
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
  # most decision-relevant first; each stage prints its rows as it measures them, so a stage cut
  # off by its timeout still leaves numbers in the log
  # kernel-friendly widths: tickets at p = 0.3 / 0.6 / 0.8 with and without pruning.round_to 8
  (cd bench && timeout 90 "$PY" ticket_speed.py --device cuda --batch 128 --iters 10 \
      --round_to 0 8) 2>&1 | tee -a "$OUT/gpu_check.txt"
  # at batch 128 on an H200 the step was host-bound; a larger batch shows what the MACs buy
  (cd bench && timeout 90 "$PY" ticket_speed.py --device cuda --batch 512 --iters 5 \
      --round_to 0 8) 2>&1 | tee -a "$OUT/gpu_check.txt"
  # kernel time vs step time, dense and the sparsest ticket
  (cd bench && timeout 60 "$PY" profile_step.py --device cuda --batch 128 --ratios 0 0.8 \
      --top 8) 2>&1 | grep -v USDT | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 220 "$PY" suite.py --device cuda --batch 128 --iters 10 \
      --bf16_steps 200 --sample_steps 100 --compile) 2>&1 | tee -a "$OUT/gpu_check.txt"
  (cd bench && timeout 60 "$PY" mask_overhead.py --device cuda --batch 128) 2>&1 | tee -a "$OUT/gpu_check.txt"
  E=$(mktemp -d)
  timeout 45 "$PY" main.py --config digits.yml --exp "$E" --doc gpu --ni --override \
    training.n_epochs=2 earlybird.enabled=true 2>&1 | tail -2 | tee -a "$OUT/gpu_check.txt"
  timeout 30 "$PY" main.py --config digits.yml --exp "$E" --doc gpu --ni --sample --use_ema \
    --image_folder "$E/s" --n_samples 64 2>&1 | tail -1 | tee -a "$OUT/gpu_check.txt"
else
  log "no CUDA device: running the CPU suite in smoke mode instead"
  (cd bench && "$PY" suite.py --smoke --device cpu) 2>&1 | tee -a "$OUT/gpu_check.txt"
fi
