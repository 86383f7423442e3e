"""Median training-step time and images/s of the dense network for a config and batch size.

  python bench/train_step.py --config cifar10.yml --batch 8
  python bench/train_step.py --config digits.yml --batch 64
"""
import argparse

import torch

from common import (bench_config, median_time, our_step_fn, peak_mb, print_table,
                    reset_peak)
from models.networks import build_network

SMOKE = ["model.ch=16", "model.ch_mult=[1,2]", "model.num_res_blocks=1",
         "model.attn_resolutions=[]", "model.gn_groups=8", "data.image_size=8",
         "model.hidden_size=32", "model.depth=2", "model.num_heads=4"]  # (DiT: the last 3)


def measure_dense(cfg, batch, device, iters):
    torch.manual_seed(0)
    model = build_network(cfg.model_kwargs())
    d = cfg.data
    x = torch.rand(batch, d.channels, d.image_size, d.image_size) * 2 - 1
    reset_peak(device)
    step = our_step_fn(cfg, model, x, device)
    t = median_time(step, device, warmup=min(2, iters), iters=iters)
    return t, batch / t, peak_mb(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", nargs="+", default=["cifar10.yml", "digits.yml"])
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="one per config (default: 8 for cifar10, else the config's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny model, two steps")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    rows = []
    for i, name in enumerate(a.config):
        cfg = bench_config(name, SMOKE if a.smoke else [])
        batch = (a.batch[i] if a.batch else
                 (8 if name.startswith("cifar10") else cfg.training.batch_size))
        t, ips, mem = measure_dense(cfg, batch, device, 2 if a.smoke else a.iters)
        rows.append([name, batch, f"{t * 1000:.1f}", f"{ips:.1f}", f"{mem:.0f}"])
    print_table(f"dense training step ({device}, {torch.get_num_threads()} threads)",
                ["config", "batch", "median step (ms)", "images/s", "peak MB"], rows)
    return rows


if __name__ == "__main__":
    main()
