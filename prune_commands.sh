#!/usr/bin/env bash
# Masks (and pruned models) of every per-epoch checkpoint, then the early-bird epoch per ratio.
set -euo pipefail
cd "$(dirname "$0")"
# PYTHON (the README's .venv when there is one) and `layout PATH_KIND ...`
source earlybird_scripts/env.sh
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
EXTRA=${EXTRA:-}                     # e.g. "--override pruning.use_ema=false"
# defaults from the config (earlybird.ratios / pruner / window / threshold); set to override
# shellcheck disable=SC2086
IFS=$'\t' read -r CFG_RATIOS CFG_PRUNER CFG_WINDOW CFG_THRESHOLD <<< \
  "$("$PYTHON" earlybird_scripts/config_value.py --config "$CONFIG" earlybird.ratios \
     earlybird.pruner earlybird.window earlybird.threshold $EXTRA | paste -sd $'\t')"
RATIOS=${RATIOS:-$CFG_RATIOS}
PRUNER=${PRUNER:-$CFG_PRUNER}        # magnitude | taylor | random | diff-pruning (ours)
WINDOW=${WINDOW:-$CFG_WINDOW}
THRESHOLD=${THRESHOLD:-$CFG_THRESHOLD}
MASKS=$(layout masks_dir "$DOC")

# Fast form: every checkpoint and every ratio in one process (one dependency graph).
# shellcheck disable=SC2086
"$PYTHON" earlybird_scripts/prune.py --config "$CONFIG" --exp "$EXP" --doc "$DOC" --ni \
  --use_ema --restore_from "$(layout run_dir "$DOC")" --pruner "$PRUNER" --pruning_ratio $RATIOS \
  --save_masks $EXTRA

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
