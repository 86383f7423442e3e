"""Training cost along a method's curve: cumulative wall-clock and FLOPs at each evaluated
epoch, on the method's critical path (the dense prefix it carries, evaluation/methods.py, plus
its own fine-tuning; TA-EB: the slowest of its tickets so far), and the cost to reach a
quality."""
from core.layout import Layout, region_doc
from core.runlog import read_costs, record_cost
from evaluation.curves import read_curve
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


def _cumulative_of(L, row, dense_costs, total=False):
    """{epoch: (wall, FLOPs)} of ``row``'s own epochs, on its critical path (``total``: a
    ticket set's tickets summed)."""
    if row.kind == "dense":
        return cumulative(dense_costs)
    offset = row.method.prefix_cost(dense_costs, row.eb_epoch)
    if not row.method.tickets:
        return cumulative(read_costs(L.costs(row.key)), offset)
    per = [cumulative(read_costs(L.costs(region_doc(row.ticket_set, rng))))
           for rng in row.regions]
    across = sum if total else max
    return {e: (offset[0] + across(p[e][0] for p in per), offset[1] + across(p[e][1] for p in per))
            for e in per[0] if all(e in p for p in per)}


def method_curves(exp, doc, rows, axis="digits_fd", total=False):
    """{row key: [(cum wall, cum FLOPs, quality)]} along training, on each method's critical
    path (TA-EB: the dense prefix plus its slowest ticket's cost so far; ``total``: plus every
    ticket's); quality read from ``axis`` (evaluation/curves.py's AXES)."""
    L = Layout(exp)
    dense_costs = read_costs(L.costs(doc))
    out = {}
    for r in rows:
        curve = read_curve(L.curve_file(r.key), axis)
        if curve:
            cum = _cumulative_of(L, r, dense_costs, total)
            out[r.key] = [(*cum[p["epoch"]], p["value"]) for p in curve if p["epoch"] in cum]
    return out


def cost_to_target(curve, target):
    """Cost(wall s, FLOPs) at which a method's curve [(wall, FLOPs, quality)] first reaches
    ``target`` (interpolated between evaluations), or None."""
    flops = cost_to_reach([(f, q) for _, f, q in curve], target)
    wall = cost_to_reach([(w, q) for w, _, q in curve], target)
    return None if flops is None else Cost(wall, flops)
