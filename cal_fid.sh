#!/usr/bin/env bash
# FID (pytorch-fid, Inception pool3) of sample folders against the training images.
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${CONFIG:-cifar10.yml}
EXP=${EXP:-checkpoints}
DOC=${DOC:-cifar10}
REAL=${REAL:-data/cifar-10-images}   # written once below; its statistics are cached beside it
DEVICE=${DEVICE:-cuda}
WEIGHTS=${WEIGHTS:-}                 # offline: a local pt_inception-2015-12-05-6726825d.pth
PYTHON=${PYTHON:-python}

if [ ! -d "$REAL" ]; then
  "$PYTHON" earlybird_scripts/export_images.py --config "$CONFIG" --out "$REAL"
fi
for NAME in "$DOC" "${DOC}_taeb"; do
  [ -d "$EXP/samples/$NAME" ] || continue
  "$PYTHON" earlybird_scripts/fid.py "$EXP/samples/$NAME" "$REAL" --device "$DEVICE" \
    --batch-size 200 --output "$EXP/samples/$NAME.metric.json" \
    ${WEIGHTS:+--inception_weights "$WEIGHTS"}
done
