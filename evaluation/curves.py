"""Quality along training: the per-epoch checkpoints of a run (or of every TA-EB region,
stitched) are sampled every few epochs with one fixed set of noise (the same images' seeds for
every evaluation and every method, so curves differ by model, not by noise) and scored.

Written to {exp}/curves/{name}.jsonl, one line per evaluated epoch; a rerun evaluates only the
epochs missing there.
"""
import os

import torch

from core import checkpoint as ck
from core.runlog import append_jsonl
from evaluation.digits_metric import compare_size, evaluate
from models.stitched import StitchedTickets
from evaluation.heldout import heldout_loss
from runners.sample import sample_indexed
from utils.io import read_jsonl


def eval_epochs(n_epochs, every):
    """Epochs evaluated: every ``every``-th (1-based) and always the last."""
    out = [e for e in range(n_epochs) if every and (e + 1) % every == 0]
    return sorted(set(out) | {n_epochs - 1})


def sample_fixed(model, cfg, *, n, timesteps, device, batch_size=250):
    """n images [N, C, H, W] in [0, 1], quantised like a PNG, from the fixed per-image noise
    (runners/sample.py's one sampling routine, as the sample folders)."""
    out = [sample_indexed(model, cfg, list(range(b, min(n, b + batch_size))), device=device,
                          timesteps=timesteps) for b in range(0, n, batch_size)]
    return (torch.cat(out) * 255).round() / 255


def digits_quality(cache_dir, dataset="DIGITS"):
    """images [N, 1, S, S] in [0, 1] -> ('digits-FD', value, {'valid': share,
    'noise_like': share}) against ``dataset``'s held-out digits (at ``compare_size(S)``)."""

    def score(images):
        res = evaluate(images * 2 - 1, compare_size(images.shape[-1]), cache_dir, dataset)
        return "digits-FD", res["digits_fd"], {"valid": res["valid"],
                                               "noise_like": res["noise_like"]}
    return score


def network_of(sources, T, device):
    """One checkpoint, or [(range, checkpoint)] stitched."""
    if isinstance(sources, str):
        model = ck.model_from_checkpoint(ck.load_checkpoint(sources), sources, use_ema=True)
    else:
        nets = [ck.model_from_checkpoint(ck.load_checkpoint(p), p, use_ema=True)
                for _, p in sources]
        model = StitchedTickets(nets, [r for r, _ in sources], T)
    return model.to(device).eval()


def evaluate_curve(cfg, path, sources_by_epoch, score, *, n, timesteps, device="cpu",
                   heldout=None, log=print):
    """Score the network of each epoch in ``sources_by_epoch`` {epoch: checkpoint path, or
    [(range, path)] to stitch}; appends new points to ``path``. With ``heldout``
    (evaluation/heldout.py's HeldOut) every point also gets the held-out loss; a point scored
    before without it gets it added (no new samples). Returns the whole curve
    [{epoch, metric, value, n, timesteps, ...}] in epoch order."""
    done = {p["epoch"]: p for p in read_jsonl(path)
            if p.get("n") == n and p.get("timesteps") == timesteps}
    T = cfg.diffusion.num_diffusion_timesteps
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for epoch, sources in sorted(sources_by_epoch.items()):
        old = done.get(epoch)
        if old is not None and (heldout is None or old.get("heldout_key") == heldout.key):
            continue
        model = network_of(sources, T, device)  # (rebuilding a pruned network needs autograd)
        if old is None:
            with torch.no_grad():
                images = sample_fixed(model, cfg, n=n, timesteps=timesteps, device=device)
            metric, value, extra = score(images)
            point = {"epoch": epoch, "metric": metric, "value": float(value), "n": n,
                     "timesteps": timesteps, **extra}
        else:
            point = dict(old)
        if heldout is not None:
            point["heldout"] = heldout_loss(model, heldout, vars(cfg.diffusion), device=device)
            point["heldout_key"] = heldout.key
        append_jsonl(path, point)  # a later line for the same epoch replaces an earlier one
        done[epoch] = point
        if log:
            log(f"  {os.path.basename(path)[:-6]} epoch {epoch}: {point['metric']} "
                f"{point['value']:.2f}" + "".join(
                    f", {k} {v:.3f}" for k, v in point.items()
                    if k in ("valid", "noise_like", "heldout")))
    return [done[e] for e in sorted(done) if e in sources_by_epoch]


AXES = {"digits_fd": ("value", None), "heldout": ("heldout", "held-out loss")}


def on_axis(points, axis):
    """Curve points with ``value`` (and ``metric``) read from ``axis`` (target.axis): the
    digits metric as scored, or the held-out loss."""
    key, name = AXES[axis]
    if key == "value":
        return list(points)
    return [dict(p, value=p[key], metric=name) for p in points if key in p]


def read_curve(path, axis="digits_fd"):
    """The curve at ``path`` in epoch order (the newest line of an epoch wins), on ``axis``."""
    by_epoch = {p["epoch"]: p for p in read_jsonl(path)}
    return on_axis([by_epoch[e] for e in sorted(by_epoch)], axis)
