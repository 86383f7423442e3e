"""Where a training run's network comes from (docs/long_runs.md): resume > a pruned ticket
(--load_pruned_model) > --restore_from > a fresh dense network; and, when ckpt.pth cannot be
read, the newest intact snapshot or per-epoch file."""
import os
from dataclasses import dataclass
from typing import Optional

from core import checkpoint as ck
from models.pruning import count_flops, count_params_macs
from utils.errors import UserError


@dataclass
class Source:
    """Where a run's network comes from."""
    model_args: dict
    pruning: Optional[dict] = None
    weights: Optional[dict] = None       # initial state dict (None: random init)
    weights_from: Optional[str] = None
    resume: Optional[dict] = None        # the checkpoint a resumed run continues
    restart: bool = False                # --resume_training of a run that never saved a
                                         # whole state: it starts over (the same result)


def _refuse_other_architecture(cfg, model_args, source, what):
    diff = ck.architecture_differences(cfg, model_args)
    if diff:
        shown = ", ".join(f"{k} (config {cfg.model_kwargs()[k]!r}, checkpoint "
                          f"{model_args[k]!r})" for k in diff)
        raise UserError(f"{source}: cannot {what} with another architecture: {shown}")


def resolve_source(cfg, opts, layout):
    """resume > --load_pruned_model > --restore_from > a fresh dense network."""
    if opts.resume:
        c, latest = _resume_state(layout, opts.doc)
        if c is None:
            return Source(cfg.model_kwargs(), restart=True)
        _refuse_other_architecture(cfg, c["model_args"], latest, "resume")
        return Source(c["model_args"], c.get("pruning"), resume=c, weights_from=latest)
    if layout.checkpoint_files(opts.doc) and not opts.ni:
        raise UserError(f"{layout.run_dir(opts.doc)} already holds checkpoints: pass "
                        f"--resume_training to continue or --ni to start over")
    if opts.load_pruned_model:
        src = opts.load_pruned_model
        tk = ck.load_checkpoint(src)
        if not tk.get("pruning"):
            raise UserError(f"--load_pruned_model {src}: not a pruned model (no pruning history)")
        _refuse_other_architecture(cfg, tk["model_args"], src, "fine-tune")
        return Source(tk["model_args"], tk["pruning"], tk["model"], src)
    if opts.restore_from:
        rs = ck.load_checkpoint(opts.restore_from)
        sd = ck.pick_weights(rs, opts.use_ema, opts.restore_from)
        if rs.get("model_args"):
            _refuse_other_architecture(cfg, rs["model_args"], opts.restore_from, "train on")
        if rs.get("pruning"):
            return Source(rs["model_args"], rs["pruning"], sd, opts.restore_from)
        return Source(cfg.model_kwargs(), None, sd, opts.restore_from)
    return Source(cfg.model_kwargs())


def _resume_state(layout, doc):
    """(checkpoint, path) that --resume_training continues: ckpt.pth, the run's whole state
    (exact); when it is missing or unreadable, the newest intact snapshot or per-epoch file
    (said, with what is lost); (None, None) when the run never saved a whole state and at most
    its first epoch's files exist (a crash during the first epoch's writes): starting over
    gives the same run."""
    latest = layout.latest_checkpoint(doc)
    if os.path.isfile(latest):
        try:
            return ck.load_checkpoint(latest), latest
        except UserError as e:
            return _last_good_checkpoint(layout, doc, str(e))
    files = {**layout.epoch_checkpoints(doc), **layout.snapshots(doc)}
    if set(files) <= {0}:
        print(f"note: --resume_training: no {os.path.basename(latest)} in "
              f"{layout.run_dir(doc)} (the run stopped before its first epoch was saved whole); "
              f"starting it over, which gives the same result")
        return None, None
    return _last_good_checkpoint(layout, doc, f"--resume_training: no checkpoint at {latest}")


def _last_good_checkpoint(layout, doc, why):
    """The newest readable snapshot or per-epoch file of a run whose ckpt.pth is unreadable,
    made resumable; says which epoch it resumes from and what is lost."""
    files = {**layout.epoch_checkpoints(doc), **layout.snapshots(doc)}
    for epoch in sorted(files, reverse=True):
        try:
            c = ck.load_checkpoint(files[epoch])
        except UserError:
            print(f"note: {files[epoch]} is unreadable too")
            continue
        lost = ["the optimizer's moments (they restart from zero)"]
        if c.get("model") is None:  # an EMA-only file: the raw weights restart from the EMA
            c["model"] = c["ema"]
            lost.append("the raw weights (they restart from the EMA weights)")
        c.update(optimizer=None, step_in_epoch=0)
        print(f"note: {why}; resuming from {files[epoch]}, after epoch {epoch}: epochs "
              f"{epoch + 1} and later are trained again; lost: {' and '.join(lost)}")
        return c, files[epoch]
    raise UserError(f"{why}; and no intact snapshot or per-epoch file in {layout.run_dir(doc)} "
                    f"to fall back on: start over with --ni")


def network_costs(model, source):
    """(MACs, forward FLOPs) per image of a run's network: MACs from its pruning record, else
    counted by torch-pruning; FLOPs by FlopCounterMode (attention included)."""
    if source.pruning and source.pruning.get("macs"):
        macs = int(source.pruning["macs"])
    else:
        macs = count_params_macs(ck.build_model(source.model_args, source.pruning),
                                 source.model_args)[1]
    return macs, count_flops(model, source.model_args)
