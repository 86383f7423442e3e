"""Write a config's data set as PNGs (what cal_fid.sh compares samples against) and print the
folder. The folder (default: {data.path}/{dataset}-{split}-images) records what it holds in
export.json; a folder holding another data set, split, size or count is written again.

  python earlybird_scripts/export_images.py --config cifar10.yml
"""
import argparse
import json
import os
import sys

import _common  # noqa: F401

from utils.errors import UserError, run_cli

META = "export.json"


def build_parser():
    from core.config import add_override_flag
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    p.add_argument("--out", default=None,
                   help="folder (default: {data.path}/{dataset}-{split}-images)")
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="(default: %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="export the first N images (default: all)")
    add_override_flag(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.limit is not None and a.limit < 1:
        raise UserError("--limit must be at least 1")
    from tqdm import tqdm

    from datasets import get_dataset
    from core.config import flatten_overrides, load_config
    from runners.sample import save_png
    from utils.io import atomic_write_json
    cfg = load_config(a.config, flatten_overrides(a.override))
    d = cfg.data
    out = a.out or os.path.join(d.path, f"{d.dataset.lower()}-{a.split}-images")
    ds = get_dataset(cfg, train=a.split == "train")
    n = min(len(ds), a.limit or len(ds))
    meta = {"dataset": d.dataset, "split": a.split, "image_size": d.image_size,
            "channels": d.channels, "n": n,
            "source": d.path if d.dataset == "FOLDER" else None}
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, META)
    old = None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    if old != meta and pngs:
        print(f"{out} held {len(pngs)} images of another export; writing it again",
              file=sys.stderr)
        for f in pngs:
            os.remove(os.path.join(out, f))
    for i in tqdm(range(n), desc="export", disable=True if n < 1000 else None):
        path = os.path.join(out, f"{i:06d}.png")
        if not os.path.isfile(path):
            save_png(ds[i].float() / 255.0, path)
    atomic_write_json(meta_path, meta)
    print(out)
    return 0


if __name__ == "__main__":
    run_cli(main)
