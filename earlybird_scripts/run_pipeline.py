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
from dataclasses import replace

import _common  # noqa: F401

from core.config import add_override_flag, flatten_overrides
from core.options import check_name
from utils.errors import UserError, run_cli

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


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits.yml",
                   help="configs/NAME or a YAML path (default: %(default)s)")
    p.add_argument("--exp", default="runs", help="experiment root (default: %(default)s)")
    p.add_argument("--doc", default="digits", help="the dense run's name (default: %(default)s)")
    p.add_argument("--pruning_ratio", type=float, default=0.5,
                   help="ratio of the EB ticket and the train-prune-finetune baseline "
                        "(default: %(default)s)")
    p.add_argument("--finetune_epochs", type=int, default=None,
                   help="fine-tuning epochs (default: taeb.finetune_epochs, else half of "
                        "training.n_epochs)")
    p.add_argument("--n_samples", type=int, default=None,
                   help="samples per method (default: sampling.n_samples)")
    p.add_argument("--fid_ref", default=None,
                   help="non-digits data: real images folder or .npz for FID (default: none)")
    p.add_argument("--inception_weights", default=None,
                   help="local pt_inception-2015-12-05 weights for FID (default: download)")
    p.add_argument("--max_parallel", type=int, default=None,
                   help="TA-EB tickets trained at once (default: see train_tickets.py)")
    p.add_argument("--eval_every", type=int, default=0,
                   help="quality along training: score every K-th epoch of every run "
                        "(default: 0, only the final samples are scored)")
    p.add_argument("--eval_samples", type=int, default=300,
                   help="images per quality evaluation along training (default: %(default)s)")
    p.add_argument("--eval_timesteps", type=int, default=25,
                   help="sampling steps per quality evaluation (default: %(default)s)")
    p.add_argument("--skip_tpf", action="store_true",
                   help="leave out the train-prune-finetune baseline (default: off)")
    p.add_argument("--no_final_samples", action="store_true",
                   help="skip the final sample folders and their metric, e.g. when the "
                        "quality curves are the measure (default: off)")
    p.add_argument("--plan", action="store_true",
                   help="also TA-EB with regions planned from measured loss gaps "
                        "(plan_regions.py at the EB epoch; ticket set {doc}_plan); "
                        "taeb.regions: auto plans without a hand-set one (default: off)")
    p.add_argument("--equal_flops", action="store_true",
                   help="also fine-tune a uniform EB ticket, at the ratio of TA-EB's "
                        "sampling-averaged MACs, with the TA-EB tickets' fine-tuning FLOPs "
                        "(default: off)")
    add_override_flag(p)
    return p


