"""FID (pytorch-fid) between a folder of samples and a folder of real images or a .npz of
precomputed statistics (a folder's statistics are computed once and cached next to it).

  python earlybird_scripts/fid.py samples/taeb data/cifar-10-images --device cuda
  python earlybird_scripts/fid.py samples/taeb data/cifar-10-images --save_stats cifar10.npz
"""
import argparse
import json

import _common  # noqa: F401

from runners.errors import run_cli
from runners.fid import fid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="folder of generated images")
    p.add_argument("reference", help="folder of real images, or a .npz with mu and sigma")
    p.add_argument("--n_samples", type=int, default=None, help="use (and require) N samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=50)
    p.add_argument("--dims", type=int, default=2048)
    p.add_argument("--inception_weights", default=None,
                   help="local pt_inception-2015-12-05 weights (no download)")
    p.add_argument("--stats_cache", default=None, help="where to cache a folder's statistics")
    p.add_argument("--output", default=None, help="write the result as JSON")
    a = p.parse_args(argv)
    value, n = fid(a.samples, a.reference, n=a.n_samples, dims=a.dims, device=a.device,
                   batch_size=a.batch_size, weights=a.inception_weights, cache=a.stats_cache)
    print(f"FID: {value:.4f} ({n} samples, {a.dims}-d Inception features)")
    if a.output:
        with open(a.output, "w") as f:
            json.dump({"fid": value, "n": n, "dims": a.dims, "samples": a.samples,
                       "reference": a.reference}, f, indent=1)
    return 0


if __name__ == "__main__":
    run_cli(main)
