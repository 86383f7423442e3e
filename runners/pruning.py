"""Pruning checkpoints (docs/design.md, steps 2 and 4): masks of any number of checkpoints at any
number of ratios with one dependency graph, and pruned tickets saved as state dict + pruning
history. earlybird_scripts/prune.py, the TA-EB tickets and the pipeline all call this.
"""
import glob
import os
import time

from core import checkpoint as ck
from core.interop import is_diffusers_folder
from core.layout import epoch_of_checkpoint
from datasets import get_dataset
from models.dit import dropped_blocks
from models.pruner_names import needs_gradients
from models.pruning import MaskExtractor, count_params_macs
from runners.masks import compute_masks, mask_meta, pruning_inputs, save_mask
from utils.errors import UserError
from utils.io import atomic_save, read_json


def _weights(c, path, cfg):
    if c.get("pruning"):
        raise UserError(f"{path}: already a pruned model; prune dense checkpoints")
    model_args = c.get("model_args")
    if model_args is None:
        model_args = cfg.model_kwargs()
    return model_args, ck.pick_weights(c, cfg.pruning.use_ema, path)


def prune_checkpoints(xp, checkpoints, ratios, *, save_masks=True, save_models=False,
                      model_name=None, device="cpu", dataset=None, log=print):
    """Masks (and optionally pruned tickets) of ``checkpoints`` [(epoch or None, path)] at
    ``ratios``, filed under experiment ``xp`` (core.options.Experiment), with its pruner
    (``earlybird.pruner``) and weights (``pruning.use_ema``). Returns {(epoch, ratio): ticket
    path} of the tickets saved."""
    cfg, layout, doc = xp.cfg, xp.layout, xp.doc
    pruner = cfg.earlybird.pruner
    if dataset is None and needs_gradients(pruner):
        dataset = get_dataset(cfg, train=True)
    diffusion, data = pruning_inputs(cfg, pruner, dataset, device)
    extractor, saved = None, {}
    for epoch, path in checkpoints:
        t0 = time.perf_counter()
        c = ck.load_checkpoint(path)
        model_args, sd = _weights(c, path, cfg)
        if extractor is None:
            extractor = MaskExtractor(model_args, device=device,
                                      round_to=cfg.pruning.round_to,
                                      depth_scale=cfg.pruning.depth_scale)
        elif model_args != extractor.model_args:
            raise UserError(f"{path}: architecture differs from the first checkpoint's")
        try:
            extractor.load_weights(sd)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not match the architecture "
                            f"({str(e).splitlines()[0][:120]})")
        ep = epoch if epoch is not None else c.get("epoch_index")
        if ep is None:
            raise UserError(f"{path}: no epoch in its name or contents; name it ckpt_epE.pth")
        masks, info = compute_masks(extractor, sd, pruner, ratios, pruning=cfg.pruning,
                                    diffusion=diffusion, data=data)
        t_mask = time.perf_counter() - t0
        for r, mask in masks.items():
            meta = mask_meta(extractor, mask, ratio=r, pruner=pruner, epoch=ep,
                             source=os.path.abspath(path), use_ema=cfg.pruning.use_ema,
                             info=info)
            if save_masks:
                save_mask(layout.mask_file(doc, r, pruner, ep), mask, meta)
            if save_models:
                out = os.path.join(layout.models_dir(doc), model_name) if model_name else \
                    layout.ticket_file(doc, r, pruner, ep)
                saved[(ep, r)] = save_ticket(extractor, sd, mask, model_args=model_args, cfg=cfg,
                                             meta=meta, out_path=out,
                                             log=log)
        if log:
            log(f"{path}: masks at {', '.join(f'{r:g}' for r in ratios)} in {t_mask:.2f}s")
    return saved


