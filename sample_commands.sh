#!/usr/bin/env bash
# Generate images: from one checkpoint, and stitched from the TA-EB tickets.
set -euo pipefail
cd "$(dirname "$0")"
# PYTHON (the README's .venv when there is one) and `layout PATH_KIND ...`
source earlybird_scripts/env.sh
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
CKPT=${CKPT:-}                       # default: the dense run's ckpt.pth
N=${N:-50000}                        # the paper's FID protocol
STEPS=${STEPS:-100}
GPUS=${GPUS:-1}                      # >1: torchrun, the images split across the processes
EXTRA=${EXTRA:-}                     # e.g. "--ni" to start the folders over
if [ "$GPUS" -gt 1 ]; then
  LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS")
else
  LAUNCH=("$PYTHON")
fi
CKPT=${CKPT:-$(layout latest_checkpoint "$DOC")}
TAEB=$(layout taeb_name "$DOC")

# Each image has its own seeds, so any number of processes gives the same folder, and a rerun
# fills in what is missing (a folder of other settings is refused; --ni starts it over).
# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --sample --fid --use_ema \
  --skip_type quad --timesteps "$STEPS" --eta 0 --n_samples "$N" \
  --image_folder "$(layout samples_dir "$DOC")" --restore_from "$CKPT" $EXTRA

# Stitched TA-EB sampling: each step uses the ticket whose region holds t.
# shellcheck disable=SC2086
"${LAUNCH[@]}" main.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --sample --fid --use_ema \
  --skip_type quad --timesteps "$STEPS" --eta 0 --n_samples "$N" \
  --tickets "$(layout manifest "$DOC")" \
  --image_folder "$(layout samples_dir "$TAEB")" $EXTRA
