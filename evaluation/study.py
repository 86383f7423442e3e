"""The evidence study (docs/evidence.md): the pipeline for several seeds, quality along
training for every method on one fixed noise set, the cost to reach the dense reference's
quality (the headline: equal quality), quality at equal cost, fixed budgets, the metric's own
noise floor, and a verdict per claim of the paper. Spreads are 95% Student-t intervals of the
mean over seeds.

Each seed is one pipeline run (``{doc}_s{seed}``; with SpeeD also ``{doc}_speed_s{seed}``);
finished stages are reused, so an interrupted study continues where it stopped.
"""
import math
from dataclasses import dataclass, replace
from typing import Optional

from evaluation.costs import cost_to_target, curve_views, method_curves
from evaluation.evidence import (MIN_SEEDS, cost_to_reach, equal_quality_speedup,
                                 fmt_interval, fmt_ratios, fmt_values, geometric_interval,
                                 interval, n_seeds, quality_at,
                                 reach_bounds, verdict)
from evaluation.methods import BY_KIND, METHODS
from evaluation.report import collect, target_axis

PLAIN_KINDS = tuple(m.kind for m in METHODS)


@dataclass(frozen=True)
class SeedResult:
    """One method's numbers in one seed run, read off its quality curve and its report row."""
    kind: str
    key: str                        # its run (or stitched set) name: curve, samples
    method: str                     # the row's name
    quality: float                  # the curve's last point
    valid: Optional[float]
    eb_epoch: Optional[int]
    flops: float                    # critical path, at the method's own budget
    wall: float
    total_flops: float
    vs_dense: Optional[tuple]       # fixed-budget speed-ups (FLOPs, wall)
    macs: float
    curve: list                     # [(cum wall, cum FLOPs, quality on target.axis)]
    regions: tuple
    target: Optional[float]
    epochs: int
    to_target: object = None        # evaluation.methods.Cost, or None
    eq_flops: Optional[float] = None
    eq_wall: Optional[float] = None
    tt_speedup: Optional[tuple] = None  # (FLOPs, wall, '<' when a bound)
    tt_total: Optional[tuple] = None    # the same at total cost (ticket sets: every ticket)
    fd_curve: Optional[list] = None     # [(cum wall, cum FLOPs, digits-FD)] (default: curve)
    axis: str = "digits_fd"             # the axis of ``curve`` and ``target`` (target.axis)
    total_curve: Optional[list] = None  # ``curve`` at total cost (ticket sets: all tickets)
    noise_like: Optional[float] = None
    final_n: Optional[int] = None       # images of the final quality (None: the curve's last)
    levels: tuple = ()                  # (level, Cost or None) of each fixed target.levels

    @property
    def total(self):
        """This method judged at total cost: a ticket set pays for every ticket."""
        c = self.total_curve or self.curve
        return replace(self, curve=c, to_target=cost_to_target(c, self.target)
                       if self.target is not None else None)

    @property
    def fd(self):
        return self.fd_curve or self.curve


def _result(r, c, fd, ref, target, axis, *, total=None, last=None, levels=()):
    """One method's numbers in one seed: r a report Row, c its curve on the target's axis, fd
    its digits-FD curve, ref the dense curve (target's axis), total ``c`` at total cost, last
    its last curve point. Final quality: its final samples' metric (sampling.n_samples images)
    where they were scored, else the curve's last point."""
    final = r.value is not None
    res = SeedResult(kind=r.kind, key=r.key, method=r.name,
                     quality=r.value if final else fd[-1][2],
                     valid=r.valid if final else (last or {}).get("valid"),
                     noise_like=r.noise_like if final else (last or {}).get("noise_like"),
                     final_n=r.final_n if final else None,
                     eb_epoch=r.eb_epoch, flops=r.critical.flops, wall=r.critical.wall_s,
                     total_flops=r.total.flops, vs_dense=r.vs_dense, macs=r.macs, curve=c,
                     regions=r.regions, target=target, epochs=r.epochs, fd_curve=fd, axis=axis,
                     total_curve=total,
                     to_target=cost_to_target(c, target) if target is not None else None,
                     levels=tuple((lv, cost_to_target(c, lv)) for lv in levels))
    if ref and r.kind != "dense":
        res = replace(res, eq_flops=equal_quality_speedup(
            [(f, v) for _, f, v in ref], c[-1][2], r.critical.flops), eq_wall=(
            equal_quality_speedup([(w, v) for w, _, v in ref], c[-1][2], r.critical.wall_s)))
    return res


