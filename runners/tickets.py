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
from runners.checkpoint import atomic_write_text
from runners.errors import UserError
from runners.masks import load_mask_series
from runners.train import read_costs, run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION_KEYS = {"range", "pruning_ratio", "epoch", "ticket", "overrides"}


def parse_regions(cfg, source="config"):
    """taeb.regions -> list of dicts with range (lo, hi), pruning_ratio, epoch, ticket."""
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    regions = cfg["taeb"]["regions"]
    if not regions:
        raise UserError(f"{source}: taeb.regions is empty: describe the TA-EB tickets there")
    out = []
    for i, r in enumerate(regions):
        if not isinstance(r, dict) or "range" not in r or "pruning_ratio" not in r:
            raise UserError(f"{source}: taeb.regions[{i}] needs 'range' and 'pruning_ratio'")
        unknown = set(r) - REGION_KEYS
        if unknown:
            raise UserError(f"{source}: taeb.regions[{i}]: unknown key(s) "
                            f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(REGION_KEYS))})")
        rng = r["range"]
        if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(v, int) for v in rng)):
            raise UserError(f"{source}: taeb.regions[{i}].range must be [lo, hi], got {rng!r}")
        p = r["pruning_ratio"]
        if not isinstance(p, (int, float)) or not 0 < p < 1:
            raise UserError(f"{source}: taeb.regions[{i}].pruning_ratio must be in (0, 1)")
        out.append({"range": [int(rng[0]), int(rng[1])], "pruning_ratio": float(p),
                    "epoch": r.get("epoch"), "ticket": r.get("ticket"),
                    "overrides": list(r.get("overrides") or [])})
    try:
        check_regions([r["range"] for r in out], T, where=f"{source}: taeb.regions")
    except ValueError as e:
        raise UserError(str(e))
    return out


def region_doc(doc, rng):
    return f"{doc}_taeb_{rng[0]}_{rng[1]}"


def eb_epoch_for(exp, doc, ratio, cfg):
    """The EB epoch of ``ratio``: the online record if any, else the FIFO rule on the masks."""
    from models.earlybird import find_earlybird
    dirs = run_dirs(exp, doc)
    pruner = cfg["earlybird"]["pruner"]
    online = os.path.join(dirs["log"], "earlybird.json")
    if os.path.isfile(online):
        with open(online) as f:
            rec = json.load(f)
        entry = rec.get("ratios", {}).get(f"{ratio:g}")
        if entry and entry.get("eb_epoch") is not None:
            return int(entry["eb_epoch"]), rec.get("pruner", pruner)
    if not os.path.isdir(dirs["masks"]):
        return None, pruner
    try:
        series = load_mask_series(dirs["masks"], ratio, pruner, doc=doc)
    except UserError:
        return None, pruner
    eb, _ = find_earlybird(series, cfg["earlybird"]["window"], cfg["earlybird"]["threshold"])
    return eb, pruner


def ticket_path(exp, doc, ratio, pruner, epoch):
    from runners.masks import mask_stem
    return os.path.join(run_dirs(exp, doc)["models"], mask_stem(doc, ratio, pruner, epoch) + ".pth")


def make_ticket(cfg, config_name, exp, doc, ratio, epoch, pruner, overrides, use_ema=True):
    """Prune ckpt_ep{epoch} at ``ratio`` (once; reused when present). Returns the path."""
    out = ticket_path(exp, doc, ratio, pruner, epoch)
    if os.path.isfile(out):
        return out
    src = os.path.join(run_dirs(exp, doc)["log"], f"ckpt_ep{epoch}.pth")
    if not os.path.isfile(src):
        raise UserError(f"ratio {ratio:g}: checkpoint {src} not found (dense training must "
                        f"reach epoch {epoch})")
    cmd = [sys.executable, os.path.join(ROOT, "earlybird_scripts", "prune.py"),
           "--config", config_name, "--exp", exp, "--doc", doc, "--restore_from", src,
           "--pruner", pruner, "--pruning_ratio", str(ratio), "--save_pruned_model",
           "--quiet"] + (["--use_ema"] if use_ema else [])
    if overrides:
        cmd += ["--override"] + list(overrides)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"pruning {src} at {ratio:g} failed: "
                        f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def ticket_stats(ticket_file):
    from runners.checkpoint import load_checkpoint
    p = load_checkpoint(ticket_file).get("pruning") or {}
    return p.get("params"), p.get("macs"), p.get("epoch")


