"""TA-EB tickets (DESIGN.md steps 4-5): resolve each region's ticket, fine-tune the unfinished
ones (local processes on GPU groups, or Slurm jobs: runners/launch.py), and write the manifest
``{exp}/tickets/{doc}/tickets.yml`` that stitched sampling reads."""
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import yaml

from models.stitched import check_regions
from runners.launch import (gpu_groups, read_template, run_local, sbatch_script,
                            slurm_options, submit_slurm, ticket_command)
from runners.layout import Layout, region_doc
from runners.masks import load_mask_series
from runners.pruning import ticket_for
from runners.runlog import read_costs
from utils.errors import UserError
from utils.io import atomic_write_text, load_yaml, read_json

REGION_KEYS = {"range", "pruning_ratio", "epoch", "ticket", "overrides"}


def parse_range(rng, where):
    """[lo, hi] of a region (config or manifest) -> [lo, hi] ints, or a UserError."""
    if not (isinstance(rng, list) and len(rng) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) for v in rng)):
        raise UserError(f"{where}: range must be [lo, hi], got {rng!r}")
    return [int(rng[0]), int(rng[1])]


def check_tiling(ranges, num_timesteps, where):
    try:
        check_regions(ranges, num_timesteps, where=where)
    except ValueError as e:
        raise UserError(str(e))


