"""The CUDA-graph step against the eager step, on the device that captures it (bench/gpu_check.sh's
first stage; about 30 s on a GPU). From the same state, 8 steps of 8 different batches eagerly
and through the graph (3 warm-up steps, the capture, replays): losses, weights, EMA, Adam's step
count and the RNG state must agree; the same batch replayed twice must draw fresh noise; a run
resumed from a state saved without the graph must capture and step; fast.amp: bf16_weights must
capture and train. Then a short training run fed by a DataLoader (an image folder read image by
image, pinned memory, two workers) with fast.cuda_graph. Prints one line per check and exits 1
if any fails. On a machine without CUDA the graph-safe step runs eagerly (a smoke run of the
same checks; the graph itself is not exercised there).

  python bench/graph_check.py --device cuda
"""
import argparse
import copy
import os
import subprocess
import sys
import tempfile
import types
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.config import load_config  # noqa: E402
from core.device import autocast_for  # noqa: E402
from models.diffusion import Diffusion  # noqa: E402
from models.ema import EMA  # noqa: E402
from models.resample import AntitheticSampler  # noqa: E402
from models.networks import build_network  # noqa: E402
from runners.graph_step import GraphStep  # noqa: E402
from runners.optim import make_optimizer  # noqa: E402
from runners.step import MasterWeights, NonFinite, train_step  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(cfg, device, *, bf16=False, graph_safe=True, seed=0):
    torch.manual_seed(seed)
    model = build_network(cfg.model_kwargs()).to(device)
    master = MasterWeights(model) if bf16 else None
    opt = make_optimizer(cfg, model.parameters(), device, graph_safe=graph_safe)
    return types.SimpleNamespace(model=model, train_model=master.compute if bf16 else model,
                                 optimizer=opt, ema=EMA(model, cfg.model.ema_rate),
                                 master=master,
                                 nonfinite=NonFinite(device, first_step=0, skip=False))


def step_kw(cfg, device):
    d = cfg.diffusion
    return dict(sampler=AntitheticSampler(0, d.num_diffusion_timesteps),
                diffusion=Diffusion(**vars(d), device=device),
                autocast=nullcontext if cfg.fast.amp in ("off", "bf16_weights") else
                autocast_for(cfg, device), grad_clip=cfg.optim.grad_clip, channels_last=False,
                grad_accum=1)


def flat(params):
    return torch.cat([p.detach().float().flatten() for p in params])


def run_steps(cfg, device, batches, *, graph, bf16=False, run=None, lr=1e-3):
    run = run or make_run(cfg, device, bf16=bf16)
    kw = step_kw(cfg, device)
    step = GraphStep(run, device=device, full_batch=batches[0].shape[0], **kw) if graph else \
        (lambda x, lr: train_step(run, x, lr=lr, **kw))
    gen = torch.cuda if device.type == "cuda" else torch
    gen.manual_seed(5)
    losses = [float(step(x, lr)[0]) for x in batches]
    return (losses, flat(run.model.parameters()), flat(run.ema.shadow.parameters()),
            sorted(float(s["step"]) for s in run.optimizer.state.values()),
            gen.get_rng_state() if device.type != "cuda" else torch.cuda.get_rng_state(),
            getattr(step, "graph", None) is not None)


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cfg = load_config("digits.yml", ["fast.amp=off"])
    g = torch.Generator().manual_seed(1)
    size = cfg.data.image_size
    batches = [(torch.rand(a.batch, 1, size, size, generator=g) * 2 - 1).to(device)
               for _ in range(8)]
    results = []
    print(f"graph check on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no CUDA: eager smoke run'}), batch {a.batch}")

    e, gr = (run_steps(cfg, device, batches, graph=flag) for flag in (False, True))
    dl = max(abs(x - y) / abs(x) for x, y in zip(e[0], gr[0]))
    results.append(check("8 steps, 8 batches: losses", dl < 1e-4, f"max rel diff {dl:.2e}"))
    dw, de = (e[1] - gr[1]).abs().max().item(), (e[2] - gr[2]).abs().max().item()
    results.append(check("weights / EMA", dw < 1e-4 and de < 1e-4,
                         f"max abs diff {dw:.2e} / {de:.2e}"))
    results.append(check("Adam's step count", e[3] == gr[3], f"{gr[3][:1]} x {len(gr[3])}"))
    results.append(check("RNG state after the steps", torch.equal(e[4].cpu(), gr[4].cpu())))
    if device.type == "cuda":
        results.append(check("captured", gr[5]))

    same = [batches[0]] * 6  # lr 0: the weights stay, so only fresh noise moves the loss
    r = run_steps(cfg, device, same, graph=True, lr=0.0)
    results.append(check("fresh noise per replay (one batch 6 times, lr 0)",
                         len(set(round(v, 7) for v in r[0][3:])) == 3,
                         ", ".join(f"{v:.4f}" for v in r[0])))

    plain = make_run(cfg, device, graph_safe=False)
    run_steps(cfg, device, batches[:2], graph=False, run=plain)
    resumed = make_run(cfg, device)
    resumed.model.load_state_dict(plain.model.state_dict())
    resumed.optimizer.load_state_dict(copy.deepcopy(plain.optimizer.state_dict()))
    r = run_steps(cfg, device, batches, graph=True, run=resumed)
    results.append(check("resumed from a state saved without the graph",
                         all(v == v for v in r[0]) and (device.type != "cuda" or r[5]),
                         f"Adam steps {r[3][:1]}"))

    cfg16 = load_config("digits.yml", ["fast.amp=bf16_weights"])
    eb, gb = (run_steps(cfg16, device, batches, graph=flag, bf16=True) for flag in (False, True))
    db = max(abs(x - y) / abs(x) for x, y in zip(eb[0], gb[0]))
    results.append(check("bf16_weights: eager vs graph losses", db < 2e-2,
                         f"max rel diff {db:.2e}"))

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "imgs")
        os.makedirs(folder)
        from PIL import Image
        for i in range(256):
            arr = (torch.rand(size, size, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(arr, mode="L").save(os.path.join(folder, f"{i:04d}.png"))
        cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", "digits.yml",
               "--exp", tmp, "--doc", "dl", "--ni", "--quiet", "--override",
               "data.dataset=FOLDER", f"data.path={folder}", "data.max_on_device_mb=0",
               "data.num_workers=2", "training.n_epochs=2", "earlybird.enabled=false",
               "fast.cuda_graph=true", "training.sample_every=0"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        results.append(check("DataLoader-fed image folder with fast.cuda_graph",
                             res.returncode == 0, (res.stderr.strip().splitlines() or [""])[-1]))
    print(f"{sum(results)} of {len(results)} checks passed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
