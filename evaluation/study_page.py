"""The study's results page: how the dense reference converged, the headline (cost to reach
its quality, mean ± 95% interval over seeds), verdicts, stitch diagnostics, the planned regions,
the metric's noise floor, and quality-against-cost figures."""
import os
import shutil
from dataclasses import dataclass, replace

from core import checkpoint as ck
from core.layout import Layout, eb_doc
from evaluation.curves import digits_quality, sample_fixed
from evaluation.diagnostics import stitch_diagnostics
from evaluation.curves import read_curve
from evaluation.evidence import (fmt_interval, fmt_ratios, fmt_values, n_seeds,
                                 rank_agreement)
from evaluation.heldout import HELDOUT_SEED, heldout_loss, heldout_set
from evaluation.methods import BY_KIND
from evaluation.report import report_config
from evaluation.study import (HEADLINE_COLUMNS, headline_data, headline_rows, per_seed_rows,
                              seed_result, verdicts)
from evaluation.tables import write_data
from evaluation.targets import read_record
from utils.io import atomic_write_text, load_yaml, save_figure

NOISE_SEED_SHIFT = 7919  # a second, disjoint set of per-image seeds for the noise floor


@dataclass(frozen=True)
class StudyOptions:
    """What the study page needs beyond the settings (whose pipeline.* section holds the
    evaluation's images, steps and the EB ticket's ratio)."""
    exp: str
    seeds: tuple                    # the seed ids
    speed: bool = False             # SpeeD variants ran beside the plain ones
    notes: tuple = ()               # sentences for the page
    command: str = ""               # the study's arguments, as given


def instrument_noise(cfg, opts, doc):
    """How much each quality axis moves with its noise alone, on the same models (seed 0's
    dense run and EB ticket): |digits-FD of two sample sets| and |held-out loss with two noise
    sets|. Returns [(model, (fd, fd'), (held-out, held-out'))]."""
    L, p = Layout(opts.exp), cfg.pipeline
    score = digits_quality(L.metric_cache(), cfg.data.dataset)
    other = replace(cfg, sampling=replace(cfg.sampling,
                                          seed=cfg.sampling.seed + NOISE_SEED_SHIFT))
    sets = [heldout_set(cfg, images=p.heldout_images, timesteps=p.heldout_timesteps,
                        seed=HELDOUT_SEED + k * NOISE_SEED_SHIFT) for k in (0, 1)]
    out = []
    for name in (doc, eb_doc(doc, p.pruning_ratio)):
        path = L.latest_checkpoint(name)
        if not os.path.isfile(path):
            continue
        model = ck.model_from_checkpoint(ck.load_checkpoint(path), path, use_ema=True).eval()
        fd = tuple(score(sample_fixed(model, c, n=c.sampling.n_samples,
                                      timesteps=c.sampling.timesteps, device="cpu"))[1]
                   for c in (cfg, other))
        ho = tuple(heldout_loss(model, h, vars(cfg.diffusion)) for h in sets)
        out.append((name, fd, ho))
    return out