def seed_result(exp, doc, cfg, *, dense_curve_doc=None):
    """{kind: SeedResult} of one pipeline run: final quality (last curve point), cost to the
    target, costs, fixed-budget and equal-quality speed-ups against the plain dense run."""
    rows, _ = collect(exp, doc, cfg)
    axis = target_axis(rows)
    views = curve_views(exp, doc, rows, axis)
    levels = cfg.target.levels if axis == "heldout" else ()
    ref_doc = dense_curve_doc or doc
    if ref_doc != doc:
        ref_rows, _ = collect(exp, ref_doc, cfg)
        ref = method_curves(exp, ref_doc, ref_rows[:1], axis)[ref_doc]
        target = ref_rows[0].target
    else:
        ref, target = views[doc].on_axis if doc in views else [], rows[0].target
    out = {}
    for r in rows:
        v = views.get(r.key)
        if v is not None:
            out[r.kind] = _result(r, v.on_axis, v.digits_fd, ref, target, axis,
                                  total=v.total, last=v.last, levels=levels)
    dense = out.get("dense")
    return {k: replace(res, tt_speedup=_tt_speedup(dense, res) if dense else None,
                       tt_total=_tt_speedup(dense, res.total) if dense else None)
            for k, res in out.items()}


def _tt_speedup(dense, res):
    """(FLOPs, wall, bound) speed-up to the target vs dense: dense's cost to the target over
    the method's; a method that never got there gives an upper bound (its whole cost)."""
    d = dense.to_target
    if d is None:
        return None
    if res.to_target is not None:
        return (d.flops / res.to_target.flops, d.wall_s / res.to_target.wall_s, "")
    last = res.curve[-1]  # the method's whole cost (at total cost too, for res.total)
    return (d.flops / last[1], d.wall_s / last[0], "<")


def _groups(results, variants):
    """(variant, row label, kind, the per-seed results of that kind) of every headline row."""
    for variant, label_suffix in variants:
        seeds = results.get(variant, [])
        for kind in PLAIN_KINDS:
            per = [s[kind] for s in seeds if kind in s]
            if per:
                name = per[0].method if kind != "dense" else "Dense"
                if kind == "taeb_plan":  # each seed plans its own regions
                    name = "TA-EB planned (regions per seed below)"
                yield variant, name + label_suffix, kind, per


def _tt(per, i, total=False):
    """Speed-ups to the target (FLOPs: i = 0, wall: 1) over seeds, and which are bounds
    (``total``: at total cost)."""
    vals = [p.tt_total if total else p.tt_speedup for p in per]
    vals = [v for v in vals if v]
    return [v[i] for v in vals], [v[2] for v in vals]


HEADLINE_COLUMNS = ("method", "seeds", "reached", "to_target_tflops_mean",
                    "to_target_tflops_ci95",
                    "tt_speedup_flops_mean", "tt_speedup_flops_ci95", "tt_speedup_wall_mean",
                    "tt_speedup_wall_ci95", "tt_speedup_total_flops_mean",
                    "tt_speedup_total_flops_ci95", "tt_speedup_upper_bound", "digits_fd_mean",
                    "digits_fd_ci95", "valid_mean", "valid_ci95", "noise_like_mean",
                    "noise_like_ci95", "eb_epoch_mean",
                    "eb_epoch_ci95", "train_tflops_mean", "train_tflops_ci95",
                    "vs_dense_flops_mean", "vs_dense_flops_ci95", "vs_dense_wall_mean",
                    "vs_dense_wall_ci95")


RATIO_COLUMNS = ("tt_speedup", "vs_dense")


