"""TA-EB tickets (docs/design.md, steps 4-5): resolve each region's ticket, fine-tune the
unfinished ones (local processes on GPU groups, or Slurm jobs: runners/launch.py), and write the
manifest ``{exp}/tickets/{doc}/tickets.yml`` that stitched sampling reads (core/regions.py)."""
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import yaml

from core.checkpoint import epochs_done, load_checkpoint
from core.device import cpu_threads
from core.layout import ratio_key, region_doc
from core.lock import RunLock
from core.regions import Region, require_regions, training_range, visited_top
from core.runlog import critical_and_total, read_costs, summed_cost
from models.earlybird import find_earlybird
from runners.launch import (gpu_groups, read_template, run_local, sbatch_script, slurm_options,
                            submit_slurm, ticket_command)
from runners.masks import load_mask_series
from runners.pruning import ticket_for
from utils.errors import UserError
from utils.io import atomic_write_json, atomic_write_text, read_json


@dataclass(frozen=True)
class TicketJob:
    """One region's ticket, resolved: the pruned file it starts from and where it runs."""
    region: Region
    epoch: Optional[int]        # the dense epoch it was pruned from (None: a given ticket file)
    ticket_file: str
    run_doc: str                # its training run, {doc}_taeb_{lo}_{hi}
    log_file: str

    @property
    def label(self):
        r = self.region
        return f"region [{r.lo}, {r.hi}) (ratio {ratio_key(r.pruning_ratio)})"


def eb_epoch_for(xp, ratio):
    """The EB epoch of ``ratio`` in dense run ``xp.doc``: the online record if any, else the
    FIFO rule on its masks; None when there is none."""
    layout, eb = xp.layout, xp.cfg.earlybird
    online = layout.earlybird_record(xp.doc)
    if os.path.isfile(online):
        with open(online) as f:
            rec = json.load(f)
        entry = rec.get("ratios", {}).get(ratio_key(ratio))
        if entry and entry.get("eb_epoch") is not None and \
                rec.get("pruner", eb.pruner) == eb.pruner:
            return int(entry["eb_epoch"])
    if not os.path.isdir(layout.masks_dir(xp.doc)):
        return None
    try:
        series = load_mask_series(layout.masks_dir(xp.doc), ratio, eb.pruner, doc=xp.doc)
    except UserError:
        return None
    epoch, _ = find_earlybird(series, window=eb.window, threshold=eb.threshold)
    return epoch


def ticket_epoch(xp, ratio, *, fallback=None, log=print):
    """The dense epoch the ticket of ``ratio`` is pruned at: its EB epoch; when the masks never
    settled, the dense run's last epoch if ``fallback`` (default: earlybird.fallback) is
    'last' (said in a note: it is no early-bird ticket), else None. The one place that decides
    it, for the pipeline, train_tickets.py and the planner."""
    epoch = eb_epoch_for(xp, ratio)
    if epoch is not None or (fallback or xp.cfg.earlybird.fallback) != "last":
        return epoch
    last = epochs_done(xp.layout.latest_checkpoint(xp.doc)) - 1
    if last < 0:
        return None
    if log:
        log(f"note: no early-bird epoch for p={ratio:g}; its ticket is drawn at the last epoch "
            f"{last} (not an early-bird ticket)")
    return last


def ticket_stats(ticket_file):
    p = load_checkpoint(ticket_file).get("pruning") or {}
    return p.get("params"), p.get("macs"), p.get("epoch")


def resolve_tickets(xp, regions):
    """A TicketJob for every region: its pruned ticket file (pruned once, reused)."""
    jobs = []
    for r in regions:
        epoch, ticket = r.epoch, r.ticket
        if ticket:
            if not os.path.isfile(ticket):
                raise UserError(f"region [{r.lo}, {r.hi}): ticket {ticket} not found")
        else:
            if epoch is None:
                epoch = ticket_epoch(xp, r.pruning_ratio)
            if epoch is None:
                raise UserError(
                    f"region [{r.lo}, {r.hi}): no early-bird epoch found for ratio "
                    f"{ratio_key(r.pruning_ratio)} in {xp.layout.run_dir(xp.doc)} or its "
                    f"masks; add 'epoch: E' (prune that epoch) or 'ticket: PATH' to the region")
            ticket = ticket_for(xp, r.pruning_ratio, epoch)
        jobs.append(TicketJob(r, epoch, ticket, region_doc(xp.tset, r.range),
                              xp.layout.region_log(xp.tset, r.range)))
    return jobs