def train_tickets(cfg, *, config_name, exp, doc, overrides, gpus=None, max_parallel=None,
                  use_ema=True, poll_s=1.0, progress=True):
    """Fine-tune every region's ticket in parallel; returns 0, or 1 if any region failed."""
    regions = parse_regions(cfg, config_name)
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    out_dir = os.path.join(exp, "tickets", doc)
    log_dir = os.path.join(out_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    n_epochs = cfg["taeb"]["finetune_epochs"] or cfg["training"]["n_epochs"]

    # 1. the ticket of every region (prune once; reuse)
    for r in regions:
        if r["ticket"]:
            if not os.path.isfile(r["ticket"]):
                raise UserError(f"region {r['range']}: ticket {r['ticket']} not found")
            r["ticket_file"] = r["ticket"]
            continue
        pruner = cfg["earlybird"]["pruner"]
        if r["epoch"] is None:
            eb, pruner = eb_epoch_for(exp, doc, r["pruning_ratio"], cfg)
            if eb is None:
                raise UserError(
                    f"region [{r['range'][0]}, {r['range'][1]}): no early-bird epoch found for "
                    f"ratio {r['pruning_ratio']:g} in {exp}/logs/{doc} or its masks; add "
                    f"'epoch: E' (prune that epoch) or 'ticket: PATH' to the region")
            r["epoch"] = eb
        r["ticket_file"] = make_ticket(cfg, config_name, exp, doc, r["pruning_ratio"],
                                       r["epoch"], pruner, overrides, use_ema)

    # 2. one fine-tuning process per unfinished region
    if gpus is None:
        import torch
        gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    todo = []
    for r in regions:
        rd = run_dirs(exp, region_doc(doc, r["range"]))
        r["log_dir"] = rd["log"]
        r["log_file"] = os.path.join(log_dir, f"region_{r['range'][0]}_{r['range'][1]}.log")
        if not os.path.isfile(os.path.join(rd["log"], "DONE")):
            todo.append(r)
    k = max_parallel or (len(gpus) if gpus else len(todo)) or 1
    k = max(1, min(k, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // k)
    procs, failed, queue = {}, [], list(todo)
    bars = {}
    if progress and todo:
        from tqdm import tqdm
        for i, r in enumerate(todo):
            bars[id(r)] = tqdm(total=n_epochs, position=i, dynamic_ncols=True,
                               desc=f"ticket [{r['range'][0]},{r['range'][1]}) p={r['pruning_ratio']:g}")
    slot = 0
    while queue or procs:
        while queue and len(procs) < k:
            r = queue.pop(0)
            cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config", config_name,
                   "--exp", exp, "--doc", region_doc(doc, r["range"]), "--ni",
                   "--load_pruned_model", r["ticket_file"],
                   "--ts_range", str(r["range"][0]), str(r["range"][1])]
            if os.path.isfile(os.path.join(r["log_dir"], "ckpt.pth")):
                cmd.append("--resume_training")
            ovr = list(overrides) + [f"training.n_epochs={n_epochs}", "earlybird.enabled=false"]
            ovr += r["overrides"]
            cmd += ["--override"] + ovr
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
                slot += 1
            else:
                env["CUDA_VISIBLE_DEVICES"] = ""
            fh = open(r["log_file"], "a")
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            procs[id(r)] = (subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                             cwd=os.getcwd()), r, fh)
        time.sleep(poll_s)
        for key, (p, r, fh) in list(procs.items()):
            if key in bars:
                bars[key].n = len(read_costs(r["log_dir"]))
                bars[key].refresh()
            if p.poll() is not None:
                fh.close()
                del procs[key]
                if p.returncode != 0:
                    failed.append(r)
    for b in bars.values():
        b.close()

    # 3. the manifest (only when every region is finished)
    if failed:
        for r in failed:
            print(f"ticket for region [{r['range'][0]}, {r['range'][1]}) (ratio "
                  f"{r['pruning_ratio']:g}) failed: see {r['log_file']}", file=sys.stderr)
        print(f"{len(failed)} of {len(regions)} tickets failed; the others are kept; rerun the "
              f"same command to finish only what is unfinished", file=sys.stderr)
        return 1
    man = {"doc": doc, "num_timesteps": T, "config": config_name, "tickets": []}
    for r in regions:
        costs = read_costs(r["log_dir"])
        params, macs, _ = ticket_stats(r["ticket_file"])
        man["tickets"].append({
            "range": r["range"], "pruning_ratio": r["pruning_ratio"], "eb_epoch": r["epoch"],
            "checkpoint": os.path.relpath(os.path.join(r["log_dir"], "ckpt.pth"), out_dir),
            "pruned_from": os.path.relpath(r["ticket_file"], out_dir),
            "params": params, "macs": macs, "epochs": len(costs),
            "wall_s": round(sum(c["wall_s"] for c in costs), 3),
            "process_s": round(sum(c["process_s"] for c in costs), 3)})
    walls = [t["wall_s"] for t in man["tickets"]]
    man["critical_path_wall_s"] = max(walls)
    man["total_wall_s"] = round(sum(walls), 3)
    path = os.path.join(out_dir, "tickets.yml")
    atomic_write_text(path, yaml.safe_dump(man, sort_keys=False))
    print(f"tickets trained: {path} (critical path {max(walls):.1f}s, total {sum(walls):.1f}s)")
    return 0
