"""Epoch x epoch mask overlap matrix (1 - normalised Hamming distance), as .npy and .csv."""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    from core.options import add_series_args
    p = argparse.ArgumentParser(description=__doc__)
    add_series_args(p)
    p.add_argument("--output", default=None,
                   help="output stem (default: overlap-{ratio}-{pruner} in --mask_dir)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    import numpy as np

    from models.earlybird import overlap_matrix
    from core.layout import overlap_stem_in
    from runners.masks import load_mask_series, pruner_arg
    from utils.io import atomic_path, atomic_write_text
    pruner = pruner_arg(a.pruner)
    series = load_mask_series(a.mask_dir, a.pruning_ratio, pruner, start_epoch=a.start_epoch,
                              end_epoch=a.end_epoch, doc=a.doc)
    epochs = [e for e, _ in series]
    mat = overlap_matrix([m for _, m in series])
    stem = a.output or overlap_stem_in(a.mask_dir, a.pruning_ratio, pruner)
    with atomic_path(stem + ".npy") as tmp, open(tmp, "wb") as f:
        np.save(f, mat)
    rows = ["epoch," + ",".join(map(str, epochs))]
    rows += [f"{e}," + ",".join(f"{v:.6f}" for v in row) for e, row in zip(epochs, mat)]
    atomic_write_text(stem + ".csv", "\n".join(rows) + "\n")
    print(f"overlap of {len(epochs)} epochs ({epochs[0]}..{epochs[-1]}) -> {stem}.npy, "
          f"{stem}.csv")
    return 0


if __name__ == "__main__":
    run_cli(main)