def _region_args(xp, job, *, resume, until_epoch=None):
    """main.py's arguments that fine-tune one region's ticket."""
    r = job.region
    lo, hi, _ = training_range(xp.cfg, r)
    args = ["--config", xp.config, "--exp", xp.exp, "--doc", job.run_doc, "--ni",
            "--load_pruned_model", job.ticket_file, "--ts_range", str(lo), str(hi)]
    if resume:
        args.append("--resume_training")
    if until_epoch:
        args += ["--until_epoch", str(until_epoch)]
    ovr = list(xp.overrides) + [f"training.n_epochs={xp.cfg.taeb.finetune_epochs}",
                                "earlybird.enabled=false"]
    return args + ["--override"] + ovr + list(r.overrides)


def warn_unvisited(cfg, jobs):
    """One line per ticket that trains timesteps the configured sampler never visits, beyond
    the ``taeb.overlap`` margin every ticket trains past its ends on purpose."""
    s = cfg.sampling
    top = visited_top(cfg)
    margin_end = top + 1 + cfg.taeb.overlap
    for j in jobs:
        lo, hi, unvisited = training_range(cfg, j.region)
        if unvisited and unvisited[1] > margin_end:
            print(f"warning: the ticket for {j.label} trains timesteps [{unvisited[0]}, "
                  f"{unvisited[1]}), which the {s.timesteps}-step {s.skip_type} sampler never "
                  f"visits (its highest is {top}); taeb.visited_only: true trains "
                  f"only where samples are drawn", file=sys.stderr)


def write_manifest(xp, jobs, schedule=None, placement=None):
    """tickets.yml: every region's fine-tuned checkpoint, cost and where it was pruned from."""
    layout = xp.layout
    out_dir = layout.tickets_dir(xp.tset)
    man = {"doc": xp.doc, "ticket_set": xp.tset,
           "num_timesteps": xp.cfg.diffusion.num_diffusion_timesteps,
           "config": xp.config, "schedule": schedule, "tickets": []}
    for job in jobs:
        costs = read_costs(layout.costs(job.run_doc))
        wall, flops = summed_cost(costs)
        params, macs, _ = ticket_stats(job.ticket_file)
        man["tickets"].append({
            "range": list(job.region.range), "pruning_ratio": job.region.pruning_ratio,
            "eb_epoch": job.epoch,
            "checkpoint": os.path.relpath(layout.latest_checkpoint(job.run_doc), out_dir),
            "pruned_from": os.path.relpath(job.ticket_file, out_dir),
            "params": params, "macs": macs, "epochs": len(costs),
            "wall_s": round(wall, 3),
            "process_s": round(sum(c["process_s"] for c in costs), 3),
            "train_flops": flops,
            "placement": (placement or {}).get(job.run_doc)})
    walls = [t["wall_s"] for t in man["tickets"]]
    crit, total = critical_and_total(0.0, walls, [(t["placement"] or {}).get("slot")
                                                 for t in man["tickets"]])
    man["critical_path_wall_s"] = round(crit, 3)
    man["total_wall_s"] = round(total, 3)
    path = layout.manifest(xp.tset)
    atomic_write_text(path, yaml.safe_dump(man, sort_keys=False))
    print(f"tickets trained: {path} (critical path {max(walls):.1f}s, total {sum(walls):.1f}s)")
    return path


@dataclass
class Launch:
    """How the tickets run (earlybird_scripts/train_tickets.py's flags)."""
    gpus: Optional[list] = None         # None: every visible GPU, else the CPU
    max_parallel: Optional[int] = None
    gpus_per_ticket: int = 1            # DDP processes per ticket (gloo ones on the CPU)
    tickets_per_gpu: int = 1            # tickets sharing one GPU group (see docs/scaling.md)
    launcher: str = "local"             # local | slurm
    dry_run: bool = False
    collect: bool = False
    until_epoch: Optional[int] = None   # pause every ticket there (resumable); no manifest
    slurm: dict = field(default_factory=dict)   # partition, time_limit, cpus, mem, account
    slurm_template: Optional[str] = None
    poll_s: float = 1.0
    progress: bool = True


def train_tickets(xp, launch=None):
    """Fine-tune every unfinished region's ticket of experiment ``xp`` (each for
    ``taeb.finetune_epochs``), then write the manifest; returns 0, or 1 if a ticket failed
    (local), sbatch failed, or --collect found unfinished tickets."""
    launch = launch or Launch()
    with RunLock(xp.layout.tickets_lock(xp.tset), f"the TA-EB tickets of {xp.tset}"):
        return _train_tickets(xp, launch)


def _train_tickets(xp, launch):
    jobs = resolve_tickets(xp, require_regions(xp.cfg, xp.config))
    warn_unvisited(xp.cfg, jobs)
    todo = [j for j in jobs if not os.path.isfile(xp.layout.done_marker(j.run_doc))]
    if launch.collect:
        return _collect(xp, jobs, todo)
    if launch.launcher == "slurm":
        return _submit(xp, todo, launch)
    return _run_here(xp, jobs, todo, launch)


