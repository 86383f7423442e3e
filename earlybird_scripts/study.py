"""The evidence study: the pipeline for several seeds (reusing finished stages): the dense
reference (the config's recipe, or trained to a plateau), every other method fine-tuned until it
reaches the dense level within a FLOPs budget, TA-EB with hand-set and with planned regions,
quality along training (a held-out loss, and digits-FD) on fixed noise, each method's final
samples scored on a noise set of its seed, costs to the target and to fixed levels in FLOPs and
wall-clock, stitch diagnostics, the instrument's own noise, and a verdict per claim; writes a
Markdown page with small figures.

  python earlybird_scripts/study.py --config digits.yml --exp study --seeds 5 \
      --out docs/results/digits.md
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

import _common  # noqa: F401

from utils.errors import UserError, run_cli


def build_parser():
    from core.config import add_override_flag
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits.yml",
                   help="configs/NAME or a YAML path (default: %(default)s)")
    p.add_argument("--exp", default="study", help="experiment root (default: %(default)s)")
    p.add_argument("--doc", default="digits",
                   help="run name stem: seed s runs as {doc}_s{s} (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: %(default)s)")
    p.add_argument("--seed_ids", type=int, nargs="+", default=None,
                   help="these seeds instead of 0..N-1 (default: 0..N-1)")
    p.add_argument("--page_only", action="store_true",
                   help="write the page from the seeds' finished pipelines, running none (a "
                        "page after a change to the page's code) (default: run what is "
                        "unfinished)")
    p.add_argument("--speed", action="store_true",
                   help="also every seed with the SpeeD timestep sampler: dense, EB ticket "
                        "and TA-EB (default: off)")
    p.add_argument("--pruning_ratio", type=float,
                   help="the EB ticket's ratio (default: pipeline.pruning_ratio)")
    p.add_argument("--finetune_epochs", type=int,
                   help="(default: taeb.finetune_epochs; to the target: target.max_epochs)")
    p.add_argument("--fixed_epochs", action="store_true",
                   help="the earlier protocol: dense for training.n_epochs, every ticket for "
                        "fixed epochs, plus a uniform ticket of TA-EB's fine-tuning FLOPs "
                        "(default: to the target, target.* in the config)")
    p.add_argument("--eval_every", type=int,
                   help="quality every K epochs of every run (default: pipeline.eval_every, "
                        "else target.every)")
    p.add_argument("--eval_samples", type=int,
                   help="images per quality evaluation (default: pipeline.eval_samples)")
    p.add_argument("--eval_timesteps", type=int,
                   help="sampling steps per quality evaluation (default: "
                        "pipeline.eval_timesteps)")
    p.add_argument("--final_samples", type=int, default=1000,
                   help="final samples per method, whose digits-FD, 'valid' and noise-like "
                        "share the verdicts read (sets sampling.n_samples) (default: "
                        "%(default)s)")
    p.add_argument("--note", action="append", default=[],
                   help="a sentence for the page, e.g. what else shared the machine (repeatable; "
                        "default: none)")
    p.add_argument("--out", default=None,
                   help="the results page (default: {exp}/report/study/results.md)")
    add_override_flag(p)
    return p


# flags that name a config value: given, they override it (defaults and ranges: core/config.py)
CONFIG_FLAGS = {"pruning_ratio": "pipeline.pruning_ratio",
                "finetune_epochs": "taeb.finetune_epochs", "eval_every": "pipeline.eval_every",
                "eval_samples": "pipeline.eval_samples",
                "eval_timesteps": "pipeline.eval_timesteps",
                "final_samples": "sampling.n_samples"}


def target_args(fixed_epochs):
    """The pipeline arguments of the study's protocol (every method fine-tuned to the dense
    reference's level within a FLOPs budget, planned regions too; the dense run as the config's
    target.* says: its fixed recipe, or to a plateau), or of the fixed-epochs one."""
    if fixed_epochs:
        return ["--equal_flops"]
    return ["--plan", "--override", "target.enabled=true"]


# each seed samples its own noise set (image i of seed s: sampling seed s * stride + i), shared
# by every method of that seed: differences between methods are paired within a seed
SAMPLING_SEED_STRIDE = 10_007


def pipeline_cmd(a, overrides, doc, seed, extra):
    return [sys.executable, os.path.join(_common.ROOT, "earlybird_scripts", "run_pipeline.py"),
            "--config", a.config, "--exp", a.exp, "--doc", doc] + \
        extra + ["--override", f"training.seed={seed}",
                 f"sampling.seed={seed * SAMPLING_SEED_STRIDE}"] + overrides


def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.seeds < 1:
        raise UserError("--seeds must be at least 1")
    from core.config import flatten_overrides, load_config
    from core.layout import Layout
    from core.options import check_name, flag_overrides
    from evaluation.study_page import StudyOptions, write_page
    check_name(a.doc, "--doc")
    overrides = flatten_overrides(a.override) + flag_overrides(a, CONFIG_FLAGS)
    cfg = load_config(a.config, overrides)
    if not cfg.pipeline.eval_every:
        overrides.append(f"pipeline.eval_every={cfg.target.every}")
        cfg = load_config(a.config, overrides)
    t0 = time.perf_counter()
    protocol = target_args(a.fixed_epochs)
    variants = [("plain", "", protocol)]
    if a.speed:
        variants.append(("speed", "_speed", ["--skip_tpf"] + protocol +
                         ["--override", "training.timestep_sampler=speed"]))
    docs = {}
    seeds = a.seed_ids or list(range(a.seeds))
    for k, seed in enumerate(seeds):
        if not a.page_only:
            project_disk(a.exp, [f"{a.doc}_s{s}" for s in seeds], k)
        for name, suffix, extra in variants:
            doc = f"{a.doc}{suffix}_s{seed}"
            docs.setdefault(name, []).append(doc)
            if a.page_only:
                continue
            cmd = pipeline_cmd(a, overrides, doc, seed, extra)
            print(f"\n##### seed {seed}{' (SpeeD)' if name == 'speed' else ''}\n$ "
                  f"{' '.join(cmd)}", flush=True)
            if subprocess.run(cmd).returncode != 0:
                raise UserError(f"the pipeline of {doc} failed; rerun the study to continue")
    layout = Layout(a.exp)
    out = a.out or layout.study_page()
    total_s = record_wall_time(layout.study_wall(), 0.0 if a.page_only else
                               time.perf_counter() - t0)
    opts = StudyOptions(exp=a.exp, seeds=tuple(seeds), speed=a.speed, notes=tuple(a.note),
                        command=page_command(sys.argv[1:] if argv is None else argv))
    write_page(cfg, opts, docs, out=out, study_s=total_s)
    print(f"\nstudy page: {out} ({time.perf_counter() - t0:.0f}s now, {total_s:.0f}s in all)")
    return 0


def project_disk(exp, seed_docs, k):
    """Before seed ``k``: refuse in one line when the disk cannot hold the unfinished seeds
    from ``k`` on at the average use of the finished ones (the first seed's dense run checks
    its own checkpoints' projected use)."""
    from core.layout import Layout
    from utils.io import check_free
    finished = [os.path.isfile(Layout(exp).report_file(d)) for d in seed_docs]
    left = finished[k:].count(False)
    if not any(finished) or not left:
        return
    used = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(exp)
               for f in files if os.path.isfile(os.path.join(d, f)))
    each = used // finished.count(True)
    check_free(exp, each * left, f"the study's {left} unfinished seed(s) (at the "
               f"{each / 2**20:.0f} MB each of the finished ones)",
               "free space, or run fewer seeds (--seed_ids)")


def page_command(argv):
    """The invocation as the page quotes it: copy-pasteable, without the --note sentences
    (the page prints them as their own paragraph) and without --page_only (a page rewritten
    from finished runs is the page the full command writes)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif arg != "--page_only" and not arg.startswith("--note="):
            args.append(arg)
    return shlex.join(args)


def record_wall_time(path, seconds):
    """Add this invocation's wall-clock to ``path`` ({exp}/report/study/wall.json); returns the
    sum over every invocation (an interrupted and continued study counts all its parts, reruns
    too)."""
    from utils.io import atomic_write_json, read_json
    total = seconds + read_json(path, {"wall_s": 0.0})["wall_s"]
    atomic_write_json(path, {"wall_s": round(total, 1)})
    return total


if __name__ == "__main__":
    run_cli(main)
