"""TA-EB tickets (DESIGN.md steps 4-5): resolve each region's ticket, fine-tune all regions in
parallel processes (one GPU each, round-robin; CPU threads split), and write the manifest
``{exp}/tickets/{doc}/tickets.yml`` that stitched sampling reads."""
import json
import os
import subprocess
import sys
import time

import yaml

from models.stitched import check_regions
from runners.layout import Layout, region_doc
from runners.masks import load_mask_series
from runners.pruning import ticket_for
from runners.runlog import read_costs
from utils.errors import UserError
from utils.io import atomic_write_text, load_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def _region_command(config_name, exp, doc, r, n_epochs, overrides, layout):
    rdoc = region_doc(doc, r["range"])
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", config_name,
           "--exp", exp, "--doc", rdoc, "--ni", "--load_pruned_model", r["ticket_file"],
           "--ts_range", str(r["range"][0]), str(r["range"][1])]
    if os.path.isfile(layout.latest_checkpoint(rdoc)):
        cmd.append("--resume_training")
    ovr = list(overrides) + [f"training.n_epochs={n_epochs}", "earlybird.enabled=false"]
    return cmd + ["--override"] + ovr + r["overrides"]


def _run_parallel(jobs, k, gpus, threads, n_epochs, layout, poll_s, progress):
    """Run [(region, command)] k at a time; returns the regions whose process failed."""
    procs, failed, queue, bars, slot = {}, [], list(jobs), {}, 0
    if progress and jobs:
        from tqdm import tqdm
        for i, (r, _) in enumerate(jobs):
            bars[id(r)] = tqdm(total=n_epochs, position=i, dynamic_ncols=True,
                               desc=f"ticket [{r['range'][0]},{r['range'][1]}) "
                                    f"p={r['pruning_ratio']:g}")
    while queue or procs:
        while queue and len(procs) < k:
            r, cmd = queue.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)]) if gpus else ""
            slot += 1
            os.makedirs(os.path.dirname(r["log_file"]), exist_ok=True)
            fh = open(r["log_file"], "a")
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            procs[id(r)] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                             cwd=os.getcwd()), r, fh)
        time.sleep(poll_s)
        for key, (p, r, fh) in list(procs.items()):
            if key in bars:
                bars[key].n = len(read_costs(layout.costs(region_doc(r["doc"], r["range"]))))
                bars[key].refresh()
            if p.poll() is not None:
                fh.close()
                del procs[key]
                if p.returncode != 0:
                    failed.append(r)
    for b in bars.values():
        b.close()
    return failed


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


def train_tickets(cfg, *, config_name, exp, doc, overrides, gpus=None, max_parallel=None,
                  poll_s=1.0, progress=True):
    """Fine-tune every region's ticket in parallel; returns 0, or 1 if any region failed."""
    layout = Layout(exp)
    regions = resolve_tickets(cfg, exp, doc, parse_regions(cfg, config_name))
    n_epochs = cfg["taeb"]["finetune_epochs"] or cfg["training"]["n_epochs"]
    if gpus is None:
        import torch
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    jobs = []
    for r in regions:
        r["doc"], r["log_file"] = doc, layout.region_log(doc, r["range"])
        if not os.path.isfile(layout.done_marker(region_doc(doc, r["range"]))):
            jobs.append((r, _region_command(config_name, exp, doc, r, n_epochs, overrides,
                                            layout)))
    # one ticket per GPU; without GPUs one at a time, each with the whole machine, so each
    # ticket's time is what it would take on a device of its own (a fair critical path)
    k = max_parallel or (len(gpus) if gpus else 1)
    k = max(1, min(k, len(jobs) or 1))
    threads = max(1, (os.cpu_count() or 1) // k)
    schedule = (f"{k} at a time, one GPU each" if gpus else
                "one at a time, each with the whole machine" if k == 1 else
                f"{k} at a time sharing the CPU ({threads} threads each)")
    failed = _run_parallel(jobs, k, gpus, threads, n_epochs, layout, poll_s, progress)
    if failed:
        for r in failed:
            print(f"ticket for region [{r['range'][0]}, {r['range'][1]}) (ratio "
                  f"{r['pruning_ratio']:g}) failed: see {r['log_file']}", file=sys.stderr)
        print(f"{len(failed)} of {len(regions)} tickets failed; the others are kept; rerun the "
              f"same command to finish only what is unfinished", file=sys.stderr)
        return 1
    write_manifest(cfg, config_name, exp, doc, regions, schedule)
    return 0
