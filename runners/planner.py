"""Automatic TA-EB plans (docs/design.md, step 5; docs/pruning.md, "Planned regions").

At the early-bird epoch, each candidate ratio's ticket (pruned, not fine-tuned) is compared with
the dense network it was pruned from: the eps-prediction loss per timestep bin, on the same
training images, timesteps and noise for every network. The gap (ticket minus dense), weighted
by how often the configured sampler visits each bin, is what a plan pays for serving that bin
with that ratio. A plan is at most ``taeb.max_regions`` contiguous intervals of bins, one ratio
each; among plans whose sampling-averaged MACs stay within a budget (the uniform ticket's), the
one with the least weighted gap is chosen by dynamic programming over intervals (each state
keeps its Pareto front of cost and gap, so the budget is met exactly, not approximately).
"""
import math
from dataclasses import dataclass

import torch

from core import checkpoint as ck
from datasets import data_transform, get_dataset
from models.diffusion import Diffusion, timestep_sequence
from runners.pruning import ticket_for, weights_of_epoch
from runners.tickets import ticket_epoch, ticket_stats
from utils.errors import UserError

PLAN_SEED = 20231  # the planner's own images, timesteps and noise: no training RNG is drawn


@dataclass(frozen=True)
class Plan:
    regions: tuple      # ((first bin, end bin, ratio), ...) covering every bin, in order
    gap: float          # sum over bins of visit weight x loss gap of the bin's ratio
    macs: float         # sampling-averaged MACs per image

    def ranges(self, edges):
        """[(lo, hi, ratio)] in timesteps, from the bins' edges."""
        return [(edges[i], edges[j], r) for i, j, r in self.regions]


def bin_edges(num_timesteps, bins):
    return [round(b * num_timesteps / bins) for b in range(bins + 1)]


def visit_weights(cfg, edges):
    """Share of the configured sampler's steps that fall in each bin (sums to 1)."""
    s = cfg.sampling
    seq = timestep_sequence(s.skip_type, s.timesteps, cfg.diffusion.num_diffusion_timesteps)
    counts = [sum(1 for t in seq if lo <= t < hi) for lo, hi in zip(edges, edges[1:])]
    return [c / len(seq) for c in counts]


def _prefix(values):
    out = [0.0]
    for v in values:
        out.append(out[-1] + v)
    return out


def _pareto(entries):
    """Entries (cost, gap, regions) -> the ones no other beats in both cost and gap (fewer
    regions first among equals)."""
    entries.sort(key=lambda e: (e[0], e[1], len(e[2])))
    out, best = [], math.inf
    for e in entries:
        if e[1] < best - 1e-12:
            out.append(e)
            best = e[1]
    return out


def plan_dp(gaps, weights, macs, budget, max_regions):
    """The least-gap plan within ``budget``: gaps {ratio: [gap per bin]}, weights [visit share
    per bin], macs {ratio: MACs per image}, budget: the most sampling-averaged MACs allowed.
    Adjacent regions have different ratios (equal ones would be one region and one ticket).
    Returns a Plan, or None when no plan fits the budget."""
    B, ratios = len(weights), sorted(gaps)
    W = _prefix(weights)
    G = {r: _prefix([w * g for w, g in zip(weights, gaps[r])]) for r in ratios}
    tol = 1e-9 * max(1.0, budget)
    # front[k][j]: Pareto set of (cost, gap, regions) covering bins [0, j) with k regions
    front = [[[] for _ in range(B + 1)] for _ in range(max_regions + 1)]
    front[0][0] = [(0.0, 0.0, ())]
    for k in range(1, max_regions + 1):
        for j in range(1, B + 1):
            cand = []
            for i in range(j):
                for cost, gap, regs in front[k - 1][i]:
                    for r in ratios:
                        if regs and regs[-1][2] == r:
                            continue
                        c = cost + (W[j] - W[i]) * macs[r]
                        if c <= budget + tol:
                            cand.append((c, gap + G[r][j] - G[r][i], regs + ((i, j, r),)))
            front[k][j] = _pareto(cand)
    done = [e for k in range(1, max_regions + 1) for e in front[k][B]]
    if not done:
        return None
    cost, gap, regs = min(done, key=lambda e: (round(e[1], 12), len(e[2]), e[0]))
    return Plan(regs, gap, cost)


def plan_cost(regions, weights, macs):
    """Sampling-averaged MACs per image of a plan ((first bin, end bin, ratio), ...)."""
    return sum(sum(weights[i:j]) * macs[r] for i, j, r in regions)


