"""After each epoch of a training run (runners/train.py): checkpoints (ckpt.pth last), the cost
record, the online early-bird masks, a sample grid, the epoch's line; and what a signal or the
end of training writes."""
import os
import time

import torch
import torch.distributed as dist

from core import ckpt_policy as policy
from core.device import gather_rng_states, training_rng_untouched
from core.runlog import append_jsonl, training_flops
from runners.grids import save_sample_grid
from runners.run_files import resume_command
from runners.sample import sample_indexed
from utils.io import atomic_save


def end_epoch(loop, run, epoch, stats):
    """Checkpoints, cost record, online masks and grid after epoch ``epoch``; returns whether
    training stops here (every early-bird ratio found and ``earlybird.stop``)."""
    cfg, layout, doc = loop.cfg, loop.layout, loop.doc
    stop_training = False
    rngs = gather_rng_states(loop.device, loop.world)  # every rank's, before rank 0 saves
    if loop.rank == 0:
        _still_ours(loop)
        state = run.checkpoint(cfg, rngs=rngs, epochs_done=epoch + 1, step_in_epoch=0)
        _keep_epoch(loop, state, epoch)
        record = cost_record(loop, run, epoch, stats)
        with training_rng_untouched(loop.device):
            if loop.earlybird is not None:
                t_eb = time.perf_counter()
                weights = run.ema.shadow if run.ema is not None and \
                    cfg.pruning.use_ema else run.model
                # weights not kept on disk: the tickets found now are pruned now
                found_all = loop.earlybird.update(
                    epoch, weights, loop.log,
                    save_tickets=not policy.keeps_epoch_file(cfg, epoch))
                record["earlybird_s"] = time.perf_counter() - t_eb
                stop_training = found_all and cfg.earlybird.stop
            append_jsonl(layout.costs(doc), record)
            loop.log.scalars({"epoch/loss": stats["loss"], "epoch/wall_s": stats["wall_s"]},
                             epoch)
            loop.log.say(_epoch_line(loop, epoch, stats))
            every = cfg.training.sample_every
            full_range = tuple(run.ts_range) == (0, loop.diffusion.num_timesteps)
            # a region ticket alone cannot sample the whole chain: its grid would be noise
            if every and full_range and ((epoch + 1) % every == 0 or
                                         epoch + 1 == cfg.training.n_epochs or
                                         stop_training):
                grid = sample_grid(cfg, run.ema.shadow if run.ema is not None else run.model,
                                   device=loop.device, path=layout.training_grid(doc, epoch),
                                   title=f"{doc}, epoch {epoch}")
                loop.log.image("samples", grid, epoch)
        # ckpt.pth last: a kill before this line reruns the epoch, and its records with it
        atomic_save(state, layout.latest_checkpoint(doc))
    if loop.world > 1:
        flag = torch.tensor([1.0 if stop_training else 0.0], device=loop.device)
        dist.broadcast(flag, 0)
        stop_training = bool(flag.item())
    if stop_training and loop.rank == 0:
        loop.log.say(f"early-bird found for every ratio: dense training stops after "
                     f"epoch {epoch}")
    return stop_training


def cost_record(loop, run, epoch, stats):
    """The cost record of ``epoch``; resumed mid-epoch, it includes the interrupted part."""
    record = {"epoch": epoch, "steps": stats["steps"], "images": stats["images"],
              "wall_s": stats["wall_s"], "process_s": stats["process_s"], "loss": stats["loss"],
              "skipped_steps": stats.get("skipped_steps", 0),
              "world_size": loop.world, "device": str(loop.device.type),
              "macs_per_image": loop.macs_per_image, "flops_per_image": loop.flops_per_image}
    prev = run.carried_cost  # also carried on when this epoch is interrupted again
    if prev is not None and prev["epoch"] == epoch:
        steps = record["steps"] + prev["steps"]
        record["loss"] = (record["loss"] * record["steps"] + prev["loss"] * prev["steps"]) / \
            max(steps, 1)
        for k in ("steps", "images", "wall_s", "process_s"):
            record[k] += prev[k]
    record["train_flops"] = training_flops(loop.flops_per_image, record["images"])
    return record


