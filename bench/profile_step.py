"""Where a training step's time goes: the dense UNet and tickets, each profiled for a few steps
(torch.profiler), reporting step wall time, the time the device spends in kernels (CUDA), and
the top operators. When kernel time is far below wall time the step is bound by the host
(launches, Python, the optimizer's and EMA's per-tensor work), not by the network's MACs, and
a ticket cannot be faster than that floor. Step times here include the profiler's own overhead;
bench/ticket_speed.py gives the unprofiled ones.

  python bench/profile_step.py --device cuda --batch 128 --ratios 0 0.8
"""
import argparse
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from common import bench_config, our_step_fn, sync, tickets
from train_step import SMOKE


def profile_net(cfg, model, x, device, steps, top, warmup=3):
    step = our_step_fn(cfg, model, x, device)
    for _ in range(warmup):
        step()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    # the device's own events only (operators on the host also carry their kernels' time)
    kernels = [e for e in events if e.device_type == DeviceType.CUDA
               and not getattr(e, "is_user_annotation", False)]
    kernel = sum(e.self_device_time_total for e in kernels) / steps / 1e6
    n_kernels = sum(e.count for e in kernels) / steps
    table = events.table(sort_by=key, row_limit=top, max_name_column_width=48)
    return wall, kernel, n_kernels, table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10.yml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ratios", type=float, nargs="+", default=[0, 0.8],
                   help="0: the dense network")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--smoke", action="store_true", help="tiny model, one step")
    a = p.parse_args(argv)
    cfg = bench_config(a.config, SMOKE if a.smoke else [])
    device = torch.device(a.device)
    d = cfg.data
    x = torch.rand(a.batch, d.channels, d.image_size, d.image_size) * 2 - 1
    dense, _, tk = tickets(cfg, [r for r in a.ratios if r > 0])
    steps, warmup = (1, 1) if a.smoke else (a.steps, 3)
    summary = []
    for r in a.ratios:
        model = dense if r == 0 else tk[r][0]
        wall, kernel, n, table = profile_net(cfg, model, x, device, steps, a.top, warmup)
        name = "dense" if r == 0 else f"ticket {r:g}"
        print(f"\n== {name}: step {wall * 1000:.1f} ms, device kernels {kernel * 1000:.1f} ms "
              f"({100 * kernel / wall:.0f}% busy), {n:.0f} kernels per step (profiled)", flush=True)
        print(table, flush=True)
        summary.append((name, wall, kernel, n))
    print(f"\nstep profile ({a.config}, batch {a.batch}, {device})")
    for name, wall, kernel, n in summary:
        print(f"  {name:12s} step {wall * 1000:7.1f} ms  kernels {kernel * 1000:7.1f} ms  "
              f"{n:6.0f} kernels")
    return summary


if __name__ == "__main__":
    main()
