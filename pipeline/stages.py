"""The pipeline's stages, in order (the README's first command):

dense training with per-epoch checkpoints and online masks -> EB epochs and overlap figures ->
EB ticket fine-tune -> train-prune-finetune baseline -> TA-EB tickets in parallel (hand-set
and/or planned regions) -> a uniform ticket given TA-EB's FLOPs -> samples and their quality ->
quality along training -> the report.

Each ``Stage`` names its outputs and has a ``done`` test on them: a rerun skips finished stages
and resumes unfinished runs. Training, sampling and scoring run as the commands a user would
type (printed as they run); the step loops to a plateau or a target are pipeline/schedule.py's.
"""
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Tuple

from core.checkpoint import epochs_done
from core.config import load_config
from core.layout import Layout, eb_doc, eqflops_doc, plan_set, region_doc, taeb_name, tpf_doc
from core.options import Experiment
from core.regions import read_manifest
from core.runlog import read_costs, record_cost, summed_cost
from datasets import DIGIT_SETS
from evaluation.costs import cumulative
from evaluation.curves import digits_quality, eval_epochs, evaluate_curve, on_axis
from evaluation.digits_metric import compare_size
from evaluation.heldout import heldout_set
from evaluation.evidence import best_equal_ratio, cost_to_reach, sampling_average_macs
from evaluation.targets import read_record, write_record
from models.diffusion import timestep_sequence
from pipeline.schedule import Runs, finetune_budget, to_plateau, to_target
from pipeline.settings import write_pipeline_config
from runners.pruning import ticket_for
from runners.tickets import ticket_epoch, ticket_stats
from utils.errors import UserError
from utils.io import atomic_write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def run(cmd, what):
    """Run one command as a stage step, printed as a user would type it."""
    print(f"\n=== {what}\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise UserError(f"stage '{what}' failed (exit {res.returncode}); fix it and rerun: "
                        f"finished stages are reused")
    print(f"--- {what}: {time.perf_counter() - t0:.1f}s", flush=True)


def script(name):
    return os.path.join(ROOT, "earlybird_scripts", name)


# what a finished run's weights depend on: a rerun with other values must not reuse it
TRAINING_SECTIONS = ("data", "model", "diffusion", "training", "optim", "speed", "pruning")
NOT_COMPARED = {("training", "n_epochs"),   # fine-tunes and tickets set their own
                ("training", "log_every"), ("training", "sample_every"),
                ("training", "grid_samples"), ("training", "dist_timeout_s"),
                ("data", "num_workers")}


