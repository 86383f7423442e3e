"""The bundled default's metric for a folder of generated digits (not Inception FID).

  python earlybird_scripts/digits_metric.py runs/samples/digits --image_size 16
"""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("samples", help="folder of generated digits")
    p.add_argument("--image_size", type=int, default=16,
                   help="size the digits are compared at; smaller square samples are "
                        "upsampled as the data set's digits are (default: %(default)s)")
    p.add_argument("--dataset", default="DIGITS",
                   help="the real digits compared with: DIGITS or MNIST5K (default: "
                        "%(default)s)")
    p.add_argument("--n_samples", type=int, default=None,
                   help="use (and require) N samples (default: all)")
    p.add_argument("--cache_dir", default="data",
                   help="where the classifier is cached (default: %(default)s)")
    p.add_argument("--output", default=None, help="write the result as JSON (default: none)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from evaluation.digits_metric import evaluate, load_folder
    from runners.sample import folder_metadata
    from utils.io import atomic_write_json
    res = evaluate(load_folder(a.samples, a.image_size, a.n_samples), a.image_size, a.cache_dir,
                   a.dataset)
    print(f"digits-FD {res['digits_fd']:.3f} over {res['n']} samples (classifier accuracy on "
          f"held-out real digits {res['classifier_acc']:.3f}; not Inception FID); valid "
          f"{res['valid']:.1%} (classifier confidence >= {res['valid_confidence']:g}; held-out "
          f"real digits {res['real_valid']:.1%}); noise-like {res['noise_like']:.1%} (rougher "
          f"than every real digit)")
    if a.output:
        atomic_write_json(a.output, dict(res, sampled_with=folder_metadata(a.samples)))
    return 0


if __name__ == "__main__":
    run_cli(main)