class Pipeline:
    """The stages, in order; each reuses what an earlier run finished. Every stage's subprocess
    reads one resolved config file ({exp}/pipeline/{doc}.yml: the config, the command's
    overrides, and what the pipeline decides: the ratios masked online, the fine-tuning epochs,
    the epochs of regions without an early bird), so no stage re-derives a setting."""

    def __init__(self, a):
        from core.config import load_config
        from core.layout import Layout
        from core.regions import require_regions
        self.a = a
        base = load_config(a.config, flatten_overrides(a.override))
        self.planned = a.plan or base.taeb.auto
        self.regions = () if base.taeb.auto and not base.taeb.regions else \
            require_regions(base, a.config)
        self.ratios = sorted(set(base.earlybird.ratios) | {a.pruning_ratio} |
                             {r.pruning_ratio for r in self.regions})
        t = base.target
        if t.enabled and base.data.dataset != "DIGITS":
            raise UserError("target.enabled: the target is scored with the digits metric; "
                            "other data sets fine-tune for fixed epochs (target.enabled: false)")
        # to a target, every fine-tune (and TA-EB ticket) runs to its cap unless it gets there
        ft_epochs = a.finetune_epochs or (t.max_epochs if t.enabled else
                                          base.taeb.finetune_epochs)
        training = replace(base.training, n_epochs=t.plateau_max_epochs) \
            if t.enabled and t.plateau_patience else base.training
        self.cfg = replace(base, training=training,
                           earlybird=replace(base.earlybird, enabled=True,
                                             ratios=tuple(self.ratios), stop=False),
                           taeb=replace(base.taeb, finetune_epochs=ft_epochs, auto=False,
                                        regions=self.regions))
        self.layout = Layout(a.exp)
        self.config_file = self.layout.pipeline_config(a.doc)
        self.write_config()
        self.pruner = self.cfg.earlybird.pruner
        self.ft_epochs = ft_epochs
        self.n_samples = a.n_samples or self.cfg.sampling.n_samples

    @property
    def last(self):
        """The dense run's last epoch (it may stop at a plateau before training.n_epochs)."""
        return self.epochs_done(self.a.doc) - 1

    def epochs_done(self, doc):
        from core.checkpoint import load_checkpoint
        path = self.layout.latest_checkpoint(doc)
        return load_checkpoint(path)["epochs_done"] if os.path.isfile(path) else 0

    def write_config(self):
        from core.config import dump_config
        os.makedirs(os.path.dirname(self.config_file), exist_ok=True)
        dump_config(self.cfg, self.config_file)

    @property
    def xp(self):
        from core.options import Experiment
        return Experiment(self.cfg, self.layout, self.a.doc, self.config_file)

    def train_cmd(self, doc, extra):
        """main.py for one run, resuming an unfinished one; None when it is done."""
        if os.path.isfile(self.layout.done_marker(doc)):
            return None
        cmd = [PY, os.path.join(ROOT, "main.py"), "--config", self.config_file, "--exp",
               self.a.exp, "--doc", doc, "--ni", "--use_ema", "--skip_type", "quad"]
        if os.path.isfile(self.layout.latest_checkpoint(doc)):
            cmd.append("--resume_training")
        return cmd + extra

    def finetune_args(self, epochs):
        return ["--override", f"training.n_epochs={epochs}", "earlybird.enabled=false"]

    def dense(self):
        if self.cfg.target.enabled and self.cfg.target.plateau_patience:
            return self.dense_to_plateau()
        cmd = self.train_cmd(self.a.doc, [])
        if cmd:
            run(cmd, "dense training (+ online masks)")

    # --- quality-driven stopping (evaluation/targets.py has the rules) -----------------------

    def scorer(self):
        from evaluation.curves import digits_quality
        if not hasattr(self, "_score"):
            self._score = digits_quality(self.layout.metric_cache())
        return self._score

    def score_epochs(self, name, sources_by_epoch):
        """The curve points of run/ticket set ``name`` at these epochs (evaluated once)."""
        from evaluation.curves import evaluate_curve
        return evaluate_curve(self.cfg, self.layout.curve_file(name), sources_by_epoch,
                              self.scorer(), n=self.a.eval_samples,
                              timesteps=self.a.eval_timesteps)

    def score_run(self, doc, ends):
        ckpts = self.layout.epoch_checkpoints(doc)
        return self.score_epochs(doc, {e - 1: ckpts[e - 1] for e in ends if e - 1 in ckpts})

    def score_set(self, tset, regions, ends):
        from core.layout import region_doc, taeb_name
        per = [self.layout.epoch_checkpoints(region_doc(tset, r.range)) for r in regions]
        return self.score_epochs(taeb_name(tset), {
            e - 1: [(r.range, c[e - 1]) for r, c in zip(regions, per)]
            for e in ends if all(e - 1 in c for c in per)})

    def finish(self, docs, why):
        """Mark runs stopped by a target or plateau finished (a rerun reuses them)."""
        from utils.io import atomic_write_text
        for d in docs:
            if not os.path.isfile(self.layout.done_marker(d)):
                atomic_write_text(self.layout.done_marker(d), f"done: {why}\n")

    def dense_to_plateau(self):
        """Dense training in steps of target.every epochs until its curve plateaus (the rule in
        evaluation/targets.py), at most target.plateau_max_epochs."""
        from evaluation.targets import (chunk_ends, plateau_level, plateaued, read_record,
                                        write_record)
        t, doc, L = self.cfg.target, self.a.doc, self.layout
        rec = read_record(L.target_record(doc))
        if rec and os.path.isfile(L.done_marker(doc)):
            return rec
        ends, done = [], []
        for end in chunk_ends(t.every, t.plateau_max_epochs):
            ends.append(end)
            if self.epochs_done(doc) < end and not os.path.isfile(L.done_marker(doc)):
                run(self.train_cmd(doc, ["--until_epoch", str(end)]),
                    f"dense training to epoch {end - 1} (+ online masks)")
            done = [p["value"] for p in self.score_run(doc, ends)]
            if plateaued(done, t.plateau_patience, t.plateau_delta):
                break
        hit = plateaued(done, t.plateau_patience, t.plateau_delta)
        self.finish([doc], f"plateau at epoch {ends[-1] - 1}" if hit else "cap")
        return write_record(L.target_record(doc), {
            "kind": "plateau", "plateaued": hit, "epochs": self.epochs_done(doc),
            "level": plateau_level(done, t.plateau_patience), "values": done,
            "eval_epochs": [e - 1 for e in ends], "patience": t.plateau_patience,
            "delta": t.plateau_delta, "cap": t.plateau_max_epochs,
            "n": self.a.eval_samples, "timesteps": self.a.eval_timesteps})

    def target_value(self):
        """target.value, else the dense reference's final quality (its plateau level, or its
        last evaluation)."""
        t = self.cfg.target
        if t.value:
            return t.value
        from evaluation.targets import read_record
        rec = read_record(self.layout.target_record(self.a.doc))
        if rec:
            return rec["level"]
        return self.score_run(self.a.doc, [self.epochs_done(self.a.doc)])[-1]["value"]

    def to_target(self, name, runs, advance, score, label):
        """``name``: the run, or the ticket set's stitched name (its curve's and record's).
        Train ``runs`` (one run, or a ticket set's region runs) in steps of target.every
        epochs until ``score(ends)``'s last point reaches the target or a cap is hit."""
        from core.runlog import read_costs
        from evaluation.targets import chunk_ends, reached, read_record, write_record
        t, L = self.cfg.target, self.layout
        rec = read_record(L.target_record(name))
        if rec and all(os.path.isfile(L.done_marker(d)) for d in runs):
            return rec
        target, ends, curve, flops = self.target_value(), [], [], 0
        for end in chunk_ends(t.every, t.max_epochs):
            ends.append(end)
            if min(self.epochs_done(d) for d in runs) < end and \
                    not all(os.path.isfile(L.done_marker(d)) for d in runs):
                advance(end)
            curve = score(ends)
            flops = sum(c.get("train_flops", 0) for d in runs for c in read_costs(L.costs(d)))
            if reached([p["value"] for p in curve], target) is not None or \
                    (t.max_flops and flops >= t.max_flops):
                break
        hit = reached([p["value"] for p in curve], target)
        print(f"{label}: {'reached' if hit is not None else 'did not reach'} the target "
              f"{target:.2f} ({curve[-1]['metric']} {curve[-1]['value']:.2f} after epoch "
              f"{curve[-1]['epoch']}, {flops / 1e12:.2f} TFLOPs of fine-tuning)", flush=True)
        self.finish(runs, "target reached" if hit is not None else "cap")
        return write_record(L.target_record(name), {
            "kind": "target", "target": target, "reached": hit is not None,
            "epoch": curve[hit]["epoch"] if hit is not None else None,
            "epochs": ends[-1], "finetune_flops": flops, "values": [p["value"] for p in curve],
            "eval_epochs": [p["epoch"] for p in curve], "cap_epochs": t.max_epochs,
            "cap_flops": t.max_flops})

    def earlybird_epochs(self):
        """{ratio: EB epoch}; a ratio without one falls back to the last epoch (and a region of
        that ratio is pruned there: written into the pipeline's config)."""
        a, e = self.a, self.cfg.earlybird
        mask_dir = self.layout.masks_dir(a.doc)
        newest = max((os.path.getmtime(os.path.join(mask_dir, f)) for f in os.listdir(mask_dir)
                      if f.endswith(".npy")), default=0.0) if os.path.isdir(mask_dir) else 0.0
        eb = {}
        for r in self.ratios:
            out = self.layout.earlybird_result(a.doc, r, self.pruner)
            if not (os.path.isfile(out) and os.path.getmtime(out) >= newest):
                run([PY, script("find_earlybird.py"), "--mask_dir", mask_dir, "--pruning_ratio",
                     f"{r:g}", "--pruner", self.pruner, "--doc", a.doc, "--window",
                     str(e.window), "--threshold", str(e.threshold), "--output", out],
                    f"EB epoch, p={r:g}")
            with open(out) as f:
                eb[r] = json.load(f)["eb_epoch"]
        if not os.path.isfile(os.path.join(mask_dir, f"distances-{self.pruner}.png")):
            run([PY, script("plot_overlap.py"), "--mask_dir", mask_dir, "--pruning_ratio",
                 *[f"{r:g}" for r in self.ratios], "--pruner", self.pruner, "--doc", a.doc,
                 "--window", str(e.window), "--threshold", str(e.threshold)],
                "overlap heatmaps")
        fallback = [r for r in self.ratios if eb[r] is None]
        for r in fallback:
            eb[r] = self.last
            print(f"note: no early-bird epoch for p={r:g}; its ticket is drawn at the last "
                  f"epoch {self.last} (not an early-bird ticket)")
        if fallback:
            regions = tuple(replace(r, epoch=eb[r.pruning_ratio])
                            if r.pruning_ratio in fallback and r.epoch is None and not r.ticket
                            else r for r in self.regions)
            self.cfg = replace(self.cfg, taeb=replace(self.cfg.taeb, regions=regions))
            self.write_config()
        return eb

    def ticket(self, ratio, epoch):
        from runners.pruning import ticket_for
        path = self.layout.ticket_file(self.a.doc, ratio, self.pruner, epoch)
        if not os.path.isfile(path):
            print(f"\n=== prune epoch {epoch} at p={ratio:g}", flush=True)
            ticket_for(self.xp, ratio, epoch, log=print)
        return path

    def finetune(self, eb):
        from core.layout import eb_doc, tpf_doc
        p = self.a.pruning_ratio
        ft = self.finetune_args(self.ft_epochs)
        runs = [(eb_doc(self.a.doc, p), eb[p], "EB ticket")]
        if not self.a.skip_tpf:
            # Diff-Pruning's protocol: prune the final dense weights
            runs.append((tpf_doc(self.a.doc, p), self.last, "train-prune-finetune"))
        for doc, epoch, label in runs:
            extra = ["--load_pruned_model", self.ticket(p, epoch)] + ft
            what = f"fine-tune {label} p={p:g} (from epoch {epoch})"
            if self.cfg.target.enabled:
                self.to_target(doc, [doc], lambda end, d=doc, x=extra, w=what: run(
                    self.train_cmd(d, x + ["--until_epoch", str(end)]), f"{w} to {end} epochs"),
                    lambda ends, d=doc: self.score_run(d, ends), f"{label} p={p:g}")
                continue
            cmd = self.train_cmd(doc, extra)
            if cmd:
                run(cmd, what)

    def ticket_sets(self):
        """[(set name, config file, regions, label)]: the hand-set regions (if any) and, with
        --plan or taeb.regions: auto, the planned ones."""
        from core.layout import plan_set
        out = [(self.a.doc, self.config_file, self.regions, "TA-EB")] if self.regions else []
        if self.planned:
            out.append((plan_set(self.a.doc), *self.plan_regions(), "TA-EB planned"))
        return out

    def plan_regions(self):
        """plan_regions.py at the EB epoch (once): its config file and regions."""
        from core.config import load_config
        from core.layout import plan_set
        out_cfg = self.layout.pipeline_config(plan_set(self.a.doc))
        if not os.path.isfile(out_cfg) or not os.path.isfile(self.layout.plan_file(self.a.doc)):
            run([PY, script("plan_regions.py"), "--config", self.config_file, "--exp",
                 self.a.exp, "--doc", self.a.doc, "--pruning_ratio", f"{self.a.pruning_ratio:g}",
                 "--write", out_cfg], "plan TA-EB regions from loss gaps")
        return out_cfg, load_config(out_cfg).taeb.regions

    def taeb(self):
        from core.layout import region_doc, taeb_name
        for tset, config, regions, label in self.ticket_sets():
            if os.path.isfile(self.layout.manifest(tset)):
                continue
            cmd = [PY, script("train_tickets.py"), "--config", config, "--exp", self.a.exp,
                   "--doc", self.a.doc, "--ticket_set", tset]
            cmd += ["--max_parallel", str(self.a.max_parallel)] if self.a.max_parallel else []
            if not self.cfg.target.enabled:
                run(cmd, f"{label} tickets")
                continue
            runs = [region_doc(tset, r.range) for r in regions]
            self.to_target(taeb_name(tset), runs, lambda end, c=cmd, w=label: run(
                c + ["--until_epoch", str(end)], f"{w} tickets to {end} epochs"),
                lambda ends, ts=tset, rg=regions: self.score_set(ts, rg, ends), label)
            run(cmd + ["--collect"], f"{label} manifest")

    def sample_and_score(self):
        from core.layout import eb_doc, taeb_name, tpf_doc
        a, L = self.a, self.layout
        p = a.pruning_ratio
        methods = [(a.doc, ["--restore_from", L.latest_checkpoint(a.doc)])]
        methods += [(d, ["--restore_from", L.latest_checkpoint(d)])
                    for d in (eb_doc(a.doc, p), tpf_doc(a.doc, p))
                    if os.path.isfile(L.latest_checkpoint(d))]
        methods += [(d, ["--restore_from", L.latest_checkpoint(d)])
                    for _, d in L.derived_runs(a.doc, "eqflops")]
        methods += [(taeb_name(tset), ["--tickets", L.manifest(tset)])
                    for tset, _, _, _ in self.ticket_sets()]
        for name, src in methods:
            folder, metric = L.samples_dir(name), L.metric_file(name)
            have = all(os.path.isfile(os.path.join(folder, f"{i:06d}.png"))
                       for i in range(self.n_samples))
            if have and os.path.isfile(metric):
                continue
            run([PY, os.path.join(ROOT, "main.py"), "--config", self.config_file, "--exp",
                 a.exp, "--doc", a.doc, "--ni", "--sample", "--fid", "--use_ema",
                 "--image_folder", folder, "--n_samples", str(self.n_samples)] + src,
                f"sample {name}")
            self.score(name, folder, metric)

    def score(self, name, folder, metric):
        a = self.a
        if self.cfg.data.dataset == "DIGITS":
            run([PY, script("digits_metric.py"), folder, "--image_size",
                 str(self.cfg.data.image_size), "--n_samples", str(self.n_samples),
                 "--cache_dir", self.layout.metric_cache(), "--output", metric],
                f"digits metric {name}")
        elif a.fid_ref:
            cmd = [PY, script("fid.py"), folder, a.fid_ref, "--n_samples", str(self.n_samples),
                   "--output", metric]
            cmd += ["--inception_weights", a.inception_weights] if a.inception_weights else []
            run(cmd, f"FID {name}")

    def ticket_macs(self, eb):
        """{ratio: MACs per image} of every pipeline ratio's ticket (pruned once)."""
        from runners.tickets import ticket_stats
        return {r: ticket_stats(self.ticket(r, eb[r]))[1] for r in self.ratios}

    def equal_flops(self, eb):
        """A uniform EB ticket at the ratio of TA-EB's sampling-averaged MACs (the closest
        pipeline ratio at or above it), fine-tuned as many epochs as give it the TA-EB
        tickets' fine-tuning FLOPs."""
        import yaml

        from models.diffusion import timestep_sequence
        from evaluation.evidence import best_equal_ratio, sampling_average_macs
        from core.layout import eqflops_doc
        with open(self.layout.manifest(self.a.doc)) as f:
            tickets = yaml.safe_load(f)["tickets"]
        s = self.cfg.sampling
        seq = timestep_sequence(s.skip_type, s.timesteps,
                                self.cfg.diffusion.num_diffusion_timesteps)
        target = sampling_average_macs([(*t["range"], t["macs"]) for t in tickets], seq)
        macs = self.ticket_macs(eb)
        r = best_equal_ratio(macs, target)
        epochs = max(1, round(self.ft_epochs * sum(t["macs"] for t in tickets) / macs[r]))
        print(f"note: TA-EB averages {target / 1e6:.2f} MMACs per sampling step; the uniform "
              f"ticket at p={r:g} has {macs[r] / 1e6:.2f}; {epochs} epochs give it the TA-EB "
              f"tickets' fine-tuning FLOPs")
        cmd = self.train_cmd(eqflops_doc(self.a.doc, r),
                             ["--load_pruned_model", self.ticket(r, eb[r])] +
                             self.finetune_args(epochs))
        if cmd:
            run(cmd, f"fine-tune uniform EB ticket p={r:g} for TA-EB's FLOPs ({epochs} epochs)")

    def curves(self):
        """Quality along training of every run, each on the same fixed noise."""
        from evaluation.curves import eval_epochs
        from core.layout import region_doc
        a, L = self.a, self.layout
        if self.cfg.data.dataset != "DIGITS":
            print("note: quality curves are scored with the digits metric only; skipped")
            return
        runs = [a.doc] + [name for kind in ("eb", "tpf", "eqflops")
                          for _, name in L.derived_runs(a.doc, kind)]
        print("\n=== quality along training", flush=True)
        for name in runs:
            n = len(L.epoch_checkpoints(name))
            self.score_run(name, [e + 1 for e in eval_epochs(n, a.eval_every)])
        for tset, _, regions, _ in self.ticket_sets():
            n = min(len(L.epoch_checkpoints(region_doc(tset, r.range))) for r in regions)
            self.score_set(tset, regions, [e + 1 for e in eval_epochs(n, a.eval_every)])

    def report(self):
        s = self.cfg.sampling
        run([PY, script("report.py"), "--exp", self.a.exp, "--doc", self.a.doc, "--timesteps",
             str(s.timesteps), "--skip_type", s.skip_type], "report")