def headline_data(results, variants):
    """The headline rows as numbers (HEADLINE_COLUMNS): mean and 95% half-width over seeds;
    cost ratios: geometric mean and its 95% interval [low, high]."""
    out = []
    for _, label, _, per in _groups(results, variants):
        row = {"method": label, "seeds": len(per),
               "reached": sum(p.to_target is not None for p in per)}
        cols = {"to_target_tflops": [p.to_target.flops / 1e12 for p in per if p.to_target],
                "tt_speedup_flops": _tt(per, 0)[0], "tt_speedup_wall": _tt(per, 1)[0],
                "tt_speedup_total_flops": _tt(per, 0, True)[0],
                "noise_like": [p.noise_like for p in per],
                "digits_fd": [p.quality for p in per], "valid": [p.valid for p in per],
                "eb_epoch": [p.eb_epoch for p in per],
                "train_tflops": [p.flops / 1e12 for p in per],
                "vs_dense_flops": [p.vs_dense[0] for p in per],
                "vs_dense_wall": [p.vs_dense[1] for p in per]}
        for col, vals in cols.items():
            if col.startswith(RATIO_COLUMNS) and len([v for v in vals if v]) >= MIN_SEEDS:
                # cost ratios multiply: geometric mean, and its interval as [low, high]
                g, lo, hi = geometric_interval([v for v in vals if v])
                row[f"{col}_mean"], row[f"{col}_ci95"] = g, [lo, hi]
                continue
            row[f"{col}_mean"], row[f"{col}_ci95"] = interval(vals)
            if len([v for v in vals if v is not None]) < MIN_SEEDS:
                row[f"{col}_ci95"] = None  # the page shows the values, not an interval
        row["tt_speedup_upper_bound"] = any(_tt(per, 0)[1])
        if row["tt_speedup_upper_bound"] or len(cols["tt_speedup_flops"]) < MIN_SEEDS:
            # an interval mixing values and bounds, or from one or two, would mislead
            row.update(tt_speedup_flops_ci95=None, tt_speedup_wall_ci95=None,
                       tt_speedup_total_flops_ci95=None)
        if any(_tt(per, 0, True)[1]):
            row["tt_speedup_total_flops_ci95"] = None
        out.append(row)
    return out


def _tt_cell(per, i, reference, total=False):
    if reference:
        return "1x (reference)"
    if total and not any(p.total_curve for p in per):
        return "same"
    vals, bounds = _tt(per, i, total)
    return fmt_ratios(vals, bounds=bounds)


def headline_rows(results, variants):
    """Markdown rows: the cost to reach the target first, then final quality and the fixed
    budget; mean ± 95% half-width over seeds."""
    lines = ["| Method | reached the target | cost to the target, TFLOPs | speed-up to the "
             "target vs dense, FLOPs | same, total FLOPs (every ticket) | same, wall-clock | "
             "final digits-FD | valid | noise-like | EB epoch | training TFLOPs | "
             "training vs dense, FLOPs | same, wall-clock |",
             "|" + "---|" * 13]
    for variant, label, kind, per in _groups(results, variants):
        ref = kind == "dense" and variant == "plain"
        reached = [p.to_target.flops / 1e12 for p in per if p.to_target]
        lines.append(
            f"| {label} | {len(reached)} of {len(per)} | {fmt_interval(reached)} | "
            f"{_tt_cell(per, 0, ref)} | {_tt_cell(per, 0, ref, total=True)} | "
            f"{_tt_cell(per, 1, ref)} | {fmt_interval([p.quality for p in per])} | "
            f"{fmt_interval([p.valid for p in per if p.valid is not None], '.0%')} | "
            f"{fmt_interval([p.noise_like for p in per if p.noise_like is not None], '.1%')} | "
            f"{fmt_interval([p.eb_epoch for p in per], '.1f')} | "
            f"{fmt_interval([p.flops / 1e12 for p in per])} | "
            f"{fmt_ratios([p.vs_dense[0] for p in per])} | "
            f"{fmt_ratios([p.vs_dense[1] for p in per])} |")
    return lines