@torch.no_grad()
def bin_losses(model, diffusion, images, edges, *, seed=PLAN_SEED):
    """Mean eps-prediction loss per timestep bin of ``model`` on ``images`` [N, C, H, W] in
    [-1, 1]: per bin, one timestep and one noise per image from a generator of the planner's
    own (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lo, hi in zip(edges, edges[1:]):
        t = torch.randint(lo, hi, (images.shape[0],), generator=g)
        noise = torch.randn(images.shape, generator=g)
        losses = [diffusion.per_sample_loss(model, images[b:b + 256], t[b:b + 256],
                                            noise[b:b + 256])
                  for b in range(0, images.shape[0], 256)]
        out.append(float(torch.cat(losses).mean()))
    return out


def plan_images(cfg, n, seed=PLAN_SEED):
    """n training images in [-1, 1], drawn once with the planner's own generator."""
    data = get_dataset(cfg, train=True)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return data_transform(torch.stack([torch.as_tensor(data[int(i)]) for i in idx]))


def measure_gaps(xp, ratio_epochs, ticket_files, *, edges, n_images, log=print):
    """{ratio: [loss gap per bin]}: each ratio's ticket (pruned at its EB epoch, not
    fine-tuned) minus the dense network of that epoch, plus {epoch: dense losses}."""
    cfg, layout = xp.cfg, xp.layout
    diffusion = Diffusion(**vars(cfg.diffusion), device=torch.device("cpu"))
    images = plan_images(cfg, n_images)
    dense = {}
    for epoch in sorted(set(ratio_epochs.values())):
        path = weights_of_epoch(layout, xp.doc, epoch)
        model = ck.model_from_checkpoint(ck.load_checkpoint(path), path,
                                         use_ema=cfg.pruning.use_ema).eval()
        dense[epoch] = bin_losses(model, diffusion, images, edges)
        log(f"dense epoch {epoch}: losses per bin measured")
    gaps = {}
    for r, epoch in sorted(ratio_epochs.items()):
        path = ticket_files[r]
        model = ck.model_from_checkpoint(ck.load_checkpoint(path), path, use_ema=False).eval()
        ticket = bin_losses(model, diffusion, images, edges)
        gaps[r] = [a - b for a, b in zip(ticket, dense[epoch])]
        log(f"p={r:g} (epoch {epoch}): weighted gap measured")
    return gaps, dense


def eb_epochs_or_last(xp, ratios, log=print):
    """{ratio: EB epoch}; a ratio without one is planned from the dense run's last epoch."""
    return {r: ticket_epoch(xp, r, fallback="last", log=log) for r in ratios}


def make_plan(xp, *, budget_ratio, ratios, bins, n_images, max_regions, budget_macs=None,
              log=print):
    """Measure the gaps of ``ratios`` (plus the budget's ratio) at their EB epochs and plan.
    Returns the plan record (what plan_regions.py writes as plan.yml)."""
    cfg = xp.cfg
    ratios = sorted(set(ratios) | {budget_ratio})
    epochs = eb_epochs_or_last(xp, ratios, log)
    files = {r: ticket_for(xp, r, epochs[r], log=log) for r in ratios}
    macs = {r: ticket_stats(files[r])[1] for r in ratios}
    edges = bin_edges(cfg.diffusion.num_diffusion_timesteps, bins)
    weights = visit_weights(cfg, edges)
    gaps, dense = measure_gaps(xp, epochs, files, edges=edges, n_images=n_images, log=log)
    budget = budget_macs or macs[budget_ratio]
    plan = plan_dp(gaps, weights, macs, budget, max_regions)
    if plan is None:
        raise UserError(f"no plan fits the budget of {budget / 1e6:.2f}M MACs per image: the "
                        f"sparsest candidate has {min(macs.values()) / 1e6:.2f}M")
    uniform_gap = sum(w * g for w, g in zip(weights, gaps[budget_ratio]))
    return {"doc": xp.doc, "regions": [{"range": [lo, hi], "pruning_ratio": r}
                                       for lo, hi, r in plan.ranges(edges)],
            "budget_macs": budget, "budget_ratio": budget_ratio, "plan_macs": plan.macs,
            "plan_gap": plan.gap, "uniform_gap": uniform_gap, "max_regions": max_regions,
            "edges": edges, "visit_weights": weights, "eb_epochs": epochs, "macs": macs,
            "gaps": {f"{r:g}": g for r, g in gaps.items()},
            "dense_losses": {str(e): v for e, v in dense.items()}, "images_per_bin": n_images,
            "sampler": f"{cfg.sampling.timesteps}-step {cfg.sampling.skip_type}",
            "fine_tuned": False}
