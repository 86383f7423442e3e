#!/usr/bin/env bash
# Generate images: from one checkpoint, and stitched from the TA-EB tickets.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
CKPT=${CKPT:-$EXP/logs/$DOC/ckpt.pth}
N=${N:-50000}                        # the paper's FID protocol
STEPS=${STEPS:-100}
GPUS=${GPUS:-1}
PYTHON=${PYTHON:-python}

"$PYTHON" main.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni --sample --fid --use_ema \
  --skip_type quad --timesteps "$STEPS" --eta 0 --n_samples "$N" \
  --image_folder "$EXP/samples/$DOC" --restore_from "$CKPT"

# Stitched TA-EB sampling: each step uses the ticket whose region holds t.
"$PYTHON" main.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni --sample --fid --use_ema \
  --skip_type quad --timesteps "$STEPS" --eta 0 --n_samples "$N" \
  --tickets "$EXP/tickets/$DOC/tickets.yml" --image_folder "$EXP/samples/${DOC}_taeb"
# Images are {index:06d}.png, one seed per image: a rerun fills in what is missing, and
# several GPUs can share the work by pointing at the same folder with CUDA_VISIBLE_DEVICES.
