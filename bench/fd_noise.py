"""How much digits-FD moves with the sampling noise alone, by sample count: one network,
``--sets`` disjoint noise sets of N images each, digits-FD (and 'valid') of the first n images
of each for every n. The spread over the sets at a count (their standard deviation, and the
largest gap between two of them) is the noise a verdict reading digits-FD at that count has to
beat; one gap between two sets is a single draw of it (the study scores its final samples at
the count chosen from this).

  python bench/fd_noise.py --checkpoint runs/logs/digits/ckpt.pth --config digits.yml \
      --counts 250 500 1000 2000 --sets 4
"""
import argparse
import os
import sys
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import print_table  # noqa: E402
from core import checkpoint as ck  # noqa: E402
from core.config import load_config  # noqa: E402
from evaluation.curves import digits_quality, sample_fixed  # noqa: E402
from evaluation.study_page import NOISE_SEED_SHIFT  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default="digits.yml")
    p.add_argument("--counts", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--sets", type=int, default=2, help="disjoint noise sets (>= 2)")
    p.add_argument("--cache_dir", default=os.path.join("bench", "out", "metric_cache"))
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    model = ck.model_from_checkpoint(ck.load_checkpoint(a.checkpoint), a.checkpoint,
                                     use_ema=True).eval()
    score = digits_quality(a.cache_dir)
    n = max(a.counts)
    if a.sets < 2:
        p.error("--sets needs at least 2 noise sets to measure a spread")
    sets = []
    for k in range(a.sets):
        c = replace(cfg, sampling=replace(cfg.sampling, seed=cfg.sampling.seed + k * NOISE_SEED_SHIFT))
        with torch.no_grad():
            sets.append(sample_fixed(model, c, n=n, timesteps=c.sampling.timesteps,
                                     device="cpu"))
    rows = []
    for m in sorted(a.counts):
        scored = [score(s[:m]) for s in sets]
        fd = torch.tensor([f for _, f, _ in scored], dtype=torch.float64)
        rows.append([m, " / ".join(f"{v:.2f}" for v in fd.tolist()), f"{fd.mean():.2f}",
                     f"{fd.std():.2f}", f"{fd.max() - fd.min():.2f}",
                     " / ".join(f"{e['valid']:.1%}" for _, _, e in scored)])
    s = cfg.sampling
    print_table(f"digits-FD of {a.sets} noise sets by sample count ({a.checkpoint}, EMA, "
                f"{s.timesteps} {s.skip_type} steps, eta {s.eta:g})",
                ["images", "digits-FD of each set", "mean", "SD over sets", "largest gap",
                 "valid of each set"], rows)
    return rows


if __name__ == "__main__":
    main()
