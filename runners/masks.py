"""Masks of checkpoints (docs/design.md, step 2), shared by earlybird_scripts/prune.py and the
online detector in training, so an epoch's online mask equals its checkpoint's offline mask.
"""
import json
import os

import numpy as np
import torch

from core.layout import parse_mask_stem
from datasets import data_transform
from models.diffusion import Diffusion
from models.pruner_names import canonical_pruner, needs_gradients
from utils.errors import UserError
from utils.io import atomic_path, atomic_write_json

TAYLOR_BATCH_SEED = 0  # which real images Taylor / Diff-Pruning importance reads


def pruner_arg(name):
    """--pruner value -> canonical name, or a UserError naming the choices."""
    try:
        return canonical_pruner(name)
    except ValueError as e:
        raise UserError(str(e))


def taylor_batch(dataset, n, seed=TAYLOR_BATCH_SEED):
    """A fixed batch of real images in [-1, 1] for Taylor / Diff-Pruning importance."""
    if dataset is None or len(dataset) == 0:
        raise UserError("the taylor / diff-pruning pruners need real data, and the data set "
                        "is empty or missing")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].tolist()
    return data_transform(torch.stack([dataset[i] for i in idx]))


def pruning_inputs(cfg, pruner, dataset, device="cpu"):
    """(diffusion, data batch) for gradient-based pruners; (None, None) for the others."""
    if not needs_gradients(pruner):
        return None, None
    return (Diffusion(**vars(cfg.diffusion), device=device),
            taylor_batch(dataset, cfg.pruning.taylor_batch_size))


def compute_masks(extractor, state_dict, pruner, ratios, *, pruning, diffusion=None,
                  data=None):
    """({ratio: mask}, info) for one set of weights; importance is computed once for all
    ratios (``pruning``: the config's pruning section). info says what the importance read
    (Diff-Pruning: its timesteps)."""
    extractor.load_weights(state_dict)
    pc = pruning
    scores, info = extractor.scores(canonical_pruner(pruner), diffusion=diffusion, data=data,
                                    taylor_steps=pc.taylor_steps, thr=pc.thr,
                                    stride=pc.diff_stride, seed=0)
    return {r: extractor.masks_from_scores(scores, r) for r in ratios}, info


def mask_meta(extractor, mask, *, ratio, pruner, epoch, source, use_ema, info):
    """The JSON sidecar of a mask."""
    return dict({"ratio": ratio, "pruner": pruner, "epoch": epoch, "source": source,
                 "use_ema": bool(use_ema), "round_to": extractor.round_to,
                 "depth_scale": extractor.depth_scale,
                 "pruned_fraction": float(np.mean(mask)),
                 "group_sizes": [c for _, c, _ in extractor.layout]}, **info)


def save_mask(path, mask, meta):
    """Write a mask (.npy) and its JSON sidecar atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(mask, dtype=np.uint8))
    atomic_write_json(path[:-4] + ".json", meta)
    return path


def _series_files(mask_dir, ratio, pruner, start_epoch, end_epoch, doc):
    found = {}
    for f in sorted(os.listdir(mask_dir)):
        if not f.endswith(".npy"):
            continue
        name = parse_mask_stem(f[:-4])
        if name is None or (doc is not None and name.doc != doc):
            continue
        if abs(name.ratio - ratio) < 1e-9 and name.pruner == pruner and \
                name.epoch >= start_epoch and (end_epoch is None or name.epoch <= end_epoch):
            if name.epoch in found:
                raise UserError(f"{mask_dir}: two mask series for ratio {ratio:g}, pruner "
                                f"{pruner}, epoch {name.epoch}: pass --doc to pick one")
            found[name.epoch] = os.path.join(mask_dir, f)
    return found


def load_mask_series(mask_dir, ratio, pruner, *, start_epoch=0, end_epoch=None, doc=None):
    """[(epoch, mask)] for one ratio and pruner, in epoch order; gaps are errors."""
    if not os.path.isdir(mask_dir):
        raise UserError(f"mask folder not found: {mask_dir}")
    pruner = canonical_pruner(pruner)
    found = _series_files(mask_dir, ratio, pruner, start_epoch, end_epoch, doc)
    if not found:
        raise UserError(f"{mask_dir}: no masks for ratio {ratio:g} and pruner {pruner}")
    epochs = sorted(found)
    missing = [e for e in range(epochs[0], epochs[-1] + 1) if e not in found]
    if missing:
        raise UserError(f"{mask_dir}: masks missing for epoch(s) "
                        f"{', '.join(map(str, missing[:20]))} (ratio {ratio:g}, {pruner})")
    series = []
    for e in epochs:
        # the release saves masks as float32 0/1 arrays: read both
        mask = np.load(found[e]).astype(np.uint8)
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