def _keep_epoch(loop, state, epoch):
    """The per-epoch file and snapshot of ``epoch`` that training.epoch_ckpt & co. ask for."""
    cfg, layout, doc = loop.cfg, loop.layout, loop.doc
    if policy.keeps_epoch_file(cfg, epoch):
        # no optimizer state: these are what masks and tickets read
        atomic_save(policy.epoch_file_state(cfg, state), layout.epoch_checkpoint(doc, epoch))
    if policy.is_snapshot(cfg, epoch):
        atomic_save(policy.snapshot_state(state), layout.snapshot(doc, epoch))
        for old in policy.old_snapshots(cfg, layout.snapshots(doc)):
            os.remove(old)


def _epoch_line(loop, epoch, stats):
    n = loop.cfg.training.n_epochs
    line = (f"epoch {epoch}/{n - 1}: loss {stats['loss']:.4f}, "
            f"{stats['images'] / max(stats['wall_s'], 1e-9):.0f} img/s, {stats['wall_s']:.1f}s")
    if stats.get("skipped_steps"):
        line += f", {stats['skipped_steps']} step(s) skipped (non-finite loss or gradient)"
    if loop.earlybird is not None:
        dists = loop.earlybird.last_distances()
        line += "; EB distance " + ", ".join(
            f"p={r:g}: {'-' if d is None else f'{d:.3f}'}" for r, d in dists.items())
        found = [f"p={r:g}" for r, det in loop.earlybird.detectors.items()
                 if det.eb_epoch == epoch]
        if found:
            line += f" (early bird found for {', '.join(found)})"
    return line


def _still_ours(loop):
    """Write nothing into a run folder this process no longer holds (removed and started
    again by another process: its files would be overwritten with this run's)."""
    if getattr(loop, "lock", None) is not None:
        loop.lock.check()


def save_interrupted(loop, run, epoch, stats, signum, rngs):
    _still_ours(loop)
    path = loop.layout.latest_checkpoint(loop.doc)
    state = run.checkpoint(loop.cfg, rngs=rngs, epochs_done=epoch,
                           step_in_epoch=stats["step_in_epoch"])
    atomic_save(state, path)
    if stats["steps"]:  # what this part of the epoch cost: its resume adds it to the epoch
        append_jsonl(loop.layout.costs(loop.doc),
                     dict(cost_record(loop, run, epoch, stats), partial=True))
    loop.log.say(f"signal {signum}: saved a resumable checkpoint {path} (epoch {epoch}, step "
                 f"{run.step}); resume with: {resume_command(loop.opts)}")


def summary(loop, run):
    L, doc = loop.layout, loop.doc
    kept = [n for n, have in (("ckpt_ep*.pth", L.epoch_checkpoints(doc)),
                              ("snapshot_ep*.pth", L.snapshots(doc))) if have]
    lines = [f"finished {doc}: {run.step} steps; checkpoint {L.latest_checkpoint(doc)}"
             + (f" and {' and '.join(kept)} beside it" if kept else ""),
             f"  log {L.run_log(doc)}, costs {L.costs(doc)}, TensorBoard {L.tb_dir(doc)}"]
    if loop.earlybird is not None:
        found = {r: d.eb_epoch for r, d in loop.earlybird.detectors.items()}
        lines.append(f"  masks {L.masks_dir(doc)}; early-bird epochs "
                     + ", ".join(f"p={r:g}: {e if e is not None else 'none yet'}"
                                 for r, e in found.items()))
    if loop.cfg.training.sample_every:
        lines.append(f"  sample grids {os.path.dirname(L.training_grid(doc, 0))}")
    for line in lines:
        loop.log.say(line)


def sample_grid(cfg, model, *, device, path, title=None):
    """A titled PNG grid of training.grid_samples images (the fixed per-image noise of every
    sample folder, runners/sample.py); returns the grid image [C, H, W] in [0, 1]."""
    s = cfg.sampling
    images = sample_indexed(model, cfg, list(range(cfg.training.grid_samples)), device=device)
    label = f"{title}, " if title else ""
    return save_sample_grid(images, path, f"{label}{s.timesteps} {s.skip_type} steps")
