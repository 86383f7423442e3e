"""Training cost along a method's curve: cumulative wall-clock and FLOPs at each evaluated
epoch, on the method's critical path (the dense prefix it was pruned after, plus its own
fine-tuning; TA-EB: the slowest of its tickets so far), and the cost to reach a quality."""
from core.layout import Layout, region_doc
from core.runlog import read_costs
from evaluation.curves import read_curve
from evaluation.evidence import cost_to_reach


def cumulative(costs, offset=(0.0, 0)):
    """{epoch: (wall s, FLOPs)} summed up to and including each epoch, after ``offset``."""
    out, wall, flops = {}, offset[0], offset[1]
    for c in sorted(costs, key=lambda c: c["epoch"]):
        wall += c["wall_s"] + c.get("earlybird_s", 0.0)
        flops += c.get("train_flops", 0)
        out[c["epoch"]] = (wall, flops)
    return out


def method_curves(exp, doc, rows):
    """{row key: [(cum wall, cum FLOPs, quality)]} along training, on each method's critical
    path (TA-EB: the dense prefix plus its slowest ticket's cost so far)."""
    L = Layout(exp)
    dense_costs = read_costs(L.costs(doc))
    out = {}
    for r in rows:
        curve = read_curve(L.curve_file(r["key"]))
        if not curve:
            continue
        if r["kind"] == "dense":
            cum = cumulative(dense_costs)
        else:
            pre_epoch = None if r["kind"] == "tpf" else r["eb_epoch"]
            pre = cumulative(dense_costs)
            offset = pre[max(pre)] if pre_epoch is None else pre.get(pre_epoch, (0.0, 0))
            if r["kind"].startswith("taeb"):
                tset = r.get("set", doc)
                per = [cumulative(read_costs(L.costs(region_doc(tset, rng))))
                       for rng in r["regions"]]
                cum = {e: (offset[0] + max(p[e][0] for p in per),
                           offset[1] + max(p[e][1] for p in per))
                       for e in per[0] if all(e in p for p in per)}
            else:
                cum = cumulative(read_costs(L.costs(r["key"])), offset)
        out[r["key"]] = [(cum[p["epoch"]][0], cum[p["epoch"]][1], p["value"])
                         for p in curve if p["epoch"] in cum]
    return out


def cost_to_target(curve, target):
    """(FLOPs, wall s) at which a method's curve [(wall, FLOPs, quality)] first reaches
    ``target`` (interpolated between evaluations), or None."""
    flops = cost_to_reach([(f, q) for _, f, q in curve], target)
    wall = cost_to_reach([(w, q) for w, _, q in curve], target)
    return None if flops is None else (flops, wall)
