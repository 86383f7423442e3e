"""Write a config's data set as PNGs (what cal_fid.sh compares samples against).

  python earlybird_scripts/export_images.py --config cifar10.yml --out data/cifar-10-images
"""
import argparse
import os

import _common  # noqa: F401
from tqdm import tqdm

from datasets import get_dataset
from runners.config import add_override_flag, flatten_overrides, load_config
from runners.errors import run_cli
from runners.sample import save_png


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--limit", type=int, default=None)
    add_override_flag(p)
    a = p.parse_args(argv)
    cfg = load_config(a.config, flatten_overrides(a.override))
    ds = get_dataset(cfg, train=a.split == "train")
    n = min(len(ds), a.limit or len(ds))
    os.makedirs(a.out, exist_ok=True)
    for i in tqdm(range(n), desc="export"):
        path = os.path.join(a.out, f"{i:06d}.png")
        if not os.path.isfile(path):
            save_png(ds[i].float() / 255.0, path)
    print(f"{n} images in {a.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
