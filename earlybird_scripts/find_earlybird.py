"""Find the early-bird epoch from a folder of masks (normalised Hamming distance, FIFO rule).

  python earlybird_scripts/find_earlybird.py --mask_dir checkpoints/pruned/cifar10/masks \
      --pruning_ratio 0.3 --pruner magnitude [--window 5 --threshold 0.1]
"""
import argparse

import _common  # noqa: F401

from utils.errors import UserError, run_cli


def build_parser():
    from core.options import add_rule_args, add_series_args
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_series_args(p)
    add_rule_args(p)
    p.add_argument("--output", default=None,
                   help="JSON result (default: earlybird-{ratio}-{pruner}.json in --mask_dir)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from models.earlybird import find_earlybird
    from core.layout import earlybird_result_in
    from runners.masks import load_mask_series, pruner_arg
    from core.config import check_setting
    from utils.io import atomic_write_json
    check_setting("pipeline", "pruning_ratio", a.pruning_ratio, "--pruning_ratio")
    check_setting("earlybird", "window", a.window, "--window")
    check_setting("earlybird", "threshold", a.threshold, "--threshold")
    pruner = pruner_arg(a.pruner)
    series = load_mask_series(a.mask_dir, a.pruning_ratio, pruner, start_epoch=a.start_epoch,
                              end_epoch=a.end_epoch, doc=a.doc)
    first, last = series[0][0], series[-1][0]
    if len(series) < a.window:
        raise UserError(f"{a.mask_dir}: {len(series)} masks (epochs {first}..{last}) for ratio "
                        f"{a.pruning_ratio:g}: a window of {a.window} can never fill; nothing "
                        f"written")
    eb, det = find_earlybird(series, window=a.window, threshold=a.threshold)
    for epoch, max_d, dists in det.history:
        shown = ", ".join(f"{d:.4f}" for d in dists) if dists else "-"
        print(f"epoch {epoch}: distances to window [{shown}]")
    if eb is None:
        print(f"no early-bird ticket in epochs {first}..{last} "
              f"(window {a.window}, threshold {a.threshold})")
    else:
        print(f"EarlyBird found at epoch: {eb}")
    out = a.output or earlybird_result_in(a.mask_dir, a.pruning_ratio, pruner)
    atomic_write_json(out, {
        "pruning_ratio": a.pruning_ratio, "pruner": pruner, "window": a.window,
        "threshold": a.threshold, "epochs": [first, last], "eb_epoch": eb,
        "max_distance": {str(e): m for e, m, _ in det.history}})
    return 0


if __name__ == "__main__":
    run_cli(main)
