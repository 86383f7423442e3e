"""Prune checkpoints: masks (.npy + JSON sidecar) and optionally the pruned model.

  python earlybird_scripts/prune.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni \
      --use_ema --restore_from checkpoints/logs/cifar10/ckpt_ep3.pth --pruner magnitude \
      --pruning_ratio 0.3 --thr 0.05 --save_pruned_model cifar10_pruned-0.3-magnitude-3.pth \
      --save_masks
Many at once (one dependency graph for all): --restore_from a folder or glob, several ratios.
"""
import argparse
import glob
import os
import re
import time

import _common  # noqa: F401

from models.diffusion import Diffusion
from models.pruning import PRUNERS, MaskExtractor, count_params_macs
from runners import checkpoint as ck
from runners.config import add_override_flag, flatten_overrides, load_config
from runners.errors import UserError, run_cli
from runners.masks import compute_masks, mask_stem, pruner_arg, save_mask, taylor_batch
from runners.train import run_dirs


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--exp", default="exp")
    p.add_argument("--doc", default="run")
    p.add_argument("--ni", action="store_true")
    p.add_argument("--use_ema", action="store_true", help="prune the EMA weights")
    p.add_argument("--restore_from", required=True, nargs="+",
                   help="checkpoint(s), a folder of ckpt_ep*.pth, or a glob")
    p.add_argument("--pruner", default="magnitude",
                   help=f"{' | '.join(PRUNERS)} ('ours' = diff-pruning)")
    p.add_argument("--pruning_ratio", type=float, nargs="+", required=True)
    p.add_argument("--thr", type=float, default=None, help="Diff-Pruning loss threshold")
    p.add_argument("--taylor_batch_size", type=int, default=None)
    p.add_argument("--save_pruned_model", default=None, nargs="?", const="",
                   help="file name under {exp}/pruned/{doc}/models (default: the mask name)")
    p.add_argument("--save_masks", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    add_override_flag(p)
    return p.parse_args(argv)


def expand_checkpoints(items):
    """Paths, folders (their ckpt_ep*.pth) and globs -> [(epoch or None, path)] by epoch."""
    out = []
    for item in items:
        if os.path.isdir(item):
            paths = glob.glob(os.path.join(item, "ckpt_ep*.pth"))
            if not paths:
                raise UserError(f"--restore_from {item}: no ckpt_ep*.pth in this folder")
        elif any(c in item for c in "*?["):
            paths = glob.glob(item)
            if not paths:
                raise UserError(f"--restore_from {item}: the pattern matches no file")
        else:
            if not os.path.isfile(item):
                raise UserError(f"--restore_from {item}: checkpoint not found")
            paths = [item]
        out.extend(paths)

    def epoch_of(path):
        m = re.search(r"ckpt_ep(\d+)\.pth$", path)
        return int(m.group(1)) if m else None
    pairs = [(epoch_of(p), p) for p in dict.fromkeys(out)]
    return sorted(pairs, key=lambda e: (e[0] is None, e[0] or 0, e[1]))


def main(argv=None):
    args = parse_args(argv)
    pruner = pruner_arg(args.pruner)
    for r in args.pruning_ratio:
        if not 0.0 < r < 1.0:
            raise UserError(f"--pruning_ratio {r}: must be in (0, 1)")
    overrides = flatten_overrides(args.override)
    if args.thr is not None:
        overrides.append(f"pruning.thr={args.thr}")
    if args.taylor_batch_size is not None:
        overrides.append(f"pruning.taylor_batch_size={args.taylor_batch_size}")
    cfg = load_config(args.config, overrides)
    ckpts = expand_checkpoints(args.restore_from)
    if len(ckpts) > 1 and args.save_pruned_model:
        raise UserError("--save_pruned_model NAME names one file; with several checkpoints or "
                        "ratios pass --save_pruned_model without a name")
    if len(args.pruning_ratio) > 1 and args.save_pruned_model:
        raise UserError("--save_pruned_model NAME names one file; pass it without a name "
                        "to save one model per ratio")
    dirs = run_dirs(args.exp, args.doc)
    diffusion, data = None, None
    if pruner in ("taylor", "diff-pruning"):
        from datasets import get_dataset
        diffusion = Diffusion(cfg["diffusion"], args.device)
        data = taylor_batch(get_dataset(cfg, train=True), cfg["pruning"]["taylor_batch_size"])

    extractor = None
    for epoch, path in ckpts:
        t0 = time.perf_counter()
        c = ck.load_checkpoint(path)
        if c.get("pruning"):
            raise UserError(f"{path}: already a pruned model; prune dense checkpoints")
        model_args = c.get("model_args")
        if model_args is None:
            from models.unet import model_args_from_config
            model_args = model_args_from_config(cfg)
        if extractor is None:
            extractor = MaskExtractor(model_args, device=args.device)
        elif model_args != extractor.model_args:
            raise UserError(f"{path}: architecture differs from the first checkpoint's")
        sd = c["ema"] if args.use_ema and c.get("ema") is not None else c["model"]
        try:
            extractor.load_weights(sd)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not match the architecture "
                            f"({str(e).splitlines()[0][:120]})")
        ep = epoch if epoch is not None else c.get("epoch", 1) - 1
        masks = compute_masks(extractor, sd, pruner, args.pruning_ratio, cfg=cfg,
                              diffusion=diffusion, data=data)
        t_mask = time.perf_counter() - t0
        for r, mask in masks.items():
            stem = mask_stem(args.doc, r, pruner, ep)
            meta = {"ratio": r, "pruner": pruner, "epoch": ep, "source": os.path.abspath(path),
                    "use_ema": bool(args.use_ema), "pruned_fraction": float(mask.mean()),
                    "group_sizes": [ch for _, ch, _ in extractor.layout]}
            if args.save_masks:
                save_mask(dirs["masks"], stem, mask, meta)
            if args.save_pruned_model is not None:
                save_ticket(extractor, sd, mask, model_args, cfg, meta,
                            os.path.join(dirs["models"], args.save_pruned_model or stem + ".pth"),
                            quiet=args.quiet)
        if not args.quiet:
            print(f"{path}: masks at {', '.join(f'{r:g}' for r in args.pruning_ratio)} in "
                  f"{t_mask:.2f}s")
    return 0


def save_ticket(extractor, state_dict, mask, model_args, cfg, meta, out_path, quiet=False):
    """Prune and save a ticket: state dict + pruning history, no pickled module."""
    p0, m0 = extractor.dense_cost
    pruned, history = extractor.prune(state_dict, mask)
    p1, m1 = count_params_macs(pruned, model_args)
    pruning = dict(meta, history=history, params=p1, macs=m1, dense_params=p0, dense_macs=m0)
    state = {"version": ck.VERSION, "model": {k: v.detach().cpu() for k, v in
                                              pruned.state_dict().items()},
             "ema": None, "optimizer": None, "epoch": 0, "step": 0, "config": cfg,
             "model_args": model_args, "pruning": pruning}
    ck.atomic_save(state, out_path)
    if not quiet:
        print(f"ratio {meta['ratio']:g}: params {p0 / 1e6:.3f}M -> {p1 / 1e6:.3f}M "
              f"({p1 / p0:.3f}x), MACs {m0 / 1e9:.4f}G -> {m1 / 1e9:.4f}G ({m1 / m0:.3f}x); "
              f"saved {out_path}")
    return out_path


if __name__ == "__main__":
    run_cli(main)
