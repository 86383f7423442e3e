"""Shared helpers of the benchmarks: timing, networks of a config, tickets at a ratio,
and a re-creation of the seed's (DDIM codebase's) training loop as the baseline."""
import os
import statistics
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from models.diffusion import Diffusion  # noqa: E402
from models.ema import EMA  # noqa: E402
from models.pruning import MaskExtractor, count_params_macs  # noqa: E402
from models.resample import AntitheticSampler  # noqa: E402
from models.networks import build_network  # noqa: E402
from core.config import load_config  # noqa: E402
from core.device import autocast_for, use_channels_last  # noqa: E402
from runners.step import train_step  # noqa: E402
from runners.optim import make_optimizer  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, device, warmup=2, iters=5):
    """Median seconds of fn() over iters calls, after warmup calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        return float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def tickets(cfg, ratios, device="cpu", round_to=0):
    """{ratio: (pruned network, params, MACs)} pruned by magnitude from one random dense net."""
    args = cfg.model_kwargs()
    torch.manual_seed(0)
    dense = build_network(args)
    ex = MaskExtractor(args, round_to=round_to, depth_scale=cfg.pruning.depth_scale)
    sd = dense.state_dict()
    ex.load_weights(sd)
    scores, _ = ex.scores("magnitude")
    out = {}
    for r in ratios:
        model, _ = ex.prune(sd, ex.masks_from_scores(scores, r))
        p, m = count_params_macs(model, args)
        out[r] = (model.to(device), p, m)
    return dense.to(device), count_params_macs(dense, args), out


def our_step_fn(cfg, model, batch, device):
    """A closure running one step of our training loop (fast path per cfg['fast']).
    batch: a tensor used every step, or a callable returning the next batch."""
    from core.device import precision
    from runners.graph_step import GraphStep
    from runners.step import MasterWeights
    model = model.to(device).train()
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    graph = cfg.fast.cuda_graph
    opt = make_optimizer(cfg, model.parameters(), device, graph_safe=graph)
    ema = EMA(model, cfg.model.ema_rate, foreach=cfg.fast.foreach_ema,
              warmup=cfg.model.ema_warmup)
    diffusion = Diffusion(**vars(cfg.diffusion), device=device)
    sampler = AntitheticSampler(0, diffusion.num_timesteps)
    autocast = autocast_for(cfg, device)
    cl = use_channels_last(cfg, device)
    master = MasterWeights(model) if precision(cfg, device) == "bf16 weights" else None
    compute = master.compute if master else model
    train_model = torch.compile(compute) if cfg.fast.compile else compute
    fixed = None if callable(batch) else batch.to(device)
    run = types.SimpleNamespace(model=model, train_model=train_model, optimizer=opt, ema=ema,
                                master=master)
    kw = dict(sampler=sampler, diffusion=diffusion, autocast=autocast,
              grad_clip=cfg.optim.grad_clip, channels_last=cl)
    graph_step = GraphStep(run, grad_accum=1, device=device, **kw) if graph else None

    def step():
        x = fixed if fixed is not None else batch().to(device)
        if graph_step is not None:
            return graph_step(x, cfg.optim.lr)
        return train_step(run, x, **kw)
    return step


class SeedEMA:
    """The DDIM codebase's EMAHelper: a Python loop over parameters."""

    def __init__(self, model, mu):
        self.mu = mu
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    def update(self, model):
        for n, p in model.named_parameters():
            self.shadow[n].data = (1.0 - self.mu) * p.data + self.mu * self.shadow[n].data


def seed_loop(cfg, model, batch_size, device, n_images=512, num_workers=0):
    """A re-creation of the seed's loop: fp32, a DataLoader over a torchvision data set with
    per-image transforms, .item() every step, per-parameter EMA, default Adam."""
    import torchvision
    import torchvision.transforms as T
    d = cfg.data
    ds = torchvision.datasets.FakeData(
        size=n_images, image_size=(d.channels, d.image_size, d.image_size),
        transform=T.Compose([T.RandomHorizontalFlip(), T.ToTensor()]))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True,
                                         num_workers=num_workers, drop_last=True)
    model = model.to(device).train()
    o = cfg.optim
    opt = torch.optim.Adam(model.parameters(), lr=o.lr, betas=(o.beta1, 0.999),
                           eps=o.eps)
    ema = SeedEMA(model, cfg.model.ema_rate)
    diffusion = Diffusion(**vars(cfg.diffusion), device=device)
    T_ = diffusion.num_timesteps
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(loader)
            x, _ = next(it)
        x = x.to(device) * 2 - 1
        n = x.size(0)
        t = torch.randint(0, T_, (n // 2 + 1,), device=device)
        t = torch.cat([t, T_ - t - 1], dim=0)[:n]
        loss = diffusion.loss(model, x, t)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        ema.update(model)
        return loss.item()
    return step


def add_bench_args(parser, batch=128):
    """--config, --device and --batch, as every GPU benchmark takes them."""
    parser.add_argument("--config", default="cifar10.yml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=batch)


def bench_config(name, overrides=()):
    return load_config(name, list(overrides))


class LiveRows(list):
    """Table rows, each also printed when measured: a run cut off by a timeout keeps them."""

    def append(self, row):
        print("row:", " | ".join(map(str, row)), flush=True)
        super().append(row)


def print_table(title, header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")
