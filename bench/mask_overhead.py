"""Time to extract the masks of one checkpoint at three ratios, next to the time of one dense
training epoch (measured step time x steps per epoch), for magnitude importance and for
Diff-Pruning (whose cost is one forward + backward per visited timestep: measured per timestep
and projected for a full scan of T / stride timesteps, the worst case of its stopping rule).

  python bench/mask_overhead.py --config cifar10.yml --batch 8
"""
import argparse
import time

import torch

from common import bench_config, median_time, our_step_fn, print_table
from models.diffusion import Diffusion
from models.pruning import MaskExtractor
from models.networks import build_network
from train_step import SMOKE

DATASET_SIZE = {"CIFAR10": 50000, "CELEBA": 162770, "DIGITS": 1437, "FASHION_MNIST": 60000}


def measure(cfg, batch, device, iters, ratios=(0.3, 0.6, 0.8)):
    args = cfg.model_kwargs()
    torch.manual_seed(0)
    model = build_network(args)
    sd = model.state_dict()
    t0 = time.perf_counter()
    ex = MaskExtractor(args)  # built once per run (online) or per process (offline)
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex.load_weights(sd)
    scores, _ = ex.scores("magnitude")
    for r in ratios:
        ex.masks_from_scores(scores, r)
    t_masks = time.perf_counter() - t0
    d = cfg.data
    x = torch.rand(batch, d.channels, d.image_size, d.image_size) * 2 - 1
    # gradient-based importance runs where training does (runners/earlybird_online.py)
    ex_dev = ex if device.type == "cpu" else MaskExtractor(args, device=device)
    t_dp, dp_scan = diff_pruning_cost(cfg, ex_dev, x, iters, device)
    t_step = median_time(our_step_fn(cfg, model, x, device), device, min(2, iters), iters)
    n = DATASET_SIZE.get(d.dataset, 50000)
    steps = -(-n // batch)
    epoch = t_step * steps
    return [[f"{t_graph:.2f}", f"{t_masks:.2f}", f"{t_dp * 1000:.0f}", f"{dp_scan:.0f}",
             f"{t_step * 1000:.1f}", steps, f"{epoch:.0f}", f"{100 * t_masks / epoch:.4f}%",
             f"{100 * (t_masks + t_graph) / epoch:.4f}%", f"{100 * dp_scan / epoch:.2f}%"]]


def diff_pruning_cost(cfg, ex, x0, iters, device=torch.device("cpu")):
    """(seconds per visited timestep, seconds of a full T / stride scan) of Diff-Pruning."""
    diffusion = Diffusion(**vars(cfg.diffusion), device=device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.zeros(x0.shape[0], dtype=torch.long, device=device)
    x0 = x0.to(device)

    def one_timestep():
        diffusion.loss(ex.model, x0, t, noise).backward()
    per_t = median_time(one_timestep, device, 1, iters)
    ex.model.zero_grad(set_to_none=True)
    visited = -(-diffusion.num_timesteps // cfg.pruning.diff_stride)
    return per_t, per_t * visited


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="cifar10.yml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    cfg = bench_config(a.config, SMOKE if a.smoke else [])
    rows = measure(cfg, a.batch, torch.device(a.device), 2 if a.smoke else a.iters)
    print_table(f"mask extraction vs one dense epoch ({a.config}, batch {a.batch})",
                ["graph build (s)", "masks at 3 ratios (s)", "diff-pruning per t (ms)",
                 "diff-pruning full scan (s)", "step (ms)", "steps/epoch", "epoch (s)",
                 "masks / epoch", "(masks + graph) / epoch", "diff-pruning scan / epoch"],
                rows)
    return rows


if __name__ == "__main__":
    main()
