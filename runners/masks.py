"""Masks of checkpoints (DESIGN.md step 2), shared by earlybird_scripts/prune.py and the
online detector in training, so an epoch's online mask equals its checkpoint's offline mask.
"""
import json
import os

import numpy as np
import torch

from models.pruning import canonical_pruner
from runners.checkpoint import atomic_path, atomic_write_text
from runners.errors import UserError


def pruner_arg(name):
    """--pruner value -> canonical name, or a UserError naming the choices."""
    try:
        return canonical_pruner(name)
    except ValueError as e:
        raise UserError(str(e))


def add_series_args(parser):
    """The flags that select one mask series (find_earlybird, calculate_overlap)."""
    parser.add_argument("--mask_dir", required=True)
    parser.add_argument("--pruning_ratio", type=float, required=True)
    parser.add_argument("--pruner", default="magnitude")
    parser.add_argument("--doc", default=None, help="only masks of this run (a folder may mix)")
    parser.add_argument("--start_epoch", type=int, default=0)
    parser.add_argument("--end_epoch", type=int, default=None)


def mask_stem(doc, ratio, pruner, epoch):
    """The seed's file naming: {doc}_pruned-{ratio}-{pruner}-{epoch}."""
    return f"{doc}_pruned-{ratio:g}-{pruner}-{epoch}"


def taylor_batch(dataset, n, seed=0):
    """A fixed batch of real images in [-1, 1] for Taylor / Diff-Pruning importance."""
    from datasets import data_transform
    if dataset is None or len(dataset) == 0:
        raise UserError("the taylor / diff-pruning pruners need real data, and the data set "
                        "is empty or missing")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    return data_transform(torch.stack([dataset[i] for i in idx]))


def compute_masks(extractor, state_dict, pruner, ratios, *, cfg, diffusion=None, data=None):
    """{ratio: mask} for one set of weights; importance is computed once for all ratios."""
    extractor.load_weights(state_dict)
    pc = cfg["pruning"]
    scores = extractor.scores(canonical_pruner(pruner), diffusion=diffusion, data=data,
                              taylor_steps=pc["taylor_steps"], thr=pc["thr"], seed=0)
    return {r: extractor.masks_from_scores(scores, r) for r in ratios}


def save_mask(mask_dir, stem, mask, meta):
    """Write {stem}.npy and its JSON sidecar atomically."""
    os.makedirs(mask_dir, exist_ok=True)
    path = os.path.join(mask_dir, stem + ".npy")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mask, dtype=np.uint8))
    atomic_write_text(os.path.join(mask_dir, stem + ".json"), json.dumps(meta, indent=1))
    return path


def load_mask_series(mask_dir, ratio, pruner, start_epoch=0, end_epoch=None, doc=None):
    """[(epoch, mask)] for one ratio and pruner, in epoch order; gaps are errors."""
    if not os.path.isdir(mask_dir):
        raise UserError(f"mask folder not found: {mask_dir}")
    pruner = canonical_pruner(pruner)
    found = {}
    for f in sorted(os.listdir(mask_dir)):
        if not f.endswith(".npy"):
            continue
        stem = f[:-4]
        try:
            head, r, p, e = stem.rsplit("-", 3)
            if not head.endswith("_pruned"):
                # pruner names may hold a dash (diff-pruning)
                head, r, p1, p2, e = stem.rsplit("-", 4)
                p = f"{p1}-{p2}"
            r, e = float(r), int(e)
        except ValueError:
            continue
        if doc is not None and head != f"{doc}_pruned":
            continue
        if abs(r - ratio) < 1e-9 and p == pruner and e >= start_epoch and \
                (end_epoch is None or e <= end_epoch):
            if e in found:
                raise UserError(f"{mask_dir}: two mask series for ratio {ratio:g}, pruner "
                                f"{pruner}, epoch {e}: pass --doc to pick one")
            found[e] = os.path.join(mask_dir, f)
    if not found:
        raise UserError(f"{mask_dir}: no masks for ratio {ratio:g} and pruner {pruner}")
    epochs = sorted(found)
    lo = epochs[0]
    hi = epochs[-1] if end_epoch is None else min(end_epoch, epochs[-1])
    missing = [e for e in range(lo, hi + 1) if e not in found]
    if missing:
        raise UserError(f"{mask_dir}: masks missing for epoch(s) "
                        f"{', '.join(map(str, missing[:20]))} (ratio {ratio:g}, {pruner})")
    series = []
    for e in epochs:
        mask = np.load(found[e])
        if series and mask.shape != series[0][1].shape:
            raise UserError(f"{found[e]}: {mask.size} entries, epoch {series[0][0]} has "
                            f"{series[0][1].size}: masks of different architectures cannot "
                            f"be compared")
        meta_path = found[e][:-4] + ".json"
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            if "ratio" in meta and abs(float(meta["ratio"]) - ratio) > 1e-9 or \
                    "pruner" in meta and meta["pruner"] != pruner:
                raise UserError(f"{meta_path}: mask of ratio {meta.get('ratio')} / pruner "
                                f"{meta.get('pruner')}, not {ratio:g} / {pruner}")
        series.append((e, mask))
    return series
