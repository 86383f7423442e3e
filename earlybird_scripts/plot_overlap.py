"""Heatmap PNG of the epoch x epoch mask overlap per ratio, and the distance-to-window
curves (max Hamming distance of each epoch's mask to the previous window-1 masks)."""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    from core.options import add_rule_args, add_series_args
    p = argparse.ArgumentParser(description=__doc__)
    add_series_args(p, several_ratios=True)
    add_rule_args(p)
    p.add_argument("--out_dir", default=None, help="(default: --mask_dir)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from runners.masks import pruner_arg
    from evaluation.plots import plot_mask_series
    pruner = pruner_arg(a.pruner)
    paths = plot_mask_series(a.mask_dir, a.pruning_ratio, pruner, a.out_dir or a.mask_dir,
                             doc=a.doc, window=a.window, threshold=a.threshold,
                             start_epoch=a.start_epoch, end_epoch=a.end_epoch)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
