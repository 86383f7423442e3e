"""The arithmetic of the evidence (no I/O): equal-quality speed-ups, spreads over seeds and
verdicts. Quality is a distance (digits-FD or FID): lower is better.

Equal-quality speed-up (the paper's definition): the dense run's cost to first reach a method's
final quality, divided by the method's own cost. The dense cost is interpolated linearly
between evaluations; a dense run that never gets there gives a lower bound (its whole cost).
"""
import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Speedup:
    value: float
    lower_bound: bool = False   # dense never reached the quality: the speed-up is at least this

    def text(self, digits=2):
        return f"{'> ' if self.lower_bound else ''}{self.value:.{digits}f}x"


def _first_reach(curve, target):
    """Index of the first evaluation of ``curve`` [(cost, quality)] at or below ``target``."""
    return next((i for i, (_, q) in enumerate(curve) if q <= target), None)


def cost_to_reach(curve, target):
    """curve: [(cost, quality)] in training order. The cost at which quality first reaches
    ``target`` (<=), linearly interpolated between evaluations; None if it never does. A curve
    that dips below and rises again counts its first crossing."""
    i = _first_reach(curve, target)
    if i is None:
        return None
    cost, q = curve[i]
    if not i or curve[i - 1][1] == q:
        return float(cost)
    c0, q0 = curve[i - 1]
    return float(c0 + (cost - c0) * (q0 - target) / (q0 - q))


def reach_bounds(curve, target):
    """(lo, hi): the evaluation interval in which ``curve`` [(cost, quality)] first reaches
    ``target``, the resolution of cost_to_reach (between two evaluations the curve is unknown);
    None if it never does. A crossing at the first evaluation gets an interval as long as the
    one after it (evaluations are evenly spaced in epochs), not below zero."""
    i = _first_reach(curve, target)
    if i is None:
        return None
    cost = curve[i][0]
    if i:
        return float(curve[i - 1][0]), float(cost)
    step = curve[1][0] - cost if len(curve) > 1 else 0.0
    return float(max(cost - step, 0.0)), float(cost)


def equal_quality_speedup(dense_curve, target, method_cost):
    """Speedup of a method of final quality ``target`` and cost ``method_cost`` over dense."""
    if method_cost <= 0:
        raise ValueError("a method's cost must be positive")
    reach = cost_to_reach(dense_curve, target)
    if reach is None:
        return Speedup(dense_curve[-1][0] / method_cost, lower_bound=True)
    return Speedup(reach / method_cost)


def mean_std(values):
    """(mean, sample std) of a list; std 0 for one value; (None, None) for none."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def t_quantile(n):
    """The two-sided 95% Student-t quantile for n seeds (n - 1 degrees of freedom)."""
    from scipy.stats import t
    return float(t.ppf(0.975, n - 1))


def interval(values):
    """(mean, half-width of the 95% Student-t interval of the mean) over seeds; half-width
    None for one seed; (None, None) for none."""
    vals = [v for v in values if v is not None]
    m, s = mean_std(vals)
    if m is None:
        return None, None
    if len(vals) < 2:
        return m, None
    return m, t_quantile(len(vals)) * s / math.sqrt(len(vals))


MIN_SEEDS = 3  # no interval, and no verdict, from fewer values


def fmt_values(values, spec=".2f", suffix="", bounds=None):
    """Per-seed values as they are, 'a / b / c' (``bounds``: per value, '<' marks an upper
    bound, '' a value)."""
    bounds = bounds or [""] * len(values)
    return " / ".join(f"{b}{v:{spec}}{suffix}".replace("< ", "<") for v, b in
                      zip(values, bounds) if v is not None)


def fmt_interval(values, spec=".2f", suffix=""):
    """'mean ± half-width' of the 95% interval over seeds; with fewer than MIN_SEEDS values,
    the values themselves (an interval from one or two seeds would say nothing)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if len(vals) < MIN_SEEDS:
        return fmt_values(vals, spec, suffix)
    m, h = interval(vals)
    return f"{m:{spec}}{suffix} ± {h:{spec}}"


