"""Heatmap PNG of the epoch x epoch mask overlap per ratio, and the distance-to-window
curves (max Hamming distance of each epoch's mask to the previous window-1 masks)."""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mask_dir", required=True, help="folder of *_pruned-*.npy masks")
    p.add_argument("--pruning_ratio", type=float, nargs="+", required=True,
                   help="one or more ratios (default: required)")
    p.add_argument("--pruner", default="magnitude",
                   help="importance of the series; 'ours' = diff-pruning (default: %(default)s)")
    p.add_argument("--doc", default=None,
                   help="only masks of this run, when a folder mixes runs (default: all)")
    p.add_argument("--window", type=int, default=5,
                   help="early-bird FIFO length (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=0.1,
                   help="early-bird distance threshold (default: %(default)s)")
    p.add_argument("--out_dir", default=None, help="(default: --mask_dir)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from runners.masks import pruner_arg
    from runners.plots import plot_mask_series
    pruner = pruner_arg(a.pruner)
    paths = plot_mask_series(a.mask_dir, a.pruning_ratio, pruner, a.out_dir or a.mask_dir,
                             doc=a.doc, window=a.window, threshold=a.threshold)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
