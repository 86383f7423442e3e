"""Stitch diagnostics (evaluation only, from tickets that already exist): which region of a
TA-EB plan costs the quality. Each variant samples the same fixed noise as the quality curves:

- the stitched tickets as trained;
- each region in turn served by the uniform EB ticket instead of its own ticket;
- the inverted order: region i served by the ticket trained for region n - 1 - i (so the
  densest ticket draws the noisiest steps).

A region whose swap for the uniform ticket improves the score is where the plan loses quality.
"""
import os

import torch

from core.layout import Layout, eb_doc, plan_set, taeb_name
from core.regions import read_manifest
from evaluation.curves import digits_quality, network_of, sample_fixed
from utils.io import atomic_write_json, read_json


def variants(tickets, uniform_ckpt):
    """[(label, [(range, checkpoint)])] of one ticket set (manifest tickets, in order)."""
    own = [(t.range, t.checkpoint) for t in tickets]
    out = [("as trained", own)]
    for i, (rng, _) in enumerate(own):
        if uniform_ckpt:
            swapped = own[:i] + [(rng, uniform_ckpt)] + own[i + 1:]
            out.append((f"[{rng[0]}, {rng[1]}) -> uniform EB ticket", swapped))
    rev = [c for _, c in own][::-1]
    out.append(("inverted order", [(rng, c) for (rng, _), c in zip(own, rev)]))
    return out


def ticket_sets(layout, doc):
    """[(label, set name, manifest tickets)] of the TA-EB sets of dense run ``doc``."""
    out = []
    for label, tset in (("TA-EB", doc), ("TA-EB planned", plan_set(doc))):
        path = layout.manifest(tset)
        if os.path.isfile(path):
            out.append((label, tset, read_manifest(path).tickets))
    return out


def stitch_diagnostics(cfg, exp, doc, *, pruning_ratio, n, timesteps, cache_path, log=print):
    """{set label: [(variant label, digits-FD, valid)]} for seed run ``doc``; scores are
    cached in ``cache_path`` (JSON) by run, set, variant, n and timesteps."""
    L = Layout(exp)
    cache = read_json(cache_path, {})
    score = digits_quality(L.metric_cache(), cfg.data.dataset)
    uniform = L.latest_checkpoint(eb_doc(doc, pruning_ratio))
    uniform = uniform if os.path.isfile(uniform) else None
    T = cfg.diffusion.num_diffusion_timesteps
    out = {}
    for label, tset, tickets in ticket_sets(L, doc):
        rows = []
        for name, sources in variants(tickets, uniform):
            key = f"{taeb_name(tset)}|{name}|{n}|{timesteps}"
            if key not in cache:
                model = network_of(sources, T, "cpu")
                with torch.no_grad():
                    images = sample_fixed(model, cfg, n=n, timesteps=timesteps, device="cpu")
                _, value, extra = score(images)
                cache[key] = {"value": value, "valid": extra.get("valid")}
                atomic_write_json(cache_path, cache)
                log(f"  {taeb_name(tset)} {name}: digits-FD {value:.2f}")
            rows.append((name, cache[key]["value"], cache[key]["valid"]))
        out[label] = rows
    return out
