"""Training-step time of a dense network and of its tickets at pruning ratios 0.3 / 0.6 / 0.8,
measured in the same process, next to each ticket's MACs reduction; with and without
kernel-friendly widths (pruning.round_to). One table per config: by default the UNet and the
DiT of CIFAR-10 (configs/cifar10.yml, configs/cifar10_dit.yml: 6.07 GMACs each).

  python bench/ticket_speed.py --config cifar10.yml cifar10_dit.yml --batch 8 --round_to 0 8

"speed-up / MACs reduction" is 1.00 when step time falls as fast as the MACs; the column
"odd widths" counts convolutions and Linear layers whose output width is not a multiple of 8
(a DiT prunes whole heads and per-unit MLP widths; round_to rounds the UNet's channels and
the DiT's MLP widths, its heads are whole anyway).
"""
import argparse

import torch

from common import LiveRows, bench_config, median_time, our_step_fn, print_table, tickets
from train_step import SMOKE


def odd_widths(model, multiple=8):
    layers = [m.out_channels if isinstance(m, torch.nn.Conv2d) else m.out_features
              for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return sum(1 for w in layers if w % multiple), len(layers)


def measure(cfg, ratios, batch, device, iters, round_tos=(0,)):
    d = cfg.data
    x = torch.rand(batch, d.channels, d.image_size, d.image_size) * 2 - 1
    warm = min(2, iters)
    nets = {}
    for rt in round_tos:
        dense, (p0, m0), tk = tickets(cfg, ratios, round_to=rt)
        nets[rt] = tk
    t0 = median_time(our_step_fn(cfg, dense, x, device), device, warm, iters)
    odd, n = odd_widths(dense)
    rows = LiveRows()
    rows.append(["dense", "–", f"{p0 / 1e6:.2f}", f"{m0 / 1e9:.3f}", "1.00", f"{t0 * 1000:.1f}",
                 "1.00", "–", f"{odd}/{n}"])
    # interleave the settings ratio by ratio, so drift in machine load hits both alike
    for r in ratios:
        for rt in round_tos:
            model, p, m = nets[rt][r]
            t = median_time(our_step_fn(cfg, model, x, device), device, warm, iters)
            macs_red, speed = m0 / m, t0 / t
            odd, n = odd_widths(model)
            rows.append([f"ticket {r:g}", str(rt or "–"), f"{p / 1e6:.2f}", f"{m / 1e9:.3f}",
                         f"{macs_red:.2f}", f"{t * 1000:.1f}", f"{speed:.2f}",
                         f"{speed / macs_red:.2f}", f"{odd}/{n}"])
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", default=["cifar10.yml", "cifar10_dit.yml"],
                   help="one table per config (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.6, 0.8])
    p.add_argument("--round_to", type=int, nargs="+", default=[0, 8],
                   help="pruning.round_to settings to compare (0: off)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--compile", action="store_true",
                   help="time every network's step under torch.compile (fast.compile)")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    tables = {}
    for name in a.config:
        cfg = bench_config(name, (SMOKE if a.smoke else []) +
                           [f"fast.compile={str(a.compile).lower()}"])
        rows = measure(cfg, a.ratios, a.batch, device, 2 if a.smoke else a.iters, a.round_to)
        print_table(f"ticket speed ({name}: {cfg.model.type}, batch {a.batch}, {device}, "
                    + ("torch.compile, " if a.compile else "")
                    + f"{torch.get_num_threads()} threads)",
                    ["network", "round_to", "params (M)", "GMACs", "MACs reduction",
                     "step (ms)", "speed-up", "speed-up / MACs reduction", "odd widths"], rows)
        tables[name] = rows
    return tables


if __name__ == "__main__":
    main()
