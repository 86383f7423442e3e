"""The benchmark suite (one table per run): dense training images/s of our loop vs the seed's
loop, ticket speed-up vs MACs reduction, model FLOPs utilisation on CUDA, stitched vs single
sampling, peak memory, and (CUDA) bf16 vs fp32 training loss from the same seed.

  python bench/suite.py                          # CPU: CIFAR-10 config, batch 8
  python bench/suite.py --device cuda --batch 128 --bf16_steps 200
  python bench/suite.py --smoke                  # tiny model, two steps (run by the tests)
"""
import argparse
import copy
import time

import torch

from common import (LiveRows, bench_config, median_time, our_step_fn, peak_mb, print_table,
                    reset_peak, seed_loop, sync, tickets)
from models.diffusion import Diffusion, sample_images
from models.stitched import StitchedTickets
from models.networks import build_network
from core.runlog import training_flops
from train_step import SMOKE


def bf16_peak_tflops(device, n=8192, iters=10):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = median_time(lambda: a @ b, device, warmup=3, iters=iters)
    return 2 * n ** 3 / t / 1e12


def loss_curve(cfg, steps, device, amp, seed=0):
    """Mean training loss over ``steps`` steps from a fixed seed with amp on or off."""
    cfg = cfg.with_overrides([f"fast.amp={amp}"])
    torch.manual_seed(seed)
    model = build_network(cfg.model_kwargs())
    d = cfg.data
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(8, cfg.training.batch_size, d.channels, d.image_size,
                      d.image_size, generator=g) * 2 - 1
    it = iter(range(10 ** 9))
    step = our_step_fn(cfg, model, lambda: data[next(it) % len(data)], device)
    torch.manual_seed(seed)
    losses = [step()[0] for _ in range(steps)]
    return torch.stack(losses).float().mean().item()