def instrument_lines(opts, seeds, noise):
    """The two quality axes as instruments: their noise on the same models, and how well the
    held-out loss ranks the curve points of every method as digits-FD and 'valid' do (Spearman
    rank correlation over every evaluated point of a seed)."""
    lines = ["## The instrument", "",
             "How much each quality axis moves with its noise alone, on the same final networks "
             "(digits-FD of the final sample count, two noise sets; the held-out loss, two noise "
             "sets):", "",
             "| model (seed 0) | digits-FD, two noise sets | held-out loss, two noise sets |",
             "|---|---|---|"]
    lines += [f"| {n} | {fd[0]:.2f} / {fd[1]:.2f} (gap {abs(fd[0] - fd[1]):.2f}) | "
              f"{ho[0]:.4f} / {ho[1]:.4f} (gap {abs(ho[0] - ho[1]):.4f}) |"
              for n, fd, ho in noise]
    rho_fd, rho_valid, counts = [], [], []
    for seed in seeds:  # {kind: SeedResult} of each seed
        pts = [q for res in seed.values()
               for q in read_curve(Layout(opts.exp).curve_file(res.key)) if "heldout" in q]
        if len(pts) >= 3:
            rho_fd.append(rank_agreement([q["heldout"] for q in pts], [q["value"] for q in pts]))
            rho_valid.append(rank_agreement([q["heldout"] for q in pts],
                                            [-q.get("valid", 0.0) for q in pts]))
            counts.append(len(pts))
    steps = [neighbours(Layout(opts.exp).curve_file(seed["dense"].key)) for seed in seeds
             if "dense" in seed]
    steps = [v for v in steps if v]
    if steps:
        lines += ["", "Between the dense run's last two evaluations (neighbouring checkpoints, "
                  "one evaluation interval apart), per seed: held-out loss "
                  f"{fmt_values([100 * h for h, _ in steps], '.2f', '%')} apart, digits-FD of "
                  f"the curves' images {fmt_values([f for _, f in steps], '.1f')} apart."]
    if rho_fd:
        lines += ["", f"Rank agreement of the held-out loss over every evaluated point of a "
                  f"seed ({fmt_values(counts, 'd')} points): with digits-FD "
                  f"{fmt_interval(rho_fd)}, with 'valid' (higher is better, so its negative) "
                  f"{fmt_interval(rho_valid)} (Spearman; 1 = the same order). The held-out loss "
                  "is bit-identical for the same weights; digits-FD moves with its noise set by "
                  "the gaps above."]
    return lines + [""]


def neighbours(curve_path):
    """(relative held-out change, |digits-FD change|) between a curve's last two points."""
    pts = [q for q in read_curve(curve_path) if "heldout" in q]
    if len(pts) < 2:
        return None
    a, b = pts[-2], pts[-1]
    return abs(b["heldout"] - a["heldout"]) / a["heldout"], abs(b["value"] - a["value"])


