"""Find the early-bird epoch from a folder of masks (normalised Hamming distance, FIFO rule).

  python earlybird_scripts/find_earlybird.py --mask_dir checkpoints/pruned/cifar10/masks \
      --pruning_ratio 0.3 --pruner magnitude [--window 5 --threshold 0.1]
"""
import argparse
import json
import os

import _common  # noqa: F401

from models.earlybird import find_earlybird
from runners.checkpoint import atomic_write_text
from runners.errors import UserError, run_cli
from runners.masks import add_series_args, load_mask_series, pruner_arg


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_args(p)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--output", default=None, help="JSON result (default: in --mask_dir)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if not 0 < a.pruning_ratio < 1:
        raise UserError(f"--pruning_ratio {a.pruning_ratio}: must be in (0, 1)")
    if a.window < 2:
        raise UserError("--window must be at least 2")
    pruner = pruner_arg(a.pruner)
    series = load_mask_series(a.mask_dir, a.pruning_ratio, pruner, a.start_epoch, a.end_epoch,
                              doc=a.doc)
    eb, det = find_earlybird(series, a.window, a.threshold)
    for epoch, max_d, dists in det.history:
        shown = ", ".join(f"{d:.4f}" for d in dists) if dists else "-"
        print(f"epoch {epoch}: distances to window [{shown}]")
    first, last = series[0][0], series[-1][0]
    if eb is None:
        print(f"no early-bird ticket in epochs {first}..{last} "
              f"(window {a.window}, threshold {a.threshold})")
    else:
        print(f"EarlyBird found at epoch: {eb}")
    out = a.output or os.path.join(a.mask_dir, f"earlybird-{a.pruning_ratio:g}-{pruner}.json")
    atomic_write_text(out, json.dumps({
        "pruning_ratio": a.pruning_ratio, "pruner": pruner, "window": a.window,
        "threshold": a.threshold, "epochs": [first, last], "eb_epoch": eb,
        "max_distance": {str(e): m for e, m, _ in det.history}}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
