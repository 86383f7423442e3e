"""Training-step time of the dense network and its tickets in every step mode, in one process:
eager with bf16 autocast (today's default on a GPU), eager with bf16 weights and fp32 master
weights (fast.amp: bf16_weights), the whole step as a CUDA graph (fast.cuda_graph) with each,
and optionally torch.compile. Rows print as they are measured; with --sync_check every mode then
runs 3 steps under torch.cuda.set_sync_debug_mode("error") (a step that reads the host fails).

  python bench/step_modes.py --device cuda --batch 128 --ratios 0.3 0.6 0.8 [--compile]
"""
import argparse

import torch

from common import (LiveRows, add_bench_args, bench_config, median_time, our_step_fn,
                    print_table, tickets)
from train_step import SMOKE

MODES = {"eager, bf16 autocast": ["fast.amp=bf16", "fast.cuda_graph=false"],
         "eager, bf16 weights": ["fast.amp=bf16_weights", "fast.cuda_graph=false"],
         "graph, bf16 autocast": ["fast.amp=bf16", "fast.cuda_graph=true"],
         "graph, bf16 weights": ["fast.amp=bf16_weights", "fast.cuda_graph=true"]}


def sync_free(step, device):
    """Whether 3 steps run with host syncs made errors."""
    if device.type != "cuda":
        return "–"
    step()
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
        return "yes"
    except RuntimeError as e:
        return f"no ({str(e).splitlines()[0][:60]})"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.6, 0.8])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--compile", action="store_true", help="add eager + torch.compile rows")
    p.add_argument("--sync_check", action="store_true")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    modes = dict(MODES)
    if a.compile:
        modes["compiled, bf16 autocast"] = ["fast.amp=bf16", "fast.compile=true"]
    base = SMOKE if a.smoke else []
    cfg0 = bench_config(a.config, base)
    dense, (p0, m0), tk = tickets(cfg0, a.ratios)
    nets = [("dense", dense, m0)] + [(f"ticket {r:g}", tk[r][0], tk[r][2]) for r in a.ratios]
    d = cfg0.data
    x = torch.rand(a.batch, d.channels, d.image_size, d.image_size) * 2 - 1
    rows, base_ms = LiveRows(), {}
    for name, net, macs in nets:  # networks outer, modes inner: load drift hits all modes
        for mode, overrides in modes.items():
            cfg = bench_config(a.config, base + overrides)
            try:
                step = our_step_fn(cfg, net, x, device)
                t = median_time(step, device, min(4, a.iters), a.iters)
            except Exception as e:  # one mode failing must not cost the others
                rows.append([name, mode, f"failed: {str(e).splitlines()[0][:60]}", "", "", ""])
                continue
            base_ms.setdefault(mode, {})[name] = t
            dense_t = base_ms[mode].get("dense", t)
            syncs = sync_free(step, device) if a.sync_check else "–"
            rows.append([name, mode, f"{t * 1000:.1f}", f"{dense_t / t:.2f}",
                         f"{m0 / macs:.2f}", syncs])
    print_table(f"step modes ({a.config}, batch {a.batch}, {device})",
                ["network", "mode", "step (ms)", "speed-up vs dense, same mode",
                 "MACs reduction", "no host sync"], rows)
    return 0


if __name__ == "__main__":
    main()