def _ratio_verdict(both, word_if, what):
    """Cost ratios A / B at given levels: both [(A result, B result, level)], judged in logs
    (ratios multiply). Each crossing is known only to within one evaluation interval, so a
    ratio's resolution is half the range those two intervals allow, in logs; no smaller
    difference decides."""
    ratios, resolution = [], []
    for a, b, level in both:
        fa, fb = ([(f, q) for _, f, q in m.curve] for m in (a, b))
        (alo, ahi), (blo, bhi) = reach_bounds(fa, level), reach_bounds(fb, level)
        ratios.append(cost_to_reach(fa, level) / cost_to_reach(fb, level))
        resolution.append((math.log(ahi / blo) - math.log(alo / bhi)) / 2
                          if min(alo, blo) > 0 else float("inf"))
    res = sum(resolution) / len(resolution)
    v = verdict([math.log(r) for r in ratios], res)
    # per seed: A cheaper (+1) or dearer (-1) beyond that seed's resolution, else 0
    sides = [(math.log(r) < -e) - (math.log(r) > e) for r, e in zip(ratios, resolution)]
    margin = _margin(v, lambda m: f'x/÷ {math.exp(m):.2f}', GRID)
    return v, sides, (f"cost to {what} {word_if} = {fmt_ratios(ratios, suffix='')} in FLOPs "
                      f"(geometric mean{margin}; one evaluation interval alone allows "
                      f"x/÷ {math.exp(res):.2f})")


GRID = "evaluating more often (target.every)"
SEEDS_WORTH_QUOTING = 100  # beyond this, "about N seeds would decide" says only "none would"


def _margin(v, fmt=lambda m: f"{m:.2f}", finer="a finer measurement"):
    """'; margin M' of a verdict that had one (none from fewer than MIN_SEEDS seeds), and for
    one within noise what would decide it."""
    if math.isnan(v.margin):
        return ""
    text = f"; margin {fmt(v.margin)}"
    if v.word.endswith("(within noise)") and v.mean and v.n:
        if v.spread < abs(v.mean):  # the interval over seeds separates it; the floor does not
            return text + (f"; the floor, not the spread over seeds, is wider than the "
                           f"difference: {finer} would decide it, more seeds would not")
        # the interval shrinks as 1 / sqrt(seeds): about this many would separate this mean
        need = math.ceil(v.n * (v.spread / abs(v.mean)) ** 2)
        also = f" and {finer}" if v.floor >= abs(v.mean) else ""
        text += (f"; about {need} seeds{also} would decide a difference of this size"
                 if need <= SEEDS_WORTH_QUOTING else
                 f"; a difference this small would take over {SEEDS_WORTH_QUOTING} seeds to tell "
                 f"from none")
    return text


def _majority(pro, con, n):
    """A claim decided seed by seed: it holds when more than half the seeds are for it and
    none against, fails in the mirror case; otherwise it is inconclusive."""
    if pro and con:
        return "inconclusive (mixed)"
    if pro > n / 2:
        return "holds"
    if con > n / 2:
        return "does not hold"
    return "inconclusive (too few seeds decide)"


