"""The whole EB-Diff-Train pipeline in one command (the README's first command):

dense training with per-epoch checkpoints and online masks -> EB epochs -> EB ticket
fine-tune -> train-prune-finetune baseline -> TA-EB tickets in parallel -> sampling (stitched
for TA-EB) -> quality metric -> results table. Each stage runs the same command a user would
type (printed as it runs) and is skipped or resumed when its results already exist.

  python earlybird_scripts/run_pipeline.py --config digits.yml --exp runs --doc digits
"""
import argparse
import json
import os
import subprocess
import sys
import time

import _common  # noqa: F401

from runners.config import add_override_flag, flatten_overrides, load_config
from runners.errors import UserError, run_cli
from runners.tickets import parse_regions, ticket_path

ROOT = _common.ROOT
PY = sys.executable


def run(cmd, what):
    print(f"\n=== {what}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise UserError(f"stage '{what}' failed (exit {res.returncode}); fix it and rerun: "
                        f"finished stages are reused")
    print(f"--- {what}: {time.perf_counter() - t0:.1f}s", flush=True)


def script(name):
    return os.path.join(ROOT, "earlybird_scripts", name)


def train_cmd(a, doc, extra):
    log_dir = os.path.join(a.exp, "logs", doc)
    if os.path.isfile(os.path.join(log_dir, "DONE")):
        return None
    cmd = [PY, os.path.join(ROOT, "main.py"), "--config", a.config, "--exp", a.exp,
           "--doc", doc, "--ni", "--use_ema", "--skip_type", "quad"]
    cmd += ["--resume_training"] if os.path.isfile(os.path.join(log_dir, "ckpt.pth")) else []
    return cmd + extra


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits.yml")
    p.add_argument("--exp", default="runs")
    p.add_argument("--doc", default="digits")
    p.add_argument("--pruning_ratio", type=float, default=0.5,
                   help="ratio of the EB ticket and the train-prune-finetune baseline")
    p.add_argument("--finetune_epochs", type=int, default=None,
                   help="default: taeb.finetune_epochs, else half of training.n_epochs")
    p.add_argument("--n_samples", type=int, default=None)
    p.add_argument("--fid_ref", default=None,
                   help="non-digits data: real images folder or .npz for FID")
    p.add_argument("--inception_weights", default=None)
    p.add_argument("--max_parallel", type=int, default=None)
    add_override_flag(p)
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    overrides = flatten_overrides(a.override)
    cfg = load_config(a.config, overrides)
    regions = parse_regions(cfg, a.config)
    eb_cfg = cfg["earlybird"]
    ratios = sorted(set(float(r) for r in eb_cfg["ratios"]) | {a.pruning_ratio} |
                    {r["pruning_ratio"] for r in regions})
    ft_epochs = a.finetune_epochs or cfg["taeb"]["finetune_epochs"] or \
        max(1, cfg["training"]["n_epochs"] // 2)
    s = cfg["sampling"]
    n_samples = a.n_samples or s["n_samples"]
    ovr = ["--override"] + overrides if overrides else []
    pruner = eb_cfg["pruner"]
    dense_log = os.path.join(a.exp, "logs", a.doc)
    mask_dir = os.path.join(a.exp, "pruned", a.doc, "masks")
    ratio_list = ",".join(f"{r:g}" for r in ratios)

    # 1. dense training with the online early-bird test (masks every epoch)
    cmd = train_cmd(a, a.doc, ["--train_from_scratch", "--override", "earlybird.enabled=true",
                               f"earlybird.ratios=[{ratio_list}]", "earlybird.stop=false"]
                    + overrides)
    if cmd:
        run(cmd, "dense training (+ online masks)")
    n_epochs = cfg["training"]["n_epochs"]
    last = n_epochs - 1

    # 2. EB epochs from the masks (the offline script on the same masks)
    eb = {}
    newest_mask = max((os.path.getmtime(os.path.join(mask_dir, f)) for f in os.listdir(mask_dir)
                       if f.endswith(".npy")), default=0.0) if os.path.isdir(mask_dir) else 0.0
    for r in ratios:
        out = os.path.join(mask_dir, f"earlybird-{r:g}-{pruner}.json")
        if not (os.path.isfile(out) and os.path.getmtime(out) >= newest_mask):
            run([PY, script("find_earlybird.py"), "--mask_dir", mask_dir, "--pruning_ratio",
                 f"{r:g}", "--pruner", pruner, "--doc", a.doc, "--window", str(eb_cfg["window"]),
                 "--threshold", str(eb_cfg["threshold"]), "--output", out],
                f"EB epoch, p={r:g}")
        with open(out) as f:
            eb[r] = json.load(f)["eb_epoch"]
    if not os.path.isfile(os.path.join(mask_dir, f"distances-{pruner}.png")):
        run([PY, script("plot_overlap.py"), "--mask_dir", mask_dir, "--pruning_ratio",
             *[f"{r:g}" for r in ratios], "--pruner", pruner, "--doc", a.doc,
             "--window", str(eb_cfg["window"]), "--threshold", str(eb_cfg["threshold"])],
            "overlap heatmaps")
    fallback = []
    for r in ratios:
        if eb[r] is None:
            fallback.append(r)
            eb[r] = last
            print(f"note: no early-bird epoch for p={r:g}; its ticket is drawn at the last "
                  f"epoch {last} (not an early-bird ticket)")

    def ticket(r, epoch):
        path = ticket_path(a.exp, a.doc, r, pruner, epoch)
        if not os.path.isfile(path):
            run([PY, script("prune.py"), "--config", a.config, "--exp", a.exp, "--doc", a.doc,
                 "--use_ema", "--restore_from", os.path.join(dense_log, f"ckpt_ep{epoch}.pth"),
                 "--pruner", pruner, "--pruning_ratio", f"{r:g}", "--save_pruned_model",
                 "--save_masks"] + ovr, f"prune epoch {epoch} at p={r:g}")
        return path

    p = a.pruning_ratio
    ft = ["--override", f"training.n_epochs={ft_epochs}", "earlybird.enabled=false"] + overrides
    # 3. EB ticket, 4. train-prune-finetune baseline
    for kind, epoch in (("eb", eb[p]), ("tpf", last)):
        doc = f"{a.doc}_{kind}_{p:g}"
        cmd = train_cmd(a, doc, ["--load_pruned_model", ticket(p, epoch)] + ft)
        if cmd:
            run(cmd, f"fine-tune {'EB ticket' if kind == 'eb' else 'train-prune-finetune'} "
                     f"p={p:g} (from epoch {epoch})")

    # 5. TA-EB tickets in parallel (regions without an epoch use their ratio's EB epoch)
    manifest = os.path.join(a.exp, "tickets", a.doc, "tickets.yml")
    if not os.path.isfile(manifest):
        cmd = [PY, script("train_tickets.py"), "--config", a.config, "--exp", a.exp,
               "--doc", a.doc, "--override", f"taeb.finetune_epochs={ft_epochs}"]
        if fallback:
            regs = ",".join(
                "{range: [%d, %d], pruning_ratio: %g%s}" % (
                    r["range"][0], r["range"][1], r["pruning_ratio"],
                    f", epoch: {eb[r['pruning_ratio']]}" if r["epoch"] is None and
                    r["ticket"] is None else (f", epoch: {r['epoch']}" if r["epoch"] is not None
                                              else f", ticket: {r['ticket']}"))
                for r in regions)
            cmd += [f"taeb.regions=[{regs}]"]
        cmd += overrides
        cmd += ["--max_parallel", str(a.max_parallel)] if a.max_parallel else []
        run(cmd, "TA-EB tickets (parallel)")

    # 6. sampling, 7. metric
    samples = os.path.join(a.exp, "samples")
    methods = [(a.doc, ["--restore_from", os.path.join(dense_log, "ckpt.pth")]),
               (f"{a.doc}_eb_{p:g}", ["--restore_from",
                                      os.path.join(a.exp, "logs", f"{a.doc}_eb_{p:g}", "ckpt.pth")]),
               (f"{a.doc}_tpf_{p:g}", ["--restore_from",
                                       os.path.join(a.exp, "logs", f"{a.doc}_tpf_{p:g}",
                                                    "ckpt.pth")]),
               (f"{a.doc}_taeb", ["--tickets", manifest])]
    for name, src in methods:
        folder = os.path.join(samples, name)
        metric = os.path.join(samples, f"{name}.metric.json")
        have = all(os.path.isfile(os.path.join(folder, f"{i:06d}.png")) for i in range(n_samples))
        if have and os.path.isfile(metric):
            continue
        run([PY, os.path.join(ROOT, "main.py"), "--config", a.config, "--exp", a.exp,
             "--doc", a.doc, "--ni", "--sample", "--fid", "--use_ema",
             "--timesteps", str(s["timesteps"]), "--skip_type", s["skip_type"],
             "--eta", str(s["eta"]), "--image_folder", folder, "--n_samples", str(n_samples)]
            + src + ovr, f"sample {name}")
        if cfg["data"]["dataset"] == "DIGITS":
            run([PY, script("digits_metric.py"), folder, "--image_size",
                 str(cfg["data"]["image_size"]), "--n_samples", str(n_samples), "--cache_dir",
                 os.path.join(a.exp, "metric"), "--output", metric], f"digits metric {name}")
        elif a.fid_ref:
            cmd = [PY, script("fid.py"), folder, a.fid_ref, "--n_samples", str(n_samples),
                   "--output", metric]
            cmd += ["--inception_weights", a.inception_weights] if a.inception_weights else []
            run(cmd, f"FID {name}")

    # 8. report
    run([PY, script("report.py"), "--exp", a.exp, "--doc", a.doc, "--timesteps",
         str(s["timesteps"]), "--skip_type", s["skip_type"]], "report")
    print(f"\npipeline finished in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
