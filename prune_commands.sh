#!/usr/bin/env bash
# Masks (and pruned models) of every per-epoch checkpoint, then the early-bird epoch per ratio.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
PRUNER=${PRUNER:-magnitude}          # magnitude | taylor | random | diff-pruning (ours)
RATIOS=${RATIOS:-"0.3 0.6 0.8"}
WINDOW=${WINDOW:-5}
THRESHOLD=${THRESHOLD:-0.1}
PYTHON=${PYTHON:-python}
MASKS="$EXP/pruned/$DOC/masks"

# Fast form: every checkpoint and every ratio in one process (one dependency graph).
# shellcheck disable=SC2086
"$PYTHON" earlybird_scripts/prune.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni \
  --use_ema --restore_from "$EXP/logs/$DOC" --pruner "$PRUNER" --pruning_ratio $RATIOS \
  --thr 0.05 --save_masks

# The seed's form, one checkpoint and one ratio per process (also saves the pruned model):
#   $PYTHON earlybird_scripts/prune.py --config $CONFIG --exp $EXP --doc $DOC --ni --use_ema \
#     --restore_from $EXP/logs/$DOC/ckpt_ep3.pth --pruner $PRUNER --pruning_ratio 0.3 \
#     --thr 0.05 --save_pruned_model ${DOC}_pruned-0.3-$PRUNER-3.pth --save_masks

for R in $RATIOS; do
  "$PYTHON" earlybird_scripts/find_earlybird.py --mask_dir "$MASKS" --pruning_ratio "$R" \
    --pruner "$PRUNER" --doc "$DOC" --window "$WINDOW" --threshold "$THRESHOLD"
  "$PYTHON" earlybird_scripts/calculate_overlap.py --mask_dir "$MASKS" --pruning_ratio "$R" \
    --pruner "$PRUNER" --doc "$DOC"
done
# shellcheck disable=SC2086
"$PYTHON" earlybird_scripts/plot_overlap.py --mask_dir "$MASKS" --pruning_ratio $RATIOS \
  --pruner "$PRUNER" --doc "$DOC" --window "$WINDOW" --threshold "$THRESHOLD"