def _run_here(xp, jobs, todo, launch):
    gpus = launch.gpus
    if gpus is None:
        import torch
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    per, share = launch.gpus_per_ticket, launch.tickets_per_gpu
    if share > 1 and not gpus:
        raise UserError("--tickets_per_gpu shares GPUs; on the CPU use --max_parallel")
    # a group listed K times is shared by K tickets: K slots on the same GPUs
    groups = [g for g in gpu_groups(gpus, per) for _ in range(share)]
    commands = [(j, ticket_command(_region_args(
        xp, j, resume=os.path.isfile(xp.layout.latest_checkpoint(j.run_doc)),
        until_epoch=launch.until_epoch), per)) for j in todo]
    # one ticket per slot; without GPUs one at a time, each with all the threads this process
    # may use, so each ticket's time is what it would take on a device of its own (a fair
    # critical path)
    k = launch.max_parallel or (len(groups) if gpus else 1)
    k = max(1, min(k, len(commands) or 1))
    threads = max(1, cpu_threads() // (k * per))
    each = f"{per} GPUs" if per > 1 else "one GPU"
    n_threads = f"{threads} thread{'s' if threads > 1 else ''}"
    schedule = (f"{k} at a time, {each} each" if gpus else
                f"one at a time, {n_threads} each" if k == 1 else
                f"{k} at a time sharing the CPU ({n_threads} per process)")
    if per > 1:
        schedule += f", {per} DDP processes per ticket"
    if share > 1:
        schedule += f", {share} tickets per GPU"
    failed, slots = run_local(commands, groups, k=k, threads=threads,
                              n_epochs=xp.cfg.taeb.finetune_epochs, layout=xp.layout,
                              poll_s=launch.poll_s, progress=launch.progress)
    if failed:
        for j in failed:
            print(f"ticket for {j.label} failed: see {j.log_file}", file=sys.stderr)
        print(f"{len(failed)} of {len(jobs)} tickets failed; the others are kept; rerun the "
              f"same command to finish only what is unfinished", file=sys.stderr)
        return 1
    placement = {doc: {"slot": s, "gpus": groups[s]} for doc, s in slots.items()
                 if s is not None}
    placement = _merge_placement(xp, placement)
    if any(not os.path.isfile(xp.layout.done_marker(j.run_doc)) for j in jobs):
        print(f"tickets paused after {launch.until_epoch} epochs (--until_epoch); no manifest "
              f"yet")
        return 0
    write_manifest(xp, jobs, schedule, placement)
    return 0


def _merge_placement(xp, placement):
    """This invocation's placement, plus that of tickets an earlier invocation trained (a
    rerun after a failure keeps where the finished ones ran)."""
    path = xp.layout.ticket_placement(xp.tset)
    earlier = read_json(path, {})
    earlier.update(placement)
    atomic_write_json(path, earlier)
    return earlier


def _submit(xp, todo, launch):
    """One sbatch script and job per unfinished ticket."""
    if not todo:
        print(f"every ticket of {xp.tset} is trained; write the manifest with --collect")
        return 0
    per = launch.gpus_per_ticket
    template = read_template(launch.slurm_template) if launch.slurm_template else None
    resources = slurm_options(gpus=per, **launch.slurm)

    def script_for(job, cmd):
        os.makedirs(os.path.dirname(job.log_file), exist_ok=True)
        return sbatch_script(cmd, job_name=job.run_doc, log=os.path.abspath(job.log_file),
                             latest=os.path.abspath(xp.layout.latest_checkpoint(job.run_doc)),
                             gpus=per, template=template, resources=resources)
    # the script adds --resume_training by itself when the ticket has a checkpoint
    commands = [(j, ticket_command(_region_args(xp, j, resume=False), per)) for j in todo]
    rc = submit_slurm(commands, xp.layout, xp.tset, dry_run=launch.dry_run,
                      script_for=script_for)
    if not launch.dry_run:
        print("when the jobs are done, write the manifest with the same command and --collect")
    return rc


def _collect(xp, jobs, todo):
    """The manifest, once every ticket is trained; else which ones are not."""
    if todo:
        submitted = read_json(xp.layout.slurm_jobs(xp.tset), {})
        for j in todo:
            job_id = submitted.get(j.run_doc, {}).get("job_id")
            print(f"not finished: {j.label}{f', job {job_id}' if job_id else ''}; "
                  f"log {j.log_file}", file=sys.stderr)
        print(f"{len(todo)} of {len(jobs)} tickets are not finished; no manifest written",
              file=sys.stderr)
        return 1
    write_manifest(xp, jobs, "separate jobs, one per ticket (collected)")
    return 0
