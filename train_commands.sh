#!/usr/bin/env bash
# Dense training with one checkpoint per epoch ({EXP}/logs/{DOC}/ckpt_ep{E}.pth + ckpt.pth).
# Edit the variables; any config value can be changed with --override section.key=value.
set -euo pipefail
cd "$(dirname "$0")"
# PYTHON (the README's .venv when there is one) and `layout PATH_KIND ...`
source earlybird_scripts/env.sh
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
GPUS=${GPUS:-1}              # >1: DDP with torchrun, one process per GPU
EXTRA=${EXTRA:-}             # e.g. "--override training.n_epochs=20 earlybird.enabled=true"

if [ "$GPUS" -gt 1 ]; then
  # shellcheck disable=SC2086
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$GPUS" main.py \
    --config "$CONFIG" --exp "$EXP" \
    --doc "$DOC" --ni --use_ema --train_from_scratch --skip_type quad $EXTRA
else
  # shellcheck disable=SC2086
  "$PYTHON" main.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni --use_ema \
    --train_from_scratch --skip_type quad $EXTRA
fi
# Continue an interrupted run (model, EMA, optimizer, epoch, step and RNG state):
#   $PYTHON main.py --config $CONFIG --exp $EXP --doc $DOC --ni --use_ema --resume_training