def geometric_interval(ratios):
    """(geometric mean, low, high) of ratios over seeds: the 95% Student-t interval of the
    mean log ratio, exponentiated (cost ratios multiply, so they are averaged in logs)."""
    m, h = interval([math.log(r) for r in ratios])
    return math.exp(m), math.exp(m - h), math.exp(m + h)


def fmt_ratios(ratios, spec=".2f", suffix="x", bounds=None):
    """Cost ratios over seeds: the geometric mean with its 95% interval; the per-seed values
    where there are fewer than MIN_SEEDS or any of them is a bound (never one number made of
    values and bounds)."""
    vals = [r for r in ratios if r is not None]
    if not vals:
        return "–"
    if len(vals) < MIN_SEEDS or any(bounds or []):
        return fmt_values(vals, spec, suffix, bounds)
    g, lo, hi = geometric_interval(vals)
    return f"{g:{spec}}{suffix} [{lo:{spec}}, {hi:{spec}}]"


def quality_at(curve, cost):
    """Quality of a curve [(cost, quality)] at ``cost``, interpolated between evaluations; a
    curve that ended earlier (it reached its target) keeps its last quality; None before the
    curve's first evaluation."""
    if not curve or cost < curve[0][0]:
        return None
    prev = None
    for c, q in curve:
        if c >= cost:
            if prev is None or c == prev[0]:
                return float(q)
            c0, q0 = prev
            return float(q0 + (q - q0) * (cost - c0) / (c - c0))
        prev = (c, q)
    return float(curve[-1][1])


def n_seeds(n):
    """'1 seed', '3 seeds'."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


@dataclass(frozen=True)
class Verdict:
    word: str            # holds | does not hold | inconclusive (within noise)
    mean: float
    margin: float
    n: int = 0           # the values it was decided from
    spread: float = float("nan")  # the half-width of the mean's 95% interval
    floor: float = float("nan")   # the noise floor (margin: the larger of the two)

    def text(self):
        return f"**{self.word}**"


def verdict(diffs, noise_floor):
    """diffs: per-seed differences, negative where the claim holds (e.g. quality of A minus
    quality of B for "A beats B"). The margin is the larger of the metric's noise floor and
    the half-width of the mean's 95% Student-t interval over seeds; a mean beyond it decides,
    otherwise it is within noise. Fewer than MIN_SEEDS values decide nothing."""
    vals = [d for d in diffs if d is not None]
    m, h = interval(vals)
    if m is None:
        return Verdict("inconclusive (no data)", float("nan"), float("nan"))
    if len(vals) < MIN_SEEDS:
        return Verdict(f"inconclusive ({n_seeds(len(vals))}; "
                       f"{MIN_SEEDS} or more decide)", m, float("nan"))
    margin = max(noise_floor, h or 0.0)
    word = "holds" if m < -margin else "does not hold" if m > margin else \
        "inconclusive (within noise)"
    return Verdict(word, m, margin, len(vals), h or 0.0, noise_floor)


def best_equal_ratio(ratio_macs, target_macs):
    """The uniform pruning ratio whose MACs per image are closest to (and at least as high as,
    when possible) ``target_macs``: ratio_macs {ratio: MACs}."""
    above = {r: m for r, m in ratio_macs.items() if m >= target_macs}
    pool = above or ratio_macs
    return min(pool, key=lambda r: abs(pool[r] - target_macs))


def sampling_average_macs(tickets, sequence):
    """MACs per image averaged over the timesteps a sampler visits: tickets [(lo, hi, macs)]."""
    def macs_at(t):
        return next(m for lo, hi, m in tickets if lo <= t < hi)
    return sum(macs_at(t) for t in sequence) / len(sequence)


def fraction(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


def rank_agreement(xs, ys):
    """Spearman's rank correlation of two paired lists (1: the same order)."""
    from scipy.stats import spearmanr
    return float(spearmanr(xs, ys).statistic)