def sampling_speed(model, cfg, batch, device, steps, amp_cfg):
    from core.device import autocast_for
    d = cfg.data
    diffusion = Diffusion(**vars(cfg.diffusion), device=device)
    noise = torch.randn(batch, d.channels, d.image_size, d.image_size, device=device)
    autocast = autocast_for(amp_cfg, device)
    model.eval()

    def run():
        sample_images(model, diffusion, noise, timesteps=steps, skip_type="quad",
                      sample_type="generalized", eta=0.0, autocast=autocast)
    reset_peak(device)
    t = median_time(run, device, warmup=1, iters=2)
    return batch / t, peak_mb(device)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10.yml")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.6, 0.8])
    p.add_argument("--sample_steps", type=int, default=None)
    p.add_argument("--bf16_steps", type=int, default=0, help="CUDA: bf16 vs fp32 loss check")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--smoke", action="store_true", help="tiny model, two steps")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cfg = bench_config(a.config, SMOKE if a.smoke else [])
    batch = a.batch or (128 if device.type == "cuda" else 8)
    iters = 2 if a.smoke else a.iters
    d = cfg.data
    rows = LiveRows()
    x = torch.rand(batch, d.channels, d.image_size, d.image_size) * 2 - 1

    # 1. dense: our loop vs the seed's loop (same model, batch, process)
    dense, (p0, m0), tk = tickets(cfg, a.ratios)
    reset_peak(device)
    seed_step = seed_loop(cfg, copy.deepcopy(dense), batch, device,
                          n_images=batch * (iters + 3))
    t_seed = median_time(seed_step, device, min(2, iters), iters)
    mem_seed = peak_mb(device)
    reset_peak(device)
    t_ours = median_time(our_step_fn(cfg, copy.deepcopy(dense), x, device), device,
                         min(2, iters), iters)
    mem_ours = peak_mb(device)
    rows.append(["dense, seed-style loop (fp32, DataLoader, .item())", f"{batch / t_seed:.1f}",
                 "1.00", "", f"{mem_seed:.0f}"])
    rows.append(["dense, our loop (fast path)", f"{batch / t_ours:.1f}",
                 f"{t_seed / t_ours:.2f}", "", f"{mem_ours:.0f}"])

    # 2. tickets vs MACs reduction (fast path on)
    for r, (model, p, m) in tk.items():
        reset_peak(device)
        t = median_time(our_step_fn(cfg, model, x, device), device, min(2, iters), iters)
        rows.append([f"ticket {r:g} (MACs /{m0 / m:.2f})", f"{batch / t:.1f}",
                     f"{t_seed / t:.2f}", f"{(t_ours / t) / (m0 / m):.2f}",
                     f"{peak_mb(device):.0f}"])

    # 3. model FLOPs utilisation (CUDA)
    mfu = None
    if device.type == "cuda":
        peak = bf16_peak_tflops(device)
        from models.pruning import count_flops
        achieved = training_flops(count_flops(dense, cfg.model_kwargs()), batch / t_ours) / 1e12
        mfu = (achieved, peak)
        print(f"MFU: {achieved:.1f} / {peak:.1f} TFLOP/s", flush=True)

    # 4. stitched vs single-model sampling
    steps = a.sample_steps or (5 if a.smoke else 20)
    T = cfg.diffusion.num_diffusion_timesteps
    # denser tickets for less noise, as in TA-EB: first three ratios over three regions
    regions = [(0, T // 4), (T // 4, T // 2), (T // 2, T)]
    stitched = (StitchedTickets([tk[r][0] for r in sorted(tk)[:3]], regions, T)
                if len(tk) >= 3 else None)
    sb = min(batch, 64)
    ips_single, mem_single = sampling_speed(dense.to(device), cfg, sb, device, steps, cfg)
    rows.append([f"sampling, dense ({steps} steps)", f"{ips_single:.1f}", "", "",
                 f"{mem_single:.0f}"])
    if stitched is not None:
        ips_st, mem_st = sampling_speed(stitched.to(device), cfg, sb, device, steps, cfg)
        rows.append([f"sampling, stitched tickets {sorted(tk)[:3]}", f"{ips_st:.1f}",
                     f"{ips_st / ips_single:.2f} vs dense", "", f"{mem_st:.0f}"])

    # 5. torch.compile last: the slowest and least certain measurement
    if a.compile:
        c = cfg.with_overrides(["fast.compile=true"])
        try:
            t_c = median_time(our_step_fn(c, copy.deepcopy(dense), x, device), device, 3, iters)
            rows.append(["dense, our loop + torch.compile", f"{batch / t_c:.1f}",
                         f"{t_seed / t_c:.2f}", "", ""])
        except Exception as e:  # a compiler failure must not cost the other rows
            rows.append(["dense, our loop + torch.compile",
                         f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}", "", "", ""])

    print_table(f"benchmark suite: {a.config}, batch {batch}, {device}"
                + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                   f" ({torch.get_num_threads()} threads)"),
                ["what", "images/s", "speed-up vs seed loop", "ticket speed-up / MACs reduction",
                 "peak MB (CUDA: this row; CPU: process max RSS so far)"], rows)
    if mfu:
        print(f"\nMFU: achieved {mfu[0]:.1f} TFLOP/s (3 x forward FLOPs from FlopCounterMode x images/s) / "
              f"measured bf16 peak {mfu[1]:.1f} TFLOP/s = {100 * mfu[0] / mfu[1]:.1f}%")
    if a.bf16_steps and device.type == "cuda":
        t0 = time.perf_counter()
        l32 = loss_curve(cfg, a.bf16_steps, device, "off")
        l16 = loss_curve(cfg, a.bf16_steps, device, "bf16")
        print(f"bf16 vs fp32 mean loss over {a.bf16_steps} steps: {l16:.4f} vs {l32:.4f} "
              f"({100 * abs(l16 - l32) / l32:.2f}% apart; {time.perf_counter() - t0:.0f}s)")
    sync(device)
    return rows


if __name__ == "__main__":
    main()
