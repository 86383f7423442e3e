#!/usr/bin/env bash
# Fine-tune early-bird tickets: the traditional EB ticket (all timesteps) and the TA-EB tickets
# (one per timestep region of the config's taeb.regions, trained in parallel).
set -euo pipefail
cd "$(dirname "$0")"
# PYTHON (the README's .venv when there is one) and `layout PATH_KIND ...`
source earlybird_scripts/env.sh
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
PRUNER=${PRUNER:-magnitude}
RATIO=${RATIO:-0.3}
EB_EPOCH=${EB_EPOCH:-7}              # from find_earlybird.py
GPUS=${GPUS:-}                       # e.g. 0,1,2,3 (empty: all visible GPUs, or the CPU)
EXTRA=${EXTRA:-}                     # e.g. "--override training.n_epochs=20"
TICKET=$(layout ticket_file "$DOC" "$RATIO" "$PRUNER" "$EB_EPOCH")
EB_DOC=$(layout eb_doc "$DOC" "$RATIO")
RUN=$(layout run_dir "$EB_DOC")
DONE=$(layout done_marker "$EB_DOC")
LATEST=$(layout latest_checkpoint "$EB_DOC")
SOURCE=$(layout epoch_checkpoint "$DOC" "$EB_EPOCH")

# Traditional EB ticket: prune the EB epoch's checkpoint, then fine-tune on all timesteps.
if [ ! -f "$TICKET" ]; then
  # shellcheck disable=SC2086
  "$PYTHON" earlybird_scripts/prune.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni \
    --use_ema --restore_from "$SOURCE" --pruner "$PRUNER" \
    --pruning_ratio "$RATIO" --save_pruned_model $EXTRA
fi
if [ -f "$DONE" ]; then
  echo "EB ticket already fine-tuned: $RUN (delete its DONE file to train it again)"
elif [ -f "$LATEST" ]; then
  # shellcheck disable=SC2086
  "$PYTHON" main.py --config "$CONFIG" --exp "$EXP" --doc "$EB_DOC" --use_ema \
    --resume_training $EXTRA
else
  # shellcheck disable=SC2086
  "$PYTHON" main.py --config "$CONFIG" --timesteps 100 --eta 0 --ni --exp "$EXP" \
    --doc "$EB_DOC" --skip_type quad --use_ema --load_pruned_model "$TICKET" $EXTRA
fi

# One region ticket by hand: the same plus --ts_range LO HI.
#   $PYTHON main.py ... --doc ${DOC}_taeb_240_440 --load_pruned_model TICKET --ts_range 240 440

# TA-EB: every region of taeb.regions, in parallel (one GPU each), manifest in
# $EXP/tickets/$DOC/tickets.yml. A rerun finishes only unfinished tickets.
# shellcheck disable=SC2086
"$PYTHON" earlybird_scripts/train_tickets.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" \
  ${GPUS:+--gpus "$GPUS"} $EXTRA
