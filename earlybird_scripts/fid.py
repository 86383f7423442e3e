"""FID (pytorch-fid) between a folder of samples and a folder of real images or a .npz of
precomputed statistics. A folder's statistics are cached next to it with the key that
determines them (its files, their number, the feature size, the Inception weights) and
recomputed when any of these changes.

  python earlybird_scripts/fid.py samples/taeb data/cifar10-train-images
  python earlybird_scripts/fid.py samples/taeb data/cifar10-train-images --stats_cache c10.npz
"""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="folder of generated images")
    p.add_argument("reference", help="folder of real images, or a .npz with mu and sigma")
    p.add_argument("--n_samples", type=int, default=None,
                   help="use (and require) N samples (default: all)")
    p.add_argument("--n_ref", type=int, default=None,
                   help="use the first N reference images (default: all)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (CUDA when there is one) "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=50,
                   help="(default: %(default)s)")
    p.add_argument("--dims", type=int, default=2048,
                   help="Inception feature size (default: %(default)s)")
    p.add_argument("--inception_weights", default=None,
                   help="local pt_inception-2015-12-05 weights (default: pytorch-fid "
                        "downloads them)")
    p.add_argument("--stats_cache", default=None,
                   help="where to cache a folder's statistics (default: "
                        "{reference}_fid_stats_{dims}.npz)")
    p.add_argument("--output", default=None, help="write the result as JSON (default: none)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from core.device import select_device
    from evaluation.fid import fid
    from runners.sample import folder_metadata
    from utils.io import atomic_write_json
    device = str(select_device(None if a.device == "auto" else a.device))
    value, n = fid(a.samples, a.reference, n=a.n_samples, n_ref=a.n_ref, dims=a.dims,
                   device=device, batch_size=a.batch_size, weights=a.inception_weights,
                   cache=a.stats_cache)
    print(f"FID: {value:.4f} ({n} samples, {a.dims}-d Inception features)")
    if a.output:
        atomic_write_json(a.output, {"fid": value, "n": n, "dims": a.dims,
                                     "samples": a.samples, "reference": a.reference,
                                     "sampled_with": folder_metadata(a.samples)})
    return 0


if __name__ == "__main__":
    run_cli(main)
