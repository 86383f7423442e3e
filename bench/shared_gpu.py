"""Several tickets on one GPU: K processes, each training the p = 0.8 ticket of the CIFAR-10
UNet for the same number of steps at the same time; total images/s for K = 1, 3, 4 (what
train_tickets.py --tickets_per_gpu K buys). Without CUDA MPS the processes time-slice the GPU,
which still hides each one's host time; start MPS first to let their kernels overlap.

  python bench/shared_gpu.py --device cuda --batch 128 --counts 1 3 4 --steps 30
"""
import argparse
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(a):
    from common import bench_config, median_time, our_step_fn, tickets
    from train_step import SMOKE
    cfg = bench_config(a.config, (SMOKE if a.smoke else []) + list(a.override))
    _, _, tk = tickets(cfg, [a.ratio])
    d = cfg.data
    x = torch.rand(a.batch, d.channels, d.image_size, d.image_size) * 2 - 1
    device = torch.device(a.device)
    step = our_step_fn(cfg, tk[a.ratio][0], x, device)
    median_time(step, device, 3, 3)  # warm-up (and a graph's capture)
    while time.time() < a.start_at:  # every process starts its timed steps together
        time.sleep(0.01)
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"{time.perf_counter() - t0:.4f}")


def main(argv=None):
    from common import add_bench_args
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_args(p)
    p.add_argument("--ratio", type=float, default=0.8)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 3, 4])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--override", nargs="*", default=[], help="config overrides for the step")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start_at", type=float, default=0.0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return worker(a)
    print(f"tickets sharing one device ({a.config}, p={a.ratio:g}, batch {a.batch}, "
          f"{a.device}{', ' + ' '.join(a.override) if a.override else ''})", flush=True)
    base = None
    for k in a.counts:
        start = time.time() + 10 + 3 * k  # time for every process to build and warm up
        cmd = [sys.executable, os.path.join(HERE, "shared_gpu.py"), "--worker", "--start_at",
               str(start)] + [f"--{n}={v}" for n, v in (("config", a.config),
                                                         ("device", a.device),
                                                         ("batch", a.batch),
                                                         ("ratio", a.ratio),
                                                         ("steps", a.steps))]
        cmd += (["--smoke"] if a.smoke else []) + (["--override"] + a.override
                                                   if a.override else [])
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE)
                 for _ in range(k)]
        times = [float(pr.communicate()[0].strip().splitlines()[-1]) for pr in procs]
        ips = k * a.steps * a.batch / max(times)
        base = base or ips
        print(f"row: {k} ticket(s) at once | {ips:.0f} images/s in all | {ips / base:.2f}x one "
              f"alone | slowest {max(times):.2f}s for {a.steps} steps, "
              f"{max(times) / (times[0] if k == 1 else min(times)):.2f}x the fastest",
              flush=True)
    return 0


if __name__ == "__main__":
    main()