def check_same_training(run_config, cfg, *, dense):
    """Refuse, in one line, a finished run whose config.yml differs from ``cfg`` in a setting
    its weights depend on (the dense run: its epochs too)."""
    if not os.path.isfile(run_config):
        return
    old, new = load_config(run_config).as_dict(), cfg.as_dict()
    diff = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in TRAINING_SECTIONS
            for k in new[s] if old[s].get(k) != new[s][k] and
            ((s, k) not in NOT_COMPARED or (dense and (s, k) == ("training", "n_epochs")))]
    if diff:
        raise UserError(f"{os.path.dirname(run_config)} finished with other settings "
                        f"({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}): a rerun "
                        f"would reuse it; use another --exp or --doc, or remove that run")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: what it writes and how to tell it is finished."""
    name: str
    run: Callable[[], object]
    outputs: Callable[[], Tuple[str, ...]]   # the files it leaves (its "done" test's inputs)
    done: Callable[[], bool] = None          # default: every output exists

    def finished(self):
        if self.done is not None:
            return self.done()
        return all(os.path.exists(p) for p in self.outputs())


@dataclass(frozen=True)
class TicketSet:
    """One TA-EB ticket set: its name, config file, regions and label."""
    name: str
    config: str
    regions: tuple
    label: str


class Pipeline:
    """The stages of one dense run ``doc`` under experiment root ``exp``."""

    def __init__(self, config, exp, doc, overrides=()):
        self.layout = Layout(exp)
        self.exp, self.doc = exp, doc
        self.config_file = self.layout.pipeline_config(doc)
        self.cfg = write_pipeline_config(config, list(overrides), self.config_file)
        self.xp = Experiment(self.cfg, self.layout, doc, self.config_file)
        self._score = self._heldout = None

    # --- what exists ---------------------------------------------------------------------
    def epochs(self, doc):
        return epochs_done(self.layout.latest_checkpoint(doc))

    def is_done(self, doc, overrides=()):
        """Run ``doc`` finished, with the settings this pipeline would train it with (plus a
        region's own ``overrides``); a finished run made with others is refused, not silently
        reused."""
        if not os.path.isfile(self.layout.done_marker(doc)):
            return False
        cfg = self.cfg.with_overrides(list(overrides)) if overrides else self.cfg
        check_same_training(self.layout.run_config(doc), cfg, dense=doc == self.doc)
        return True

    @property
    def last(self):
        """The dense run's last epoch (it may stop at a plateau before training.n_epochs)."""
        return self.epochs(self.doc) - 1

    def stages(self):
        """Every configured stage, in order."""
        p, L, doc = self.cfg.pipeline, self.layout, self.doc
        ratio = p.pruning_ratio
        out = [Stage("dense", self.dense, lambda: (L.done_marker(doc),),
                     done=lambda: self.is_done(doc)),
               Stage("earlybird", self.earlybird, self.earlybird_outputs),
               Stage("eb", lambda: self.finetune(eb_doc(doc, ratio), self.eb_epoch(ratio),
                                                 "EB ticket"),
                     lambda: (L.done_marker(eb_doc(doc, ratio)),),
                     done=lambda: self.is_done(eb_doc(doc, ratio)))]
        if p.tpf:  # Diff-Pruning's protocol: prune the final dense weights
            out.append(Stage("tpf", lambda: self.finetune(tpf_doc(doc, ratio), self.last,
                                                          "train-prune-finetune"),
                             lambda: (L.done_marker(tpf_doc(doc, ratio)),),
                             done=lambda: self.is_done(tpf_doc(doc, ratio))))
        if p.plan:
            out.append(Stage("plan", self.plan, lambda: (
                L.pipeline_config(plan_set(doc)), L.plan_file(doc))))
        out.append(Stage("taeb", self.taeb, lambda: tuple(
            L.manifest(s.name) for s in self.ticket_sets()), done=self.tickets_done))
        if p.equal_flops and not self.cfg.target.enabled:
            out.append(Stage("equal_flops", self.equal_flops, lambda: (),
                             done=lambda: self.is_done(self.equal_flops_doc()[0])))
        if p.final_samples:
            out.append(Stage("samples", self.sample_and_score, self.sample_outputs))
        if p.eval_every:
            out.append(Stage("curves", self.curves, lambda: (), done=lambda: False))
        out.append(Stage("report", self.report, lambda: (L.report_file(doc),),
                         done=lambda: False))
        return out

    def run_all(self):
        for stage in self.stages():
            if not stage.finished():
                stage.run()

    # --- 1. dense training -----------------------------------------------------------------
    def train_cmd(self, doc, extra):
        """main.py for one run, resuming an unfinished one."""
        cmd = [PY, os.path.join(ROOT, "main.py"), "--config", self.config_file, "--exp",
               self.exp, "--doc", doc, "--ni", "--use_ema", "--skip_type", "quad"]
        if os.path.isfile(self.layout.latest_checkpoint(doc)):
            cmd.append("--resume_training")
        return cmd + extra

    def dense(self):
        t = self.cfg.target
        if not (t.enabled and t.plateau_patience):
            run(self.train_cmd(self.doc, []), "dense training (+ online masks)")
            return
        rec = to_plateau(self.runs([self.doc], lambda end: run(
            self.train_cmd(self.doc, ["--until_epoch", str(end)]),
            f"dense training to epoch {end - 1} (+ online masks)"),
            lambda ends: self.score_run(self.doc, ends)),
                         every=t.every, cap=t.plateau_max_epochs,
                         patience=t.plateau_patience, delta=t.plateau_delta)
        p = self.cfg.pipeline
        # the record before DONE: a finished run always has the decision it was stopped by
        write_record(self.layout.target_record(self.doc), {
            **rec, "epochs": self.epochs(self.doc), "n": p.eval_samples,
            "timesteps": p.eval_timesteps, "axis": t.axis})
        self.finish([self.doc], f"plateau at epoch {rec['eval_epochs'][-1]}"
                    if rec["plateaued"] else "cap")

    def runs(self, docs, advance, score):
        """The step loops' view (pipeline/schedule.py) of runs ``docs``: ``advance(end)``
        trains them to ``end`` epochs, ``score(ends)`` reads their curve."""
        return Runs(epochs_done=lambda: min(self.epochs(d) for d in docs),
                    finished=lambda: all(self.is_done(d) for d in docs),
                    advance=advance, score=score,
                    flops=lambda: sum(summed_cost(read_costs(self.layout.costs(d)))[1]
                                      for d in docs))

    def finish(self, docs, why):
        """Mark runs stopped by a target or a plateau finished (a rerun reuses them)."""
        for d in docs:
            if not self.is_done(d):
                atomic_write_text(self.layout.done_marker(d), f"done: {why}\n")

    # --- quality along training ------------------------------------------------------------
    def scorer(self):
        if self._score is None:
            self._score = digits_quality(self.layout.metric_cache(), self.cfg.data.dataset)
        return self._score

    def heldout(self):
        if self._heldout is None:
            p = self.cfg.pipeline
            self._heldout = heldout_set(self.cfg, images=p.heldout_images,
                                        timesteps=p.heldout_timesteps)
        return self._heldout

    def score_epochs(self, name, sources_by_epoch):
        """The curve points of run / ticket set ``name`` at these epochs (each scored once),
        with ``value`` on the axis the loops read (target.axis)."""
        p = self.cfg.pipeline
        return on_axis(evaluate_curve(self.cfg, self.layout.curve_file(name), sources_by_epoch,
                                      self.scorer(), n=p.eval_samples,
                                      timesteps=p.eval_timesteps, heldout=self.heldout()),
                       self.cfg.target.axis)

    def score_run(self, doc, ends):
        ckpts = self.layout.epoch_checkpoints(doc)
        return self.score_epochs(doc, {e - 1: ckpts[e - 1] for e in ends if e - 1 in ckpts})

    def score_set(self, tset, ends):
        per = [(r.range, self.layout.epoch_checkpoints(region_doc(tset.name, r.range)))
               for r in tset.regions]
        return self.score_epochs(taeb_name(tset.name), {
            e - 1: [(rng, c[e - 1]) for rng, c in per]
            for e in ends if all(e - 1 in c for _, c in per)})

    def dense_curve(self):
        """The dense run's curve on target.axis: every target.every-th epoch and its last (a
        plateau run's own evaluations), each scored once, before any budget is read from it."""
        return self.score_run(self.doc, [e + 1 for e in eval_epochs(self.epochs(self.doc),
                                                                    self.cfg.target.every)])

    def target_value(self):
        """target.value, else the dense reference's final quality (its plateau level, or its
        last evaluation)."""
        if self.cfg.target.value:
            return self.cfg.target.value
        rec = read_record(self.layout.target_record(self.doc))
        if rec:
            return rec["level"]
        return self.dense_curve()[-1]["value"]

    def dense_cost_to_target(self):
        """Training FLOPs at which the dense curve first reaches the target (None: never)."""
        cum = cumulative(read_costs(self.layout.costs(self.doc)))
        return cost_to_reach([(cum[p["epoch"]][1], p["value"]) for p in self.dense_curve()
                              if p["epoch"] in cum], self.target_value())

    def flops_budget(self, pruned_at):
        """The fine-tuning FLOPs cap of a method pruned after dense epoch ``pruned_at``:
        target.max_flops, else (target.budget: dense) pipeline/schedule.py's rule."""
        t = self.cfg.target
        if t.max_flops or t.budget != "dense":
            return t.max_flops
        dense = read_costs(self.layout.costs(self.doc))
        eb = self.eb_epoch(self.cfg.pipeline.pruning_ratio)
        return finetune_budget(self.dense_cost_to_target(),
                               summed_cost(dense, upto=pruned_at)[1],
                               summed_cost(dense, upto=eb)[1])

    def budget_epochs(self, budget, tickets):
        """Epochs of a fine-tune to the target of ``tickets`` (trained side by side): as many
        as its FLOPs budget buys, so that its learning-rate schedule spans the budget (cosine
        decay ends where the budget does) and no method stops with its schedule half run;
        target.max_epochs at most, and without a budget. A ticket's FLOPs per epoch are a
        full dense epoch's scaled by its MACs (torch-pruning's count, which leaves out
        attention's products: a few per cent here); the cap itself counts measured FLOPs."""
        t = self.cfg.target
        costs = read_costs(self.layout.costs(self.doc))
        if not budget or not costs:
            return t.max_epochs
        full = max(costs, key=lambda c: c["images"])
        per_epoch = record_cost(full)[1] * sum(ticket_stats(p)[1] for p in tickets) / \
            full["macs_per_image"]
        return max(t.every, min(t.max_epochs, math.ceil(budget / per_epoch)))

    def train_to_target(self, name, runs, label, budget, epochs):
        """Train ``runs`` until their curve ``name`` reaches the target, their FLOPs
        ``budget`` is spent, or ``epochs``; the decision goes to {exp}/targets/{name}.json."""
        t = self.cfg.target
        every = max(t.every, math.ceil(epochs / t.evaluations)) if t.evaluations else t.every
        rec = dict(to_target(runs, target=self.target_value(), every=every,
                             cap_epochs=epochs, cap_flops=budget), axis=t.axis, every=every)
        print(f"{label}: {'reached' if rec['reached'] else 'did not reach'} the target "
              f"{rec['target']:.4g} ({rec['values'][-1]:.4g} after epoch "
              f"{rec['eval_epochs'][-1]}, {rec['finetune_flops'] / 1e12:.2f} TFLOPs of "
              f"fine-tuning" + (f" of a budget of {rec['cap_flops'] / 1e12:.2f}"
                                if rec["cap_flops"] else "") + ")", flush=True)
        return rec

    # --- 2. early-bird epochs --------------------------------------------------------------
    def eb_epoch(self, ratio):
        epoch = ticket_epoch(self.xp, ratio)
        if epoch is None:
            raise UserError(f"no dense epoch to prune for p={ratio:g}: train {self.doc} first")
        return epoch

    def earlybird_outputs(self):
        return (os.path.join(self.layout.masks_dir(self.doc),
                             f"distances-{self.cfg.earlybird.pruner}.png"),)

    def earlybird(self):
        """Each ratio's EB epoch (from the online record, the rule find_earlybird.py applies)
        and the overlap figures."""
        e = self.cfg.earlybird
        print("\n=== early-bird epochs: " + ", ".join(
            f"p={r:g}: {self.eb_epoch(r)}" for r in e.ratios), flush=True)
        run([PY, script("plot_overlap.py"), "--mask_dir", self.layout.masks_dir(self.doc),
             "--pruning_ratio", *[f"{r:g}" for r in e.ratios], "--pruner", e.pruner, "--doc",
             self.doc, "--window", str(e.window), "--threshold", str(e.threshold)],
            "overlap heatmaps")

    # --- 3, 4. the EB ticket and the train-prune-finetune baseline -------------------------
    def ticket(self, ratio, epoch):
        path = self.layout.ticket_file(self.doc, ratio, self.cfg.earlybird.pruner, epoch)
        if not os.path.isfile(path):
            print(f"\n=== prune epoch {epoch} at p={ratio:g}", flush=True)
            ticket_for(self.xp, ratio, epoch, log=print)
        return path

    def finetune(self, doc, epoch, label, *, ratio=None, epochs=None):
        ratio = ratio or self.cfg.pipeline.pruning_ratio
        ticket = self.ticket(ratio, epoch)
        target = self.cfg.target.enabled
        budget = self.flops_budget(epoch) if target else 0.0
        epochs = epochs or (self.budget_epochs(budget, [ticket]) if target else
                            self.cfg.taeb.finetune_epochs)
        extra = ["--load_pruned_model", ticket, "--override", f"training.n_epochs={epochs}",
                 "earlybird.enabled=false"]
        what = f"fine-tune {label} p={ratio:g} (from epoch {epoch})"
        if not target:
            return run(self.train_cmd(doc, extra), what)
        rec = self.train_to_target(doc, self.runs([doc], lambda end: run(
            self.train_cmd(doc, extra + ["--until_epoch", str(end)]), f"{what} to {end} epochs"),
            lambda ends: self.score_run(doc, ends)), f"{label} p={ratio:g}", budget, epochs)
        write_record(self.layout.target_record(doc), rec)
        self.finish([doc], "target reached" if rec["reached"] else "cap")

    # --- 5. TA-EB tickets --------------------------------------------------------------------
    def ticket_sets(self):
        """The hand-set regions (if any) and, with pipeline.plan, the planned ones."""
        out = [TicketSet(self.doc, self.config_file, self.cfg.taeb.regions, "TA-EB")] \
            if self.cfg.taeb.regions else []
        plan_cfg = self.layout.pipeline_config(plan_set(self.doc))
        if self.cfg.pipeline.plan and os.path.isfile(plan_cfg):
            out.append(TicketSet(plan_set(self.doc), plan_cfg,
                                 load_config(plan_cfg).taeb.regions, "TA-EB planned"))
        return out

    def plan(self):
        """plan_regions.py at the EB epochs: a config of the planned regions."""
        run([PY, script("plan_regions.py"), "--config", self.config_file, "--exp", self.exp,
             "--doc", self.doc, "--write", self.layout.pipeline_config(plan_set(self.doc))],
            "plan TA-EB regions from loss gaps")

    def tickets_done(self):
        """Every ticket set has its manifest, and its region runs match these settings."""
        sets = self.ticket_sets()
        if not all(os.path.isfile(self.layout.manifest(t.name)) for t in sets):
            return False
        return all(self.is_done(region_doc(t.name, r.range), r.overrides)
                   for t in sets for r in t.regions)

    def taeb(self):
        for tset in self.ticket_sets():
            if os.path.isfile(self.layout.manifest(tset.name)):
                continue
            if not self.cfg.target.enabled:
                run(self.tickets_cmd(tset), f"{tset.label} tickets")
                continue
            docs = [region_doc(tset.name, r.range) for r in tset.regions]
            epochs = [r.epoch if r.epoch is not None else self.eb_epoch(r.pruning_ratio)
                      for r in tset.regions]
            # the set's budget caps its tickets' FLOPs summed (TA-EB's total, not its
            # critical path): a uniform ticket of the same budget is its equal-FLOPs control
            budget = self.flops_budget(max(epochs))
            n = self.budget_epochs(budget, [r.ticket or self.ticket(r.pruning_ratio, e)
                                            for r, e in zip(tset.regions, epochs)])
            rec = self.train_to_target(taeb_name(tset.name), self.set_runs(tset, docs, n),
                                       tset.label, budget, n)
            write_record(self.layout.target_record(taeb_name(tset.name)), rec)
            self.finish(docs, "target reached" if rec["reached"] else "cap")
            run(self.tickets_cmd(tset, n) + ["--collect"], f"{tset.label} manifest")

    def tickets_cmd(self, tset, epochs=None):
        """train_tickets.py for one set (``epochs``: each ticket's, a fine-tune to the target's
        budget; default taeb.finetune_epochs)."""
        cmd = [PY, script("train_tickets.py"), "--config", tset.config, "--exp", self.exp,
               "--doc", self.doc, "--ticket_set", tset.name]
        mp = self.cfg.pipeline.max_parallel
        cmd += ["--max_parallel", str(mp)] if mp else []
        return cmd + (["--override", f"taeb.finetune_epochs={epochs}"] if epochs else [])

    def set_runs(self, tset, docs, epochs):
        """A ticket set's region runs, trained together in steps and scored stitched."""
        def advance(end):
            run(self.tickets_cmd(tset, epochs) + ["--until_epoch", str(end)],
                f"{tset.label} tickets to {end} epochs")
        return self.runs(docs, advance, lambda ends: self.score_set(tset, ends))

    def equal_flops_doc(self):
        """(run, ratio, epochs) of the uniform EB ticket at the ratio of TA-EB's
        sampling-averaged MACs (the closest pipeline ratio at or above it), fine-tuned as many
        epochs as give it the TA-EB tickets' fine-tuning FLOPs."""
        tickets = read_manifest(self.layout.manifest(self.doc)).tickets
        s = self.cfg.sampling
        seq = timestep_sequence(s.skip_type, s.timesteps,
                                self.cfg.diffusion.num_diffusion_timesteps)
        target = sampling_average_macs([(*t.range, t.macs) for t in tickets], seq)
        macs = {r: ticket_stats(self.ticket(r, self.eb_epoch(r)))[1]
                for r in self.cfg.earlybird.ratios}
        r = best_equal_ratio(macs, target)
        epochs = max(1, round(self.cfg.taeb.finetune_epochs * sum(t.macs for t in tickets) /
                              macs[r]))
        return eqflops_doc(self.doc, r), r, epochs

    def equal_flops(self):
        doc, r, epochs = self.equal_flops_doc()
        print(f"note: the uniform ticket at p={r:g}, fine-tuned {epochs} epochs, gets the "
              f"TA-EB tickets' fine-tuning FLOPs")
        self.finetune(doc, self.eb_epoch(r), f"uniform EB ticket for TA-EB's FLOPs "
                      f"({epochs} epochs)", ratio=r, epochs=epochs)

    # --- 6, 7. samples and their quality ---------------------------------------------------
    def sampled_methods(self):
        """[(name, main.py's source arguments)] of every method that has a network."""
        L, p = self.layout, self.cfg.pipeline
        docs = [self.doc, eb_doc(self.doc, p.pruning_ratio), tpf_doc(self.doc, p.pruning_ratio)]
        if p.equal_flops:  # its ratio is chosen at its stage; its run is one of these
            docs += [eqflops_doc(self.doc, r) for r in self.cfg.earlybird.ratios]
        out = [(d, ["--restore_from", L.latest_checkpoint(d)]) for d in docs
               if os.path.isfile(L.latest_checkpoint(d))]
        return out + [(taeb_name(s.name), ["--tickets", L.manifest(s.name)])
                      for s in self.ticket_sets()]

    def sample_outputs(self):
        n, L = self.cfg.sampling.n_samples, self.layout
        return tuple(p for name, _ in self.sampled_methods() for p in (
            L.metric_file(name), *(os.path.join(L.samples_dir(name), f"{i:06d}.png")
                                   for i in range(n))))

    def sample_and_score(self):
        L = self.layout
        for name, src in self.sampled_methods():
            folder, metric = L.samples_dir(name), L.metric_file(name)
            if os.path.isfile(metric) and all(
                    os.path.isfile(os.path.join(folder, f"{i:06d}.png"))
                    for i in range(self.cfg.sampling.n_samples)):
                continue
            run([PY, os.path.join(ROOT, "main.py"), "--config", self.config_file, "--exp",
                 self.exp, "--doc", self.doc, "--ni", "--sample", "--fid", "--use_ema",
                 "--image_folder", folder] + src, f"sample {name}")
            self.score(name, folder, metric)

    def score(self, name, folder, metric):
        p, n = self.cfg.pipeline, str(self.cfg.sampling.n_samples)
        if self.cfg.data.dataset in DIGIT_SETS:
            size = compare_size(self.cfg.data.image_size)
            run([PY, script("digits_metric.py"), folder, "--image_size", str(size),
                 "--dataset", self.cfg.data.dataset,
                 "--n_samples", n, "--cache_dir",
                 self.layout.metric_cache(), "--output", metric], f"digits metric {name}")
        elif p.fid_ref:
            cmd = [PY, script("fid.py"), folder, p.fid_ref, "--n_samples", n, "--output", metric]
            cmd += ["--inception_weights", p.inception_weights] if p.inception_weights else []
            run(cmd, f"FID {name}")

    # --- 7b. quality along training, 8. the report -----------------------------------------
    def curves(self):
        """Quality along training of every run, each on the same fixed noise."""
        if self.cfg.data.dataset not in DIGIT_SETS:
            print("note: quality curves are scored with the digits metric only; skipped")
            return
        every, L = self.cfg.pipeline.eval_every, self.layout
        print("\n=== quality along training", flush=True)
        def every_of(name):  # a fine-tune to the target keeps its own evaluation interval
            return (read_record(L.target_record(name)) or {}).get("every", every)
        for name, src in self.sampled_methods():
            if src[0] == "--restore_from":
                n = len(L.epoch_checkpoints(name))
                self.score_run(name, [e + 1 for e in eval_epochs(n, every_of(name))])
        for tset in self.ticket_sets():
            n = min(len(L.epoch_checkpoints(region_doc(tset.name, r.range)))
                    for r in tset.regions)
            self.score_set(tset, [e + 1 for e in eval_epochs(n, every_of(taeb_name(tset.name)))])

    def report(self):
        run([PY, script("report.py"), "--exp", self.exp, "--doc", self.doc], "report")