def main(argv=None):
    a = build_parser().parse_args(argv)
    check_name(a.doc, "--doc")
    from core.layout import Layout
    from core.lock import RunLock
    with RunLock(Layout(a.exp).pipeline_lock(a.doc), f"the pipeline of {a.doc} in {a.exp}"):
        return run_stages(a)


def run_stages(a):
    """Every stage in order; a rerun skips or resumes what an earlier run finished."""
    t_start = time.perf_counter()
    pipe = Pipeline(a)
    pipe.dense()                    # 1. dense training with online masks
    eb = pipe.earlybird_epochs()    # 2. EB epochs from the masks
    pipe.finetune(eb)               # 3. EB ticket, 4. train-prune-finetune baseline
    pipe.taeb()                     # 5. TA-EB tickets (one device each, else one at a time),
                                    #    hand-set and/or planned from measured loss gaps
    if a.equal_flops and not pipe.cfg.target.enabled:
        pipe.equal_flops(eb)        # 5b. a uniform ticket given TA-EB's fine-tuning FLOPs
    if not a.no_final_samples:
        pipe.sample_and_score()     # 6. sampling, 7. metric
    if a.eval_every:
        pipe.curves()               # 7b. quality along training
    pipe.report()                   # 8. report
    print(f"\npipeline finished in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