def plot_curves(results, out_png, unit):
    """Quality against training cost (FLOPs on a log axis, or wall-clock) of seed 0, with the
    target (the dense reference's plateau level) as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    target = None
    for variant, style in (("plain", "-"), ("speed", "--")):
        seeds = results.get(variant) or []
        if not seeds:
            continue
        for kind, res in seeds[0].items():
            xs = [(f / 1e12 if unit == "flops" else w) for w, f, _ in res.fd]
            ys = [q for _, _, q in res.fd]
            ax.plot(xs, ys, style, marker="o", ms=3,
                    label=BY_KIND[kind].label + (" + SpeeD" if variant == "speed" else ""))
            if res.axis == "digits_fd":  # a held-out target lies on another axis
                target = res.target if target is None else target
    if target is not None:
        ax.axhline(target, color="k", lw=0.8, ls=":", label=f"target {target:.1f}")
    if unit == "flops":
        ax.set_xscale("log")
        ax.set_xlabel("training TFLOPs (critical path)")
    else:
        ax.set_xlabel("training wall-clock, s (critical path, this machine)")
    ax.set_ylabel("digits-FD (lower is better)")
    ax.set_yscale("log")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    for axis in ((ax.xaxis, ax.yaxis) if unit == "flops" else (ax.yaxis,)):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 10, 20, 50, ...
        axis.set_major_formatter(ScalarFormatter())   # plain numbers, not 2 x 10^1
        axis.set_minor_formatter(NullFormatter())     # minor ticks unlabelled: no overlaps
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=80)
    plt.close(fig)


def dense_lines(cfg, opts, docs, results):
    """How each seed's dense reference was trained and the target it set: a plateau record
    (evaluation/targets.py's rule), or the config's fixed recipe and its last evaluation."""
    L = Layout(opts.exp)
    recs = [(d, read_record(L.target_record(d))) for d in docs]
    plateau = [(d, r) for d, r in recs if r and r.get("kind") == "plateau"]
    lines = ["## The dense reference", ""]
    if plateau:
        r0 = plateau[0][1]
        lines += [f"Dense training ran in steps of {r0['eval_epochs'][0] + 1} epochs, scored "
                  f"after each, until {r0['patience']} evaluations in a row improved on the best "
                  f"before them by no more than {r0['delta']:g} (at most {r0['cap']} epochs). "
                  f"Its level, the mean of the last {r0['patience'] + 1} evaluations, is the "
                  "target every other method trains to.", "",
                  "| seed run | epochs | plateaued | level (target) | evaluations |",
                  "|---|---|---|---|---|"]
        for d, r in plateau:
            vals = ", ".join(f"{v:.4g}" for v in r["values"])
            lines.append(f"| {d} | {r['epochs']} | {'yes' if r['plateaued'] else 'no (cap)'} "
                         f"| {r['level']:.4g} | {vals} |")
        return lines + [""]
    o, t = cfg.optim, cfg.target
    dense = [s["dense"] for s in results.get("plain", []) if "dense" in s]
    if not dense:
        return []
    axis = "the held-out loss" if dense[0].axis == "heldout" else "digits-FD"
    lines += [f"Dense training runs the config's recipe for a fixed {cfg.training.n_epochs} "
              f"epochs (lr {o.lr:g}, {o.warmup} warm-up steps, {o.schedule} schedule, EMA "
              f"{cfg.model.ema_rate:g}), scored every {t.every} epochs on {axis}. Its last "
              "evaluation is the target every other method trains to: a level fixed by the "
              "recipe, not by a stopping rule" + (
                  f"; the fixed levels {', '.join(f'{v:.4g}' for v in t.levels)} (the same "
                  "axis) were set before the runs" if t.levels else "") + ".", "",
              "| seed run | target | cost to it, TFLOPs | final digits-FD | valid | noise-like |",
              "|---|---|---|---|---|---|"]
    for d, r in zip(docs, dense):
        lines.append(f"| {d} | {r.target:.4g} | "
                     f"{r.to_target.flops / 1e12 if r.to_target else float('nan'):.2f} | "
                     f"{r.quality:.2f} | {_pct(r.valid, '.0%')} | {_pct(r.noise_like, '.1%')} |")
    return lines + [""]


def _pct(v, spec):
    return "–" if v is None else f"{v:{spec}}"


def levels_lines(cfg, results):
    """Every method's cost to each fixed level (target.levels), speed-up over dense per seed
    (geometric mean and interval where every seed reached it)."""
    plain = results.get("plain", [])
    if not cfg.target.levels or not plain or not plain[0].get("dense") or \
            not plain[0]["dense"].levels:
        return []
    kinds = [k for k in BY_KIND if any(k in s for s in plain)]
    lines = ["Cost to the fixed levels (speed-up over dense in FLOPs, critical path; per seed "
             "where a seed did not get there):", "",
             "| level | " + " | ".join(BY_KIND[k].label for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for i, level in enumerate(cfg.target.levels):
        cells = []
        for k in kinds:
            per = [(s["dense"].levels[i][1], s[k].levels[i][1]) for s in plain
                   if k in s and "dense" in s and len(s[k].levels) > i]
            if k == "dense":
                cells.append(f"{sum(d is not None for d, _ in per)} of {len(per)} reached")
                continue
            ratios = [d.flops / m.flops for d, m in per if d and m]
            missed = sum(1 for d, m in per if d and not m)
            cells.append(fmt_ratios(ratios) + (f"; {missed} of {len(per)} never got there"
                                               if missed else ""))
        lines.append(f"| {level:.4g} | " + " | ".join(cells) + " |")
    return lines + [""]


def plan_lines(opts, docs, out_dir, stem):
    """The planned regions of each seed, and seed 0's gap plot copied beside the page."""
    L = Layout(opts.exp)
    rows = []
    for d in docs:
        path = L.plan_file(d)
        if os.path.isfile(path):
            p = load_yaml(path, "plan")
            regs = ", ".join(f"[{r['range'][0]},{r['range'][1]}):{r['pruning_ratio']:g}"
                             for r in p["regions"])
            rows.append(f"| {d} | {regs} | {p['plan_macs'] / 1e6:.2f} / "
                        f"{p['budget_macs'] / 1e6:.2f} | {p['plan_gap']:.2f} / "
                        f"{p['uniform_gap']:.2f} |")
    if not rows:
        return []
    png = os.path.join(out_dir, f"{stem}_plan.png")
    shutil.copyfile(os.path.join(L.plan_dir(docs[0]), "plan.png"), png)
    return ["## Planned regions", "",
            "`plan_regions.py` at the EB epoch: each candidate ratio's ticket, pruned and not "
            "fine-tuned, against the dense network of that epoch, per timestep bin, weighted by "
            "the sampler's visits; an interval DP picks at most `taeb.max_regions` regions "
            "under the uniform ticket's sampling MACs.", "",
            "| seed run | regions | sampling MACs (M), plan / budget | weighted loss gap, "
            "plan / uniform |", "|---|---|---|---|"] + rows + [
            "", f"![loss gaps and plan, seed 0]({os.path.basename(png)})", ""]


def diagnostics_lines(cfg, opts, docs, cache_path):
    p = cfg.pipeline
    per_seed = [stitch_diagnostics(cfg, opts.exp, d, pruning_ratio=p.pruning_ratio,
                                   n=p.eval_samples, timesteps=p.eval_timesteps,
                                   cache_path=cache_path) for d in docs]
    if not any(per_seed):
        return []
    lines = ["## Stitch diagnostics", "",
             "Evaluation only, from the finished tickets, on the same noise as the curves: each "
             "region served by the uniform EB ticket instead, and the ticket order inverted. A "
             "swap that lowers digits-FD marks the region where the plan loses quality.", "",
             "| set | variant | digits-FD | change vs as trained | valid |", "|---|---|---|---|---|"]
    labels = list(dict.fromkeys(label for seed in per_seed for label in seed))
    for label in labels:
        # planned regions differ by seed: a variant's row holds the seeds that have it
        seeds = [dict((name, (v, ok)) for name, v, ok in seed[label])
                 for seed in per_seed if label in seed]
        names = list(dict.fromkeys(name for seed in seeds for name in seed))
        for i, name in enumerate(names):
            have = [seed for seed in seeds if name in seed]
            vals = [seed[name][0] for seed in have]
            valid = [seed[name][1] for seed in have if seed[name][1] is not None]
            change = "–" if i == 0 else fmt_interval(
                [seed[name][0] - seed["as trained"][0] for seed in have])
            n = f" ({len(have)} of {len(seeds)} seeds)" if len(have) < len(seeds) else ""
            lines.append(f"| {label} | {name}{n} | {fmt_interval(vals)} | {change} | "
                         f"{fmt_interval(valid, '.0%')} |")
    return lines + [""]


def _protocol(cfg, opts, study_s):
    s, p, t = cfg.sampling, cfg.pipeline, cfg.target
    axis = ("the held-out loss (evaluation/heldout.py: the eps-prediction loss per pixel of "
            f"the first {p.heldout_images} test images at {p.heldout_timesteps} of the "
            "sampler's visited timesteps, the same images, timesteps and noise for every "
            "method and seed: it moves with the weights alone)") if t.axis == "heldout" else \
        "digits-FD"
    return [
        "Generated by `python earlybird_scripts/study.py " + opts.command + "`" +
        (f" in {study_s / 60:.0f} min of wall-clock in all on a 2-core CPU (every invocation "
         "counted, the one that wrote this page included)." if study_s else
         " on a 2-core CPU."), "",
        f"Targets and crossings are read on {axis}, scored every {t.every} epochs of every run. "
        f"Final quality is digits-FD (the Fréchet distance in a digit classifier's features, "
        "not Inception FID; lower is better), 'valid' (the share of samples that classifier "
        "calls one digit with confidence >= 0.9) and 'noise-like' (the share rougher than "
        f"every real digit) of each method's {s.n_samples} final samples ({s.timesteps} "
        f"{s.skip_type} steps, eta {s.eta:g}); each seed has its own noise set, shared by every "
        "method of that seed. The curves' digits-FD "
        f"({p.eval_samples} images of {p.eval_timesteps} steps) is shown in the figures only. "
        "Costs are training FLOPs (a forward pass's FLOPs as `torch.utils.flop_counter` counts "
        "them, attention included, x 3 for forward + backward x images; machine-independent) "
        "and wall-clock, on the critical path: the EB ticket and TA-EB pay for dense training "
        "up to their EB epoch, train-prune-finetune for the whole dense run (Diff-Pruning's "
        "protocol: prune the final weights), TA-EB for its slowest ticket (the tickets ran one "
        "at a time, each with the threads every other run had); TA-EB also at total FLOPs "
        "(every ticket). "
        "Budgets are in FLOPs: each method may spend up to the dense run's cost to the target "
        "(its dense prefix included; train-prune-finetune, which carries the whole dense run, "
        "gets the EB ticket's fine-tuning budget), its learning-rate schedule spans that "
        "budget, and it stops at its first evaluation at or below the target; a ticket set's "
        "budget caps its tickets' FLOPs summed, so the uniform EB ticket is its "
        "equal-total-FLOPs control. The cost to the target is where the curve first crosses it "
        "(interpolated between evaluations; `<` marks an upper bound on the speed-up: the "
        "method never got there within its budget, its whole cost counts). Cost ratios are "
        "geometric means with the 95% Student-t interval of the mean log ratio, other spreads "
        f"the half-width of the 95% interval of the mean over {n_seeds(len(opts.seeds))}; fewer "
        "than 3 values are printed as they are. Float kernels differ between CPU types, so "
        "these numbers move on another machine by about the seed-to-seed spread; compare "
        "methods within one page.", ""] + [n + "\n" for n in opts.notes]


def write_page(cfg, opts, docs, *, out, study_s):
    results = {}
    for variant, names in docs.items():
        results[variant] = [
            seed_result(opts.exp, doc, report_config(opts.exp, doc),
                        dense_curve_doc=docs["plain"][i] if variant != "plain" else None)
            for i, doc in enumerate(names)]
    noise = instrument_noise(cfg, opts, docs["plain"][0])
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(out))[0]
    figs = {}
    for unit in ("flops", "wall"):
        figs[unit] = os.path.join(out_dir, f"{stem}_quality_{unit}.png")
        plot_curves(results, figs[unit], unit)
    variants = [("plain", "")] + ([("speed", " + SpeeD")] if "speed" in results else [])
    backbone = ", DiT backbone" if cfg.model.type == "dit" else ""
    lines = [f"# Evidence: {cfg.data.dataset.lower()}{backbone} ({n_seeds(len(opts.seeds))})", ""]
    lines += _protocol(cfg, opts, study_s) + dense_lines(cfg, opts, docs["plain"], results)
    lines += ["## Headline: the cost to reach the dense reference's quality", ""]
    lines += headline_rows(results, variants) + [""]
    lines += ["Per seed (the seed's target, each method's final digits-FD, and whether it got "
              "there):", ""] + per_seed_rows(results, docs["plain"]) + [""] + \
        levels_lines(cfg, results)
    write_data(out, HEADLINE_COLUMNS, headline_data(results, variants))
    lines += instrument_lines(opts, results["plain"], noise)
    lines += ["Every seed samples its own noise set, shared by every method of that seed, so a "
              "difference between methods is paired within a seed and the 95% interval of the "
              "paired differences over seeds carries the sampling noise; no fixed noise margin "
              "is added. A ratio of costs to the target is judged in logs and decides only "
              "beyond the evaluation grid's resolution (each crossing is known to within one "
              "evaluation interval). No interval, and no verdict, from fewer than 3 seeds.", "",
              "## Verdicts", ""]
    for claim, word, numbers in verdicts(results, 0.0):
        lines.append(f"- {claim}: **{word}** — {numbers}.")
    lines += [""] + diagnostics_lines(cfg, opts, docs["plain"], os.path.join(
        Layout(opts.exp).report_dir("study"), "diagnostics.json"))
    lines += plan_lines(opts, docs["plain"], out_dir, stem)
    lines += ["## Quality against training cost (seed 0)", "",
              f"![quality vs FLOPs]({os.path.basename(figs['flops'])})", "",
              f"![quality vs wall-clock]({os.path.basename(figs['wall'])})", ""]
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out, results, noise
