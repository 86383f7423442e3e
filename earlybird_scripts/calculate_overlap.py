"""Epoch x epoch mask overlap matrix (1 - normalised Hamming distance), as .npy and .csv."""
import argparse
import numpy as np

import _common  # noqa: F401

from models.earlybird import overlap_matrix
from runners.layout import overlap_stem_in
from utils.errors import run_cli
from runners.masks import add_series_args, load_mask_series, pruner_arg


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    add_series_args(p)
    p.add_argument("--output", default=None,
                   help="output stem (default: overlap-{ratio}-{pruner} in --mask_dir)")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    pruner = pruner_arg(a.pruner)
    series = load_mask_series(a.mask_dir, a.pruning_ratio, pruner, a.start_epoch, a.end_epoch,
                              doc=a.doc)
    epochs = [e for e, _ in series]
    mat = overlap_matrix([m for _, m in series])
    stem = a.output or overlap_stem_in(a.mask_dir, a.pruning_ratio, pruner)
    np.save(stem + ".npy", mat)
    with open(stem + ".csv", "w") as f:
        f.write("epoch," + ",".join(map(str, epochs)) + "\n")
        for e, row in zip(epochs, mat):
            f.write(f"{e}," + ",".join(f"{v:.6f}" for v in row) + "\n")
    print(f"overlap of {len(epochs)} epochs ({epochs[0]}..{epochs[-1]}) -> {stem}.npy, "
          f"{stem}.csv")
    return 0


if __name__ == "__main__":
    run_cli(main)
