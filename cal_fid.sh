#!/usr/bin/env bash
# FID (pytorch-fid, Inception pool3) of sample folders against the config's training images.
set -euo pipefail
cd "$(dirname "$0")"
# PYTHON (the README's .venv when there is one) and `layout PATH_KIND ...`
source earlybird_scripts/env.sh
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
REAL=${REAL:-}                       # default: the config's data set exported as PNGs
N_REF=${N_REF:-}                     # use only the first N reference images (default: all)
DEVICE=${DEVICE:-auto}               # auto: CUDA when there is one, else the CPU
WEIGHTS=${WEIGHTS:-}                 # offline: a local pt_inception-2015-12-05-6726825d.pth

if [ -z "$REAL" ]; then
  # written once per data set / split / size / count (export.json says which); the statistics
  # are cached beside it, keyed by its files, the feature size and the Inception weights
  REAL=$("$PYTHON" earlybird_scripts/export_images.py --config "$CONFIG" \
    ${N_REF:+--limit "$N_REF"} | tail -n 1)
fi
for NAME in "$DOC" "$(layout taeb_name "$DOC")"; do
  FOLDER=$(layout samples_dir "$NAME")
  [ -d "$FOLDER" ] || continue
  "$PYTHON" earlybird_scripts/fid.py "$FOLDER" "$REAL" --device "$DEVICE" \
    --batch-size 200 --output "$(layout metric_file "$NAME")" \
    ${N_REF:+--n_ref "$N_REF"} ${WEIGHTS:+--inception_weights "$WEIGHTS"}
done