def save_ticket(extractor, state_dict, mask, *, model_args, cfg, meta, out_path, log=print):
    """Prune and save a ticket: state dict + pruning history, no pickled module."""
    p0, m0 = extractor.dense_cost
    pruned, history = extractor.prune(state_dict, mask)
    p1, m1 = count_params_macs(pruned, model_args)
    pruning = dict(meta, history=history, params=p1, macs=m1, dense_params=p0, dense_macs=m0)
    removed = dropped_blocks(pruned)
    if removed:  # depth pruning: rebuilt with these blocks skipped
        pruning["removed_blocks"] = removed
    state = ck.make_checkpoint(model=ck.cpu_state_dict(pruned), config=cfg.as_dict(),
                               model_args=model_args, pruning=pruning)
    atomic_save(state, out_path)
    if log:
        log(f"ratio {meta['ratio']:g}: params {p0 / 1e6:.3f}M -> {p1 / 1e6:.3f}M "
            f"({p1 / p0:.3f}x), MACs {m0 / 1e9:.4f}G -> {m1 / 1e9:.4f}G ({m1 / m0:.3f}x); "
            f"saved {out_path}")
    return out_path


def ticket_for(xp, ratio, epoch, *, log=None):
    """The pruned ticket of dense run ``xp.doc`` at ``ratio`` from ckpt_ep{epoch}: pruned (with
    its mask) on first use, reused after. Returns its path."""
    cfg, layout, doc = xp.cfg, xp.layout, xp.doc
    out = layout.ticket_file(doc, ratio, cfg.earlybird.pruner, epoch)
    wanted = pruning_shape(vars(cfg.pruning))
    if os.path.isfile(out):
        kept = pruning_shape(ck.load_checkpoint(out).get("pruning") or {})
        if kept == wanted:
            return out
        if log:
            log(f"{out}: pruned with round_to {kept[0]}, depth_scale {kept[1]:g}; the config "
                f"says {wanted[0]}, {wanted[1]:g}: pruned again")
    src = weights_of_epoch(layout, doc, epoch)
    if src is None:
        raise UserError(f"ratio {ratio:g}: no checkpoint of epoch {epoch} in "
                        f"{layout.run_dir(doc)} (dense training must reach epoch {epoch}, and "
                        f"training.epoch_ckpt / epoch_ckpt_until must keep it)")
    # the mask is saved too, unless that epoch's mask exists already (online masks equal it)
    have_mask = _mask_shape(layout.mask_file(doc, ratio, cfg.earlybird.pruner,
                                             epoch)) == wanted
    prune_checkpoints(xp, [(epoch, src)], [ratio], save_masks=not have_mask, save_models=True,
                      log=log)
    return out


def pruning_shape(record):
    """(round_to, depth_scale) of a pruning record, a mask's sidecar or the config's pruning
    section: what must match for a saved mask or ticket to be reused (0 for keys written
    before they existed)."""
    return int(record.get("round_to", 0) or 0), float(record.get("depth_scale", 0.0) or 0.0)


def _mask_shape(path):
    """The pruning_shape a saved mask was made with; None: no mask."""
    if not os.path.isfile(path):
        return None
    return pruning_shape(read_json(path[:-4] + ".json", {}))


def weights_of_epoch(layout, doc, epoch):
    """The file holding run ``doc``'s weights after epoch ``epoch``: its per-epoch file, its
    snapshot, or ckpt.pth when that is where training stopped; None if none is kept."""
    for path in (layout.epoch_checkpoint(doc, epoch), layout.snapshot(doc, epoch)):
        if os.path.isfile(path):
            return path
    latest = layout.latest_checkpoint(doc)
    if os.path.isfile(latest):
        c = ck.load_checkpoint(latest)
        if c.get("epoch_index") == epoch and not c.get("step_in_epoch"):
            return latest
    return None


def expand_checkpoints(items):
    """Paths, folders (their ckpt_ep*.pth) and globs -> [(epoch or None, path)] by epoch."""
    out = []
    for item in items:
        if is_diffusers_folder(item):  # a diffusers UNet folder is one network
            paths = [item]
        elif os.path.isdir(item):
            paths = [p for p in glob.glob(os.path.join(item, "*.pth"))
                     if epoch_of_checkpoint(p) is not None]
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
    pairs = [(epoch_of_checkpoint(p), p) for p in dict.fromkeys(out)]
    return sorted(pairs, key=lambda e: (e[0] is None, e[0] or 0, e[1]))

