"""Training cost along a method's curve: cumulative wall-clock and FLOPs at each evaluated
epoch, on the method's critical path (the dense prefix it carries, evaluation/methods.py, plus
its own fine-tuning; TA-EB: the slowest of its tickets so far), and the cost to reach a
quality."""
from dataclasses import dataclass

from core.layout import Layout, region_doc
from core.runlog import read_costs, record_cost
from evaluation.curves import on_axis, read_curve
from evaluation.evidence import cost_to_reach
from evaluation.methods import Cost


def cumulative(costs, offset=(0.0, 0)):
    """{epoch: (wall s, FLOPs)} summed up to and including each epoch, after ``offset``."""
    out, wall, flops = {}, offset[0], offset[1]
    for c in sorted(costs, key=lambda c: c["epoch"]):
        w, f = record_cost(c)
        wall, flops = wall + w, flops + f
        out[c["epoch"]] = (wall, flops)
    return out


def _cumulative_of(L, row, dense_costs):
    """({epoch: (wall, FLOPs)} of ``row``'s own epochs on its critical path, the same at total
    cost): a ticket set's slowest ticket so far, and its tickets summed; each cost file read
    once."""
    if row.kind == "dense":
        cum = cumulative(dense_costs)
        return cum, cum
    offset = row.method.prefix_cost(dense_costs, row.eb_epoch)
    if not row.method.tickets:
        cum = cumulative(read_costs(L.costs(row.key)), offset)
        return cum, cum
    per = [cumulative(read_costs(L.costs(region_doc(row.ticket_set, rng))))
           for rng in row.regions]
    epochs = [e for e in per[0] if all(e in p for p in per)]
    return tuple({e: (offset[0] + across(p[e][0] for p in per),
                      offset[1] + across(p[e][1] for p in per)) for e in epochs}
                 for across in (max, sum))


def _on(cum, points):
    return [(*cum[p["epoch"]], p["value"]) for p in points if p["epoch"] in cum]


def method_curves(exp, doc, rows, axis="digits_fd"):
    """{row key: [(cum wall, cum FLOPs, quality)]} along training, on each method's critical
    path (TA-EB: the dense prefix plus its slowest ticket's cost so far); quality read from
    ``axis`` (evaluation/curves.py's AXES)."""
    return {k: v.on_axis for k, v in curve_views(exp, doc, rows, axis).items()}


@dataclass(frozen=True)
class CurveViews:
    """One method's curve, read once, seen as the study needs it."""
    on_axis: list       # [(cum wall, cum FLOPs, quality on the axis)], critical path
    digits_fd: list     # the same with digits-FD
    total: list         # ``on_axis`` at total cost (a ticket set: every ticket)
    last: dict          # the curve's last point as stored (valid, noise-like, ...)


def curve_views(exp, doc, rows, axis="digits_fd"):
    """{row key: CurveViews} of every row with a curve on ``axis``; each curve file and each
    costs.jsonl is read once."""
    L = Layout(exp)
    dense_costs = read_costs(L.costs(doc))
    out = {}
    for r in rows:
        points = read_curve(L.curve_file(r.key))
        on = on_axis(points, axis)
        if on:
            crit, total = _cumulative_of(L, r, dense_costs)
            out[r.key] = CurveViews(_on(crit, on), _on(crit, points), _on(total, on),
                                    points[-1])
    return out


def cost_to_target(curve, target):
    """Cost(wall s, FLOPs) at which a method's curve [(wall, FLOPs, quality)] first reaches
    ``target`` (interpolated between evaluations), or None."""
    flops = cost_to_reach([(f, q) for _, f, q in curve], target)
    wall = cost_to_reach([(w, q) for w, _, q in curve], target)
    return None if flops is None else Cost(wall, flops)
