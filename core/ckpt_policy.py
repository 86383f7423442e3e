"""What a training run keeps on disk, and how much disk that takes (training.epoch_ckpt,
epoch_ckpt_until, snapshot_every, keep_last).

- ``ckpt.pth`` (model, EMA, optimizer, RNG: what a resume needs) is rewritten every epoch.
- ``ckpt_epE.pth`` per epoch, for epochs E < epoch_ckpt_until (0: every epoch), holding
  ``full`` = model + EMA (the seed's behaviour), ``ema`` = the EMA only (what masks and tickets
  read), or nothing at all (``none``). These are what ``prune.py`` scans for early birds.
- After that window, ``snapshot_epE.pth`` (model + EMA) every ``snapshot_every`` epochs; only
  the newest ``keep_last`` snapshots stay (0: all).
- An epoch whose weights are not kept in a per-epoch file gets its early-bird tickets saved by
  the online detector when it finds them, so TA-EB never needs the missing file.

A CIFAR-10 checkpoint (35.7M parameters) is about 143 MB per copy of the weights: ``full``
per-epoch files are about 286 MB, ``ema`` ones about 143 MB.
"""
import os
from dataclasses import dataclass

from utils.errors import UserError
from utils.io import free_bytes

# optimizer state per parameter, in copies of the weights
_OPTIMIZER_COPIES = {"Adam": 2, "AdamW": 2, "RMSProp": 1, "SGD": 1}


def keeps_epoch_file(cfg, epoch):
    t = cfg.training
    return t.epoch_ckpt != "none" and (t.epoch_ckpt_until == 0 or
                                          epoch < t.epoch_ckpt_until)


def is_snapshot(cfg, epoch):
    t = cfg.training
    if not t.snapshot_every or t.epoch_ckpt_until == 0 and t.epoch_ckpt != "none":
        return False  # every epoch has its file already
    return epoch >= t.epoch_ckpt_until and (epoch + 1) % t.snapshot_every == 0


def epoch_file_state(cfg, state):
    """The per-epoch file of a full checkpoint ``state``: no optimizer; no raw weights under
    ``ema``."""
    out = dict(state, optimizer=None)
    if cfg.training.epoch_ckpt == "ema":
        out["model"] = None
    return out


def snapshot_state(state):
    return dict(state, optimizer=None)


def old_snapshots(cfg, snapshots):
    """Of {epoch: path} snapshots, the paths that keep_last drops (oldest first)."""
    k = cfg.training.keep_last
    epochs = sorted(snapshots)
    return [snapshots[e] for e in epochs[:-k]] if k and len(epochs) > k else []


def state_bytes(module):
    """Bytes of a module's state dict as stored (parameters and buffers)."""
    return sum(v.numel() * v.element_size() for v in module.state_dict().values())


@dataclass
class DiskPlan:
    epoch_files: int
    epoch_file_bytes: int
    snapshots: int
    snapshot_bytes: int
    latest_bytes: int

    @property
    def total(self):
        # ckpt.pth is written next to its old copy before the rename: count it twice
        return (self.epoch_files * self.epoch_file_bytes + self.snapshots * self.snapshot_bytes
                + 2 * self.latest_bytes)


def plan(cfg, weights_bytes, start_epoch):
    """The disk a run's checkpoints will add from ``start_epoch`` to the end."""
    t = cfg.training
    has_ema = cfg.model.ema
    copies = 1 + (1 if has_ema else 0)
    epochs = range(start_epoch, t.n_epochs)
    per_file = weights_bytes * (1 if t.epoch_ckpt == "ema" else copies)
    n_snap = sum(1 for e in epochs if is_snapshot(cfg, e))
    if t.keep_last:
        n_snap = min(n_snap, t.keep_last + 1)  # the new one is written before old ones go
    opt = _OPTIMIZER_COPIES.get(cfg.optim.optimizer, 2)
    return DiskPlan(sum(1 for e in epochs if keeps_epoch_file(cfg, e)), per_file, n_snap,
                    weights_bytes * copies, weights_bytes * (copies + opt))


def _mb(n):
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def describe(cfg, p):
    t = cfg.training
    parts = [f"{p.epoch_files} per-epoch files ({t.epoch_ckpt}) of {_mb(p.epoch_file_bytes)}"]
    if p.snapshots:
        parts.append(f"{p.snapshots} snapshots of {_mb(p.snapshot_bytes)}")
    parts.append(f"ckpt.pth of {_mb(p.latest_bytes)}")
    return f"checkpoints: {', '.join(parts)}: about {_mb(p.total)}"


def check_disk(cfg, p, *, layout, doc, fresh):
    """One line about the projected disk use; a UserError if the disk cannot hold it. A fresh
    start (--ni) frees the run's old checkpoints first."""
    run_dir = layout.run_dir(doc)
    free = free_bytes(run_dir) + (sum(os.path.getsize(f) for f in layout.checkpoint_files(doc))
                                  if fresh else 0)
    line = f"{describe(cfg, p)} projected, {_mb(free)} free"
    if p.total > free:
        raise UserError(f"{line} in {run_dir}: not enough disk; keep less with "
                        f"training.epoch_ckpt: ema|none, training.epoch_ckpt_until, "
                        f"training.keep_last, or free some space")
    return line
