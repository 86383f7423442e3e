"""Training-step time of the dense UNet and of tickets at pruning ratios 0.3 / 0.6 / 0.8,
measured in the same process, next to each ticket's MACs reduction.

  python bench/ticket_speed.py --config cifar10.yml --batch 8
"""
import argparse

import torch

from common import bench_config, median_time, our_step_fn, print_table, tickets
from train_step import SMOKE


def measure(cfg, ratios, batch, device, iters):
    dense, (p0, m0), tk = tickets(cfg, ratios)
    d = cfg["data"]
    x = torch.rand(batch, d["channels"], d["image_size"], d["image_size"]) * 2 - 1
    warm = min(2, iters)
    t0 = median_time(our_step_fn(cfg, dense, x, device), device, warm, iters)
    rows = [["dense", f"{p0 / 1e6:.2f}", f"{m0 / 1e9:.3f}", "1.00", f"{t0 * 1000:.1f}", "1.00",
             "–"]]
    for r, (model, p, m) in tk.items():
        t = median_time(our_step_fn(cfg, model, x, device), device, warm, iters)
        macs_red, speed = m0 / m, t0 / t
        rows.append([f"ticket {r:g}", f"{p / 1e6:.2f}", f"{m / 1e9:.3f}", f"{macs_red:.2f}",
                     f"{t * 1000:.1f}", f"{speed:.2f}", f"{speed / macs_red:.2f}"])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="cifar10.yml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.6, 0.8])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    cfg = bench_config(a.config, SMOKE if a.smoke else [])
    device = torch.device(a.device)
    rows = measure(cfg, a.ratios, a.batch, device, 2 if a.smoke else a.iters)
    print_table(f"ticket speed ({a.config}, batch {a.batch}, {device}, "
                f"{torch.get_num_threads()} threads)",
                ["network", "params (M)", "GMACs", "MACs reduction", "step (ms)", "speed-up",
                 "speed-up / MACs reduction"], rows)
    return rows


if __name__ == "__main__":
    main()