def per_seed_rows(results, names):
    """Markdown rows, one per seed run (``names``: their docs): the dense target and, for
    every method, its final digits-FD and whether (at what cost) it reached the target."""
    seeds = results.get("plain", [])
    kinds = [k for k in PLAIN_KINDS if any(k in s for s in seeds)]
    lines = ["| seed run | " + " | ".join(BY_KIND[k].label for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for name, s in zip(names, seeds):
        cells = []
        for k in kinds:
            r = s.get(k)
            if r is None:
                cells.append("–")
            elif k == "dense":
                cells.append(f"target {r.target:.4g} ({r.epochs} epochs)")
            elif r.to_target:
                cells.append(f"{r.quality:.2f}, reached at {r.to_target.flops / 1e12:.2f} "
                             f"TFLOPs")
            else:
                cells.append(f"{r.quality:.2f}, not reached")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _reach(res, level):
    """(cost to reach, level) of a result: the dense target (``level`` None), else its
    ``level``-th fixed level."""
    if level is None:
        return res.to_target, res.target
    lv, cost = res.levels[level]
    return cost, lv


def _cost_claim(name, pairs, word_if, level=None, how=""):
    """A claim "A costs less than B to reach the target" (``level``: the fixed level of that
    index instead): pairs [(A result, B result)]."""
    hit = [(_reach(a, level)[0] is not None, _reach(b, level)[0] is not None) for a, b in pairs]
    both = [(a, b, _reach(a, level)[1]) for (a, b), h in zip(pairs, hit) if all(h)]
    only_a, only_b = hit.count((True, False)), hit.count((False, True))
    what = "the target" if level is None else "that level"
    if both:
        v, sides, nums = _ratio_verdict(both, word_if, what)
        # every seed reached it with both: the interval over seeds decides; otherwise the
        # seeds where only one got there count for or against it, seed by seed
        word = v.word if len(both) == len(pairs) else _majority(
            only_a + sides.count(1), only_b + sides.count(-1), len(pairs))
    else:
        word = _majority(only_a, only_b, len(pairs)) if only_a or only_b else \
            f"inconclusive (neither reached {what})"
        nums = f"no seed where both reached {what}"
    nums += f" ({n_seeds(len(both))} where both reached it; only " \
            f"the first: {only_a}, only the second: {only_b})"
    at = "the dense target" if level is None else \
        f"the fixed level {_reach(pairs[0][0], level)[1]:.4g}, set before the runs"
    return (f"{name}, at equal quality ({at}){how}", word, nums)


def _quality_claim(name, pairs, label):
    """The same claim at equal cost: each method's quality at one critical-path FLOPs budget,
    read off its curve on the target's axis (the held-out loss: a ratio, judged in logs;
    digits-FD: a difference): the smaller of the two final costs, or, when one method has no
    network by then (train-prune-finetune pays for the whole dense run first), its first
    evaluation's cost (the other keeps the quality it stopped at)."""
    d = []
    for a, b in pairs:
        cost = max(min(a.curve[-1][1], b.curve[-1][1]), max(a.curve[0][1], b.curve[0][1]))
        qa = quality_at([(f, q) for _, f, q in a.curve], cost)
        qb = quality_at([(f, q) for _, f, q in b.curve], cost)
        if qa is not None and qb is not None:
            d.append((qa, qb))
    if not d:
        return (f"{name}, at equal cost", "inconclusive (no common cost)", "–")
    if pairs[0][0].axis == "heldout":
        v = verdict([math.log(qa / qb) for qa, qb in d], 0.0)
        nums = (f"held-out loss {label.replace(' - ', ' / ')} at the same training FLOPs = "
                f"{fmt_ratios([qa / qb for qa, qb in d], '.3f', '')} (geometric mean"
                f"{_margin(v, lambda m: f'x/÷ {math.exp(m):.3f}') or '; too few seeds'})")
    else:
        v = verdict([qa - qb for qa, qb in d], 0.0)
        nums = (f"digits-FD {label} at the same training FLOPs = "
                f"{fmt_interval([qa - qb for qa, qb in d])} ({_margin(v)[2:] or 'too few seeds'})")
    return (f"{name}, at equal cost", v.word, nums)


def _final_quality_claim(name, pairs, label):
    """A claim on quality alone: each method's final digits-FD (its final samples), each at
    its own budget; paired within a seed (one noise set per seed)."""
    v = verdict([a.quality - b.quality for a, b in pairs], 0.0)
    n = pairs[0][0].final_n
    return (f"{name}, on quality at each one's budget", v.word,
            f"final digits-FD{f' ({n} images)' if n else ''} {label} = "
            f"{fmt_interval([a.quality - b.quality for a, b in pairs])}"
            f" ({_margin(v)[2:] or 'too few seeds'})")


def null_controls(pairs):
    """Seeds whose planned TA-EB is one region (the planner chose a uniform ticket): no
    evidence for or against planned regions, only a control of the noise between two runs of
    near-identical networks. Returns (the other pairs, the controls' final digits-FD gaps)."""
    plans = [(a, b) for a, b in pairs if len(a.regions) > 1]
    return plans, [a.quality - b.quality for a, b in pairs if len(a.regions) <= 1]


CLAIMS = (("eb", "tpf", "(b) the EB ticket reaches train-prune-finetune's quality at a fraction "
           "of its cost", "EB / TPF"),
          ("taeb", "eb", "(c) TA-EB (hand-set regions) beats the uniform EB ticket",
           "TA-EB / EB"),
          ("taeb_plan", "eb", "(c') TA-EB with planned regions beats the uniform EB ticket",
           "planned TA-EB / EB"))


def verdicts(results, noise_floor):
    """The paper's claims, each with its numbers and a word: holds / does not hold /
    inconclusive (and what would decide it). Cost claims at the dense target and at each fixed
    level; ticket sets also at total FLOPs (every ticket counted: the uniform EB ticket, capped
    by the same FLOPs budget, is their equal-total-FLOPs control); quality at equal cost; and
    for (b), whose cost lines follow from the accounting, final quality."""
    plain = results.get("plain", [])
    out = [_earlybird_claim(plain)]
    for a_kind, b_kind, name, ratio_name in CLAIMS:
        pairs = [(s[a_kind], s[b_kind]) for s in plain if a_kind in s and b_kind in s]
        controls = []
        if a_kind == "taeb_plan":
            pairs, controls = null_controls(pairs)
        diff_name = ratio_name.replace(" / ", " - ")
        if pairs:
            n_levels = min(len(a.levels) for a, _ in pairs)
            cost = [_cost_claim(name, pairs, ratio_name, level)
                    for level in [None, *range(n_levels)]]
            if a_kind == "eb":
                # train-prune-finetune pays for the whole dense run first: its cost lines
                # follow from that accounting, so quality alone is judged too
                cost = [(c, w, n + " (follows from the accounting: train-prune-finetune "
                         "carries the whole dense run)") for c, w, n in cost]
            if a_kind.startswith("taeb"):
                totals = [(a.total, b.total) for a, b in pairs]
                cost += [_cost_claim(name, totals, ratio_name, level,
                                     ", total FLOPs (every ticket counted)")
                         for level in [None, *range(n_levels)]]
            cost.append(_quality_claim(name, pairs, diff_name))
            if a_kind == "eb":
                cost.append(_final_quality_claim(name, pairs, diff_name))
            out += cost
        if controls:
            out.append((f"{name}: null controls", "not evidence",
                        f"{len(controls)} seed(s) planned a single region (a uniform ticket); "
                        f"their final digits-FD gap to the uniform EB ticket, "
                        f"{fmt_values(controls)}, is the noise between two near-identical runs"))
    out += _speed_verdicts(plain, results.get("speed", []), noise_floor)
    return out


def _earlybird_claim(plain):
    fr = [s["eb"].eb_epoch / s["dense"].epochs if "eb" in s and "dense" in s and
          s["eb"].eb_epoch is not None else None for s in plain]
    if not fr or any(f is None for f in fr):
        return ("(a) the EB epoch comes early", "does not hold",
                "no EB epoch was found for every seed")
    v = verdict([f - 0.5 for f in fr], 0.0)
    return ("(a) the EB epoch comes early (in the first half of the dense run)", v.word,
            f"EB epoch at {fmt_interval(fr)} of the dense run's epochs (to one half"
            f"{_margin(v)})")


def _speed_verdicts(plain, speed, noise_floor):
    """SpeeD is orthogonal: each method + SpeeD trains better than the method alone at the
    same budget (same epochs; SpeeD costs no FLOPs of its own)."""
    out = []
    for kind in ("dense", "eb", "taeb"):
        pairs = [(a[kind], b[kind]) for a, b in zip(plain, speed) if kind in a and kind in b]
        if not pairs:
            continue
        d = [b.quality - a.quality for a, b in pairs]
        v = verdict(d, noise_floor)
        name = BY_KIND[kind].label
        out.append((f"(SpeeD) {name} + SpeeD trains better than {name} alone at the same "
                    f"budget", v.word, f"digits-FD with SpeeD - without = {fmt_interval(d)} "
                    f"({_margin(v)[2:] or 'too few seeds'})"))
    return out
