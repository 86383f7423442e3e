"""How much digits-FD moves with the sampling noise alone, by sample count: one network, two
disjoint noise sets of N images each, digits-FD (and 'valid') of the first n images of each for
every n. The gap between the two sets at a count is the noise a verdict reading digits-FD at
that count has to beat (the study scores its final samples at the count chosen from this).

  python bench/fd_noise.py --checkpoint runs/logs/digits/ckpt.pth --config digits.yml \
      --counts 250 500 1000 2000
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
    p.add_argument("--cache_dir", default=os.path.join("bench", "out", "metric_cache"))
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    model = ck.model_from_checkpoint(ck.load_checkpoint(a.checkpoint), a.checkpoint,
                                     use_ema=True).eval()
    score = digits_quality(a.cache_dir)
    n = max(a.counts)
    sets = []
    for k in (0, 1):
        c = replace(cfg, sampling=replace(cfg.sampling, seed=cfg.sampling.seed + k * NOISE_SEED_SHIFT))
        with torch.no_grad():
            sets.append(sample_fixed(model, c, n=n, timesteps=c.sampling.timesteps,
                                     device="cpu"))
    rows = []
    for m in sorted(a.counts):
        (_, fa, ea), (_, fb, eb) = (score(s[:m]) for s in sets)
        rows.append([m, f"{fa:.2f}", f"{fb:.2f}", f"{abs(fa - fb):.2f}",
                     f"{ea['valid']:.1%} / {eb['valid']:.1%}"])
    s = cfg.sampling
    print_table(f"digits-FD of two noise sets by sample count ({a.checkpoint}, EMA, "
                f"{s.timesteps} {s.skip_type} steps, eta {s.eta:g})",
                ["images", "digits-FD, set A", "set B", "gap", "valid, A / B"], rows)
    return rows


if __name__ == "__main__":
    main()