def parse_regions(cfg, source="config"):
    """taeb.regions -> list of dicts with range (lo, hi), pruning_ratio, epoch, ticket."""
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    regions = cfg["taeb"]["regions"]
    if not regions:
        raise UserError(f"{source}: taeb.regions is empty: describe the TA-EB tickets there")
    out = []
    for i, r in enumerate(regions):
        where = f"{source}: taeb.regions[{i}]"
        if not isinstance(r, dict) or "range" not in r or "pruning_ratio" not in r:
            raise UserError(f"{where} needs 'range' and 'pruning_ratio'")
        unknown = set(r) - REGION_KEYS
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(REGION_KEYS))})")
        p = r["pruning_ratio"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise UserError(f"{where}.pruning_ratio must be in (0, 1)")
        out.append({"range": parse_range(r["range"], where), "pruning_ratio": float(p),
                    "epoch": r.get("epoch"), "ticket": r.get("ticket"),
                    "overrides": list(r.get("overrides") or [])})
    check_tiling([r["range"] for r in out], T, f"{source}: taeb.regions")
    return out


def load_manifest(path, num_timesteps=None):
    """tickets.yml -> list of ticket dicts with resolved checkpoint paths."""
    man = load_yaml(path, "ticket manifest")
    if not isinstance(man, dict) or not isinstance(man.get("tickets"), list) or \
            not man["tickets"]:
        raise UserError(f"{path}: expected a mapping with a non-empty 'tickets' list")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, t in enumerate(man["tickets"]):
        if not isinstance(t, dict) or "range" not in t or "checkpoint" not in t:
            raise UserError(f"{path}: ticket {i} needs 'range' and 'checkpoint'")
        r = parse_range(t["range"], f"{path}: ticket {i}")
        cp = t["checkpoint"]
        cand = cp if os.path.isabs(cp) else os.path.join(base, cp)
        if not os.path.isfile(cand) and os.path.isfile(cp):
            cand = cp
        if not os.path.isfile(cand):
            raise UserError(f"{path}: ticket {i} [{r[0]}, {r[1]}): checkpoint {cp} not found")
        out.append(dict(t, range=r, checkpoint=cand))
    check_tiling([t["range"] for t in out], num_timesteps or man.get("num_timesteps"), path)
    return out


def eb_epoch_for(exp, doc, ratio, cfg):
    """The EB epoch of ``ratio``: the online record if any, else the FIFO rule on the masks."""
    from models.earlybird import find_earlybird
    layout = Layout(exp)
    pruner = cfg["earlybird"]["pruner"]
    online = layout.earlybird_record(doc)
    if os.path.isfile(online):
        with open(online) as f:
            rec = json.load(f)
        entry = rec.get("ratios", {}).get(f"{ratio:g}")
        if entry and entry.get("eb_epoch") is not None and rec.get("pruner", pruner) == pruner:
            return int(entry["eb_epoch"])
    if not os.path.isdir(layout.masks_dir(doc)):
        return None
    try:
        series = load_mask_series(layout.masks_dir(doc), ratio, pruner, doc=doc)
    except UserError:
        return None
    eb, _ = find_earlybird(series, cfg["earlybird"]["window"], cfg["earlybird"]["threshold"])
    return eb


def ticket_stats(ticket_file):
    from runners.checkpoint import load_checkpoint
    p = load_checkpoint(ticket_file).get("pruning") or {}
    return p.get("params"), p.get("macs"), p.get("epoch")


def resolve_tickets(cfg, exp, doc, regions):
    """Give every region its pruned ticket file (pruned once, reused)."""
    for r in regions:
        if r["ticket"]:
            if not os.path.isfile(r["ticket"]):
                raise UserError(f"region {r['range']}: ticket {r['ticket']} not found")
            r["ticket_file"] = r["ticket"]
            continue
        if r["epoch"] is None:
            r["epoch"] = eb_epoch_for(exp, doc, r["pruning_ratio"], cfg)
            if r["epoch"] is None:
                raise UserError(
                    f"region [{r['range'][0]}, {r['range'][1]}): no early-bird epoch found for "
                    f"ratio {r['pruning_ratio']:g} in {Layout(exp).run_dir(doc)} or its masks; "
                    f"add 'epoch: E' (prune that epoch) or 'ticket: PATH' to the region")
        r["ticket_file"] = ticket_for(cfg, exp, doc, r["pruning_ratio"], r["epoch"])
    return regions


def _region_args(config_name, exp, doc, r, n_epochs, overrides, resume):
    """main.py's arguments that fine-tune region ``r``'s ticket."""
    args = ["--config", config_name, "--exp", exp, "--doc", region_doc(doc, r["range"]), "--ni",
            "--load_pruned_model", r["ticket_file"],
            "--ts_range", str(r["range"][0]), str(r["range"][1])]
    if resume:
        args.append("--resume_training")
    ovr = list(overrides) + [f"training.n_epochs={n_epochs}", "earlybird.enabled=false"]
    return args + ["--override"] + ovr + r["overrides"]


def write_manifest(cfg, config_name, exp, doc, regions, schedule=None):
    """tickets.yml: every region's fine-tuned checkpoint, cost and where it was pruned from."""
    layout = Layout(exp)
    out_dir = layout.tickets_dir(doc)
    man = {"doc": doc, "num_timesteps": cfg["diffusion"]["num_diffusion_timesteps"],
           "config": config_name, "schedule": schedule, "tickets": []}
    for r in regions:
        rdoc = region_doc(doc, r["range"])
        costs = read_costs(layout.costs(rdoc))
        params, macs, _ = ticket_stats(r["ticket_file"])
        man["tickets"].append({
            "range": r["range"], "pruning_ratio": r["pruning_ratio"], "eb_epoch": r["epoch"],
            "checkpoint": os.path.relpath(layout.latest_checkpoint(rdoc), out_dir),
            "pruned_from": os.path.relpath(r["ticket_file"], out_dir),
            "params": params, "macs": macs, "epochs": len(costs),
            "wall_s": round(sum(c["wall_s"] for c in costs), 3),
            "process_s": round(sum(c["process_s"] for c in costs), 3),
            "train_flops": sum(c.get("train_flops", 0) for c in costs)})
    walls = [t["wall_s"] for t in man["tickets"]]
    man["critical_path_wall_s"] = max(walls)
    man["total_wall_s"] = round(sum(walls), 3)
    path = layout.manifest(doc)
    atomic_write_text(path, yaml.safe_dump(man, sort_keys=False))
    print(f"tickets trained: {path} (critical path {max(walls):.1f}s, total {sum(walls):.1f}s)")
    return path


@dataclass
class Launch:
    """How the tickets run (earlybird_scripts/train_tickets.py's flags)."""
    gpus: Optional[list] = None         # None: every visible GPU, else the CPU
    max_parallel: Optional[int] = None
    gpus_per_ticket: int = 1            # DDP processes per ticket (gloo ones on the CPU)
    launcher: str = "local"             # local | slurm
    dry_run: bool = False
    collect: bool = False
    slurm: dict = field(default_factory=dict)   # partition, time_limit, cpus, mem, account
    slurm_template: Optional[str] = None
    poll_s: float = 1.0
    progress: bool = True


def train_tickets(cfg, *, config_name, exp, doc, overrides, launch=None):
    """Fine-tune every unfinished region's ticket, then write the manifest; returns 0, or 1
    if a ticket failed (local), sbatch failed, or --collect found unfinished tickets."""
    launch = launch or Launch()
    layout = Layout(exp)
    regions = resolve_tickets(cfg, exp, doc, parse_regions(cfg, config_name))
    n_epochs = cfg["taeb"]["finetune_epochs"] or cfg["training"]["n_epochs"]
    for r in regions:
        r["doc"], r["log_file"] = doc, layout.region_log(doc, r["range"])
    todo = [r for r in regions if not os.path.isfile(layout.done_marker(region_doc(doc,
                                                                                   r["range"])))]
    if launch.collect:
        return _collect(cfg, config_name, exp, doc, regions, todo, layout)
    if launch.launcher == "slurm":
        return _submit(cfg, config_name, exp, doc, overrides, todo, n_epochs, layout, launch)
    return _run_here(cfg, config_name, exp, doc, overrides, regions, todo, n_epochs, layout,
                     launch)


def _run_here(cfg, config_name, exp, doc, overrides, regions, todo, n_epochs, layout, launch):
    gpus = launch.gpus
    if gpus is None:
        import torch
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    per = launch.gpus_per_ticket
    groups = gpu_groups(gpus, per)
    jobs = [(r, ticket_command(_region_args(
        config_name, exp, doc, r, n_epochs, overrides,
        os.path.isfile(layout.latest_checkpoint(region_doc(doc, r["range"])))), per))
        for r in todo]
    # one ticket per GPU group; without GPUs one at a time, each with the whole machine, so
    # each ticket's time is what it would take on a device of its own (a fair critical path)
    k = launch.max_parallel or (len(groups) if gpus else 1)
    k = max(1, min(k, len(jobs) or 1))
    threads = max(1, (os.cpu_count() or 1) // (k * per))
    each = f"{per} GPUs" if per > 1 else "one GPU"
    schedule = (f"{k} at a time, {each} each" if gpus else
                "one at a time, each with the whole machine" if k == 1 else
                f"{k} at a time sharing the CPU ({threads} threads per process)")
    if per > 1:
        schedule += f", {per} DDP processes per ticket"
    failed = run_local(jobs, groups, k, threads, n_epochs, layout, launch.poll_s,
                       launch.progress)
    if failed:
        for r in failed:
            print(f"ticket for region [{r['range'][0]}, {r['range'][1]}) (ratio "
                  f"{r['pruning_ratio']:g}) failed: see {r['log_file']}", file=sys.stderr)
        print(f"{len(failed)} of {len(regions)} tickets failed; the others are kept; rerun the "
              f"same command to finish only what is unfinished", file=sys.stderr)
        return 1
    write_manifest(cfg, config_name, exp, doc, regions, schedule)
    return 0


def _submit(cfg, config_name, exp, doc, overrides, todo, n_epochs, layout, launch):
    """One sbatch script and job per unfinished ticket."""
    if not todo:
        print(f"every ticket of {doc} is trained; write the manifest with --collect")
        return 0
    per = launch.gpus_per_ticket
    template = read_template(launch.slurm_template) if launch.slurm_template else None
    resources = slurm_options(gpus=per, **launch.slurm)

    def script_for(r, cmd):
        rdoc = region_doc(doc, r["range"])
        os.makedirs(os.path.dirname(r["log_file"]), exist_ok=True)
        return sbatch_script(cmd, job_name=rdoc, log=os.path.abspath(r["log_file"]),
                             latest=os.path.abspath(layout.latest_checkpoint(rdoc)), gpus=per,
                             template=template, resources=resources)
    # the script adds --resume_training by itself when the ticket has a checkpoint
    jobs = [(r, ticket_command(_region_args(config_name, exp, doc, r, n_epochs, overrides,
                                            False), per)) for r in todo]
    rc = submit_slurm(jobs, layout, doc, dry_run=launch.dry_run, script_for=script_for)
    if not launch.dry_run:
        print("when the jobs are done, write the manifest with the same command and --collect")
    return rc


def _collect(cfg, config_name, exp, doc, regions, todo, layout):
    """The manifest, once every ticket is trained; else which ones are not."""
    if todo:
        jobs = read_json(layout.slurm_jobs(doc), {})
        for r in todo:
            name = region_doc(doc, r["range"])
            job = jobs.get(name, {}).get("job_id")
            print(f"not finished: region [{r['range'][0]}, {r['range'][1]}) (ratio "
                  f"{r['pruning_ratio']:g}){f', job {job}' if job else ''}; log {r['log_file']}",
                  file=sys.stderr)
        print(f"{len(todo)} of {len(regions)} tickets are not finished; no manifest written",
              file=sys.stderr)
        return 1
    write_manifest(cfg, config_name, exp, doc, regions,
                   "separate jobs, one per ticket (collected)")
    return 0
