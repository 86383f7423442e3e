"""The bundled default's metric for a folder of generated digits (not Inception FID).

  python earlybird_scripts/digits_metric.py runs/samples/digits_dense --image_size 16
"""
import argparse
import json

import _common  # noqa: F401

from runners.checkpoint import atomic_write_text
from runners.digits_metric import evaluate, load_folder
from runners.errors import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--n_samples", type=int, default=None)
    p.add_argument("--cache_dir", default="data", help="where the classifier is cached")
    p.add_argument("--output", default=None, help="write the result as JSON")
    a = p.parse_args(argv)
    res = evaluate(load_folder(a.samples, a.image_size, a.n_samples), a.image_size, a.cache_dir)
    print(f"digits-FD {res['digits_fd']:.3f} over {res['n']} samples (classifier accuracy on "
          f"held-out real digits {res['classifier_acc']:.3f}; not Inception FID)")
    if a.output:
        atomic_write_text(a.output, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
