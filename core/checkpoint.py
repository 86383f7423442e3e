"""Checkpoints: one dict layout, atomic save, safe load (weights_only=True), rebuild dense or
pruned networks.

A checkpoint (``make_checkpoint``) is a dict of tensors and plain values:
  version, model (state dict), ema (state dict or None), optimizer (state dict or None),
  epochs_done (completed epochs: where a resume starts), epoch_index (index E of the last
  completed epoch; None before the first), step (optimizer steps), step_in_epoch (steps into
  epoch ``epochs_done``, non-zero only for a mid-epoch save), config, model_args, pruning (None,
  or {history, ratio, pruner, epoch, params, macs, ...}), rng, ts_range.
No nn.Module is ever pickled: a network is rebuilt from model_args (+ pruning history).
"""
import os

import torch

from models.networks import build_network
from utils.errors import UserError

VERSION = 2  # 2: epochs_done / epoch_index (version 1 stored epochs_done as 'epoch')


def cpu_state_dict(model):
    """The unwrapped network's weights on the CPU, in the standard memory layout."""
    from models.ema import unwrap
    return {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}


def make_checkpoint(*, model, config, model_args, ema=None, optimizer=None, epochs_done=0,
                    epoch_index=None, step=0, step_in_epoch=0, pruning=None, rng=None,
                    rng_ranks=None, ts_range=None):
    """The one checkpoint layout, for training runs and pruned tickets alike.

    model / ema: state dicts (CPU); optimizer: its state dict or None; rng: rank 0's RNG
    state; rng_ranks: every rank's, under torchrun."""
    return {"version": VERSION, "model": model, "ema": ema, "optimizer": optimizer,
            "epochs_done": int(epochs_done), "epoch_index": epoch_index, "step": int(step),
            "step_in_epoch": int(step_in_epoch), "config": config, "model_args": model_args,
            "pruning": pruning, "rng": rng, "rng_ranks": rng_ranks,
            "ts_range": list(ts_range) if ts_range is not None else None}


def _bare(model_sd, ema_sd=None):
    return make_checkpoint(model=model_sd, ema=ema_sd, config=None, model_args=None) | \
        {"version": 0}


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint with weights_only=True; any failure is one UserError line. A local
    diffusers UNet folder or a .safetensors file (core/interop.py) loads too."""
    from core import interop
    # an imported network counts as epoch 0 (masks and tickets are named by epoch)
    if interop.is_diffusers_folder(path):
        sd, args = interop.load_diffusers_folder(path)
        return make_checkpoint(model=sd, config=None, model_args=args, epoch_index=0)
    if path.endswith(".safetensors") and os.path.isfile(path):
        sd, args, pruning, config = interop.load_safetensors(path)
        return make_checkpoint(model=sd, config=config, model_args=args, pruning=pruning,
                               epoch_index=0)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of code, not a torch file at all
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({msg[:160]})")
    if isinstance(ckpt, dict) and "model" in ckpt and "model_args" in ckpt:
        if ckpt.get("version", 1) < 2:  # version 1 stored the completed epochs as 'epoch'
            done = ckpt.pop("epoch", 0)
            ckpt.setdefault("epochs_done", done)
            ckpt.setdefault("epoch_index", done - 1 if done else None)
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        # a bare state dict, e.g. the official DDPM CIFAR-10 weights
        return _bare(ckpt)
    if isinstance(ckpt, list) and ckpt and isinstance(ckpt[0], dict):
        # the DDIM codebase's positional list: [model, optimizer, epoch, step, (ema)]
        sd = {k.removeprefix("module."): v for k, v in ckpt[0].items()}
        ema = ({k.removeprefix("module."): v for k, v in ckpt[-1].items()}
               if len(ckpt) >= 5 and isinstance(ckpt[-1], dict) else None)
        return _bare(sd, ema)
    raise UserError(f"{path}: not a checkpoint of this project (no 'model'/'model_args')")


def epochs_done(path):
    """Epochs a run has finished, read from its latest checkpoint (0 when there is none)."""
    return load_checkpoint(path)["epochs_done"] if os.path.isfile(path) else 0


def build_model(model_args, pruning=None):
    """A fresh network (random weights) of the stored architecture."""
    if pruning:
        from models.pruning import rebuild_pruned
        return rebuild_pruned(model_args, pruning["history"],
                              pruning.get("removed_blocks", ()))
    return build_network(model_args)


def architecture_differences(cfg, model_args):
    """Keys of the config's model section whose value differs from a checkpoint's network."""
    wanted = cfg.model_kwargs()
    return [k for k in wanted if k in model_args and wanted[k] != model_args[k]]


def load_weights(model, state_dict, source):
    """load_state_dict(strict) with a one-line error naming the first mismatch."""
    own = model.state_dict()
    for k, v in state_dict.items():
        if k not in own:
            raise UserError(f"{source}: unexpected parameter '{k}' (the checkpoint does not "
                            f"match the configured architecture)")
        if tuple(own[k].shape) != tuple(v.shape):
            raise UserError(f"{source}: parameter '{k}' has shape {tuple(v.shape)}, the "
                            f"configured model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise UserError(f"{source}: parameter '{missing[0]}' is missing "
                        f"({len(missing)} missing in all)")
    model.load_state_dict(state_dict, strict=True)


def pick_weights(ckpt, use_ema, source):
    """The EMA weights when asked for and present, else the raw ones; a per-epoch file written
    with training.epoch_ckpt: ema holds no raw weights."""
    if use_ema and ckpt.get("ema") is not None:
        return ckpt["ema"]
    if ckpt.get("model") is None:
        raise UserError(f"{source}: holds only EMA weights (training.epoch_ckpt: ema); use "
                        f"them (--use_ema, pruning.use_ema: true)")
    return ckpt["model"]


def model_from_checkpoint(ckpt, source, use_ema=True, model_args=None):
    """Rebuild the network stored in ``ckpt`` (EMA weights when asked and present)."""
    args = ckpt.get("model_args") or model_args
    if args is None:
        raise UserError(f"{source}: checkpoint has no model_args and none were given")
    try:
        model = build_model(args, ckpt.get("pruning"))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{source}: cannot rebuild its network ({str(e).splitlines()[0]})")
    load_weights(model, pick_weights(ckpt, use_ema, source), source)
    return model
