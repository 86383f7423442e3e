"""Checkpoints: atomic save, safe load (weights_only=True), rebuild dense or pruned networks.

A checkpoint is a dict of tensors and plain values:
  version, model (state dict), ema (state dict or None), optimizer (state dict or None),
  epoch (epochs completed), step (global optimizer steps), step_in_epoch, config,
  model_args, pruning (None, or {history, ratio, pruner, source, epoch, ...}), rng, costs.
No nn.Module is ever pickled: a network is rebuilt from model_args (+ pruning history).
"""
import contextlib
import os
import tempfile

import torch

from models.unet import UNet
from runners.errors import UserError

VERSION = 1


def _tmp_path(path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results should be readable like any other
    return tmp


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path in ``path``'s folder; on success it is renamed over ``path``, so a
    kill at any moment leaves the previous file intact."""
    tmp = _tmp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint with weights_only=True; any failure is one UserError line."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle of code, not a torch file at all
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({msg[:160]})")
    if isinstance(ckpt, dict) and "model" in ckpt and "model_args" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        # a bare state dict, e.g. the official DDPM CIFAR-10 weights
        return {"version": 0, "model": ckpt, "ema": None, "model_args": None, "pruning": None,
                "epoch": 0, "step": 0}
    if isinstance(ckpt, list) and ckpt and isinstance(ckpt[0], dict):
        # the DDIM codebase's positional list: [model, optimizer, epoch, step, (ema)]
        sd = {k.removeprefix("module."): v for k, v in ckpt[0].items()}
        ema = ({k.removeprefix("module."): v for k, v in ckpt[-1].items()}
               if len(ckpt) >= 5 and isinstance(ckpt[-1], dict) else None)
        return {"version": 0, "model": sd, "ema": ema, "model_args": None, "pruning": None,
                "epoch": 0, "step": 0}
    raise UserError(f"{path}: not a checkpoint of this project (no 'model'/'model_args')")


def build_model(model_args, pruning=None):
    """A fresh network (random weights) of the stored architecture."""
    if pruning:
        from models.pruning import rebuild_pruned
        return rebuild_pruned(model_args, pruning["history"])
    return UNet(**model_args)


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
    sd = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    load_weights(model, sd, source)
    return model
