"""The evidence study (docs/evidence.md): the pipeline for several seeds, quality along
training for every method on one fixed noise set, equal-quality speed-ups in FLOPs and in
wall-clock, the metric's own noise floor, and a verdict per claim of the paper.

Each seed is one pipeline run (``{doc}_s{seed}``; with SpeeD also ``{doc}_speed_s{seed}``);
finished stages are reused, so an interrupted study continues where it stopped.
"""
from evaluation.curves import read_curve
from evaluation.evidence import equal_quality_speedup, fmt_mean_std, mean_std, verdict
from core.layout import Layout, region_doc
from evaluation.report import collect
from core.runlog import read_costs

PLAIN_KINDS = ("dense", "eb", "tpf", "eqflops", "taeb")


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
            if r["kind"] == "taeb":
                per = [cumulative(read_costs(L.costs(region_doc(doc, rng))))
                       for rng in r["regions"]]
                cum = {e: (offset[0] + max(p[e][0] for p in per),
                           offset[1] + max(p[e][1] for p in per))
                       for e in per[0] if all(e in p for p in per)}
            else:
                cum = cumulative(read_costs(L.costs(r["key"])), offset)
        out[r["key"]] = [(cum[p["epoch"]][0], cum[p["epoch"]][1], p["value"])
                         for p in curve if p["epoch"] in cum]
    return out


def seed_result(exp, doc, *, sampling_steps, skip_type, dense_curve_doc=None):
    """Per-method numbers of one pipeline run: final quality (last curve point), costs,
    fixed-budget and equal-quality speed-ups against the plain dense run's curve."""
    rows, _ = collect(exp, doc, sampling_steps=sampling_steps, skip_type=skip_type)
    curves = method_curves(exp, doc, rows)
    ref_doc = dense_curve_doc or doc
    if ref_doc != doc:
        ref_rows, _ = collect(exp, ref_doc, sampling_steps=sampling_steps, skip_type=skip_type)
        ref = method_curves(exp, ref_doc, ref_rows[:1])[ref_doc]
    else:
        ref = curves.get(doc, [])
    out = {}
    for r in rows:
        c = curves.get(r["key"])
        if not c:
            continue
        q = c[-1][2]
        res = {"method": r["method"], "kind": r["kind"], "quality": q,
               "eb_epoch": r["eb_epoch"], "flops": r["critical_flops"],
               "wall": r["critical_s"], "total_flops": r["total_flops"],
               "vs_dense_flops": r["vs_dense_flops"], "vs_dense_wall": r["vs_dense_wall"],
               "vs_tpf_flops": r["vs_tpf_flops"], "vs_tpf_wall": r["vs_tpf_wall"],
               "macs": r["macs"], "curve": c}
        # the plain dense run is the reference (1x by definition); dense + SpeeD is not
        if ref and (r["kind"] != "dense" or ref_doc != doc):
            res["eq_flops"] = equal_quality_speedup([(f, v) for _, f, v in ref], q,
                                                    r["critical_flops"])
            res["eq_wall"] = equal_quality_speedup([(w, v) for w, _, v in ref], q,
                                                   r["critical_s"])
        out[r["kind"]] = res
    return out


def _speedup_cell(values, reference=False):
    if reference:
        return "1x (reference)"
    if not values:
        return "–"
    m, s = mean_std([v.value for v in values])
    lower = any(v.lower_bound for v in values)
    spread = f" ± {s:.2f}" if len(values) > 1 else ""
    return f"{'> ' if lower else ''}{m:.2f}x{spread}"


LABELS = {"dense": "Dense", "eb": "EB ticket", "tpf": "Train-prune-finetune",
          "eqflops": "Uniform EB ticket, TA-EB's fine-tuning FLOPs", "taeb": "TA-EB"}


HEADLINE_COLUMNS = ("method", "seeds", "digits_fd_mean", "digits_fd_std", "eb_epoch_mean",
                    "eb_epoch_std", "eq_speedup_flops_mean", "eq_speedup_flops_std",
                    "eq_speedup_flops_lower_bound", "eq_speedup_wall_mean",
                    "eq_speedup_wall_std", "eq_speedup_wall_lower_bound",
                    "vs_dense_flops_mean", "vs_dense_flops_std", "vs_dense_wall_mean",
                    "vs_dense_wall_std", "vs_tpf_flops_mean", "vs_tpf_flops_std",
                    "vs_tpf_wall_mean", "vs_tpf_wall_std")


def _headline_groups(results, variants):
    """(variant, row label, kind, the per-seed results of that kind) of every headline row."""
    for variant, label_suffix in variants:
        seeds = results.get(variant, [])
        for kind in PLAIN_KINDS:
            per = [s[kind] for s in seeds if kind in s]
            if per:
                name = per[0]["method"] if kind != "dense" else "Dense"
                yield variant, name + label_suffix, kind, per


def headline_data(results, variants):
    """The headline table's rows as numbers (HEADLINE_COLUMNS): mean and std over seeds."""
    out = []
    for _, label, _, per in _headline_groups(results, variants):
        row = {"method": label, "seeds": len(per)}
        for col, key in (("digits_fd", "quality"), ("eb_epoch", "eb_epoch"),
                         ("vs_dense_flops", "vs_dense_flops"), ("vs_dense_wall", "vs_dense_wall"),
                         ("vs_tpf_flops", "vs_tpf_flops"), ("vs_tpf_wall", "vs_tpf_wall")):
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std([p[key] for p in per])
        for col, key in (("eq_speedup_flops", "eq_flops"), ("eq_speedup_wall", "eq_wall")):
            vals = [p[key] for p in per if key in p]
            row[f"{col}_mean"], row[f"{col}_std"] = mean_std([v.value for v in vals])
            row[f"{col}_lower_bound"] = any(v.lower_bound for v in vals) if vals else None
        out.append(row)
    return out


def headline_rows(results, variants):
    """Markdown rows, mean ± std over seeds: results {variant: [per-seed result dicts]}."""
    lines = ["| Method | digits-FD | EB epoch | equal-quality speed-up vs dense, FLOPs | "
             "same, wall-clock | fixed budget vs dense, FLOPs / wall | "
             "vs train-prune-finetune, FLOPs / wall |", "|" + "---|" * 7]
    for variant, label, kind, per in _headline_groups(results, variants):
        ref = kind == "dense" and variant == "plain"
        lines.append(
            f"| {label} | {fmt_mean_std([p['quality'] for p in per])} | "
            f"{fmt_mean_std([p['eb_epoch'] for p in per], '.1f')} | "
            f"{_speedup_cell([p['eq_flops'] for p in per if 'eq_flops' in p], ref)} | "
            f"{_speedup_cell([p['eq_wall'] for p in per if 'eq_wall' in p], ref)} | "
            f"{fmt_mean_std([p['vs_dense_flops'] for p in per], '.2f', 'x')} / "
            f"{fmt_mean_std([p['vs_dense_wall'] for p in per], '.2f', 'x')} | "
            f"{fmt_mean_std([p['vs_tpf_flops'] for p in per], '.2f', 'x')} / "
            f"{fmt_mean_std([p['vs_tpf_wall'] for p in per], '.2f', 'x')} |")
    return lines


def verdicts(results, noise_floor, dense_epochs):
    """The paper's claims, each with its numbers and a word: holds / does not hold /
    inconclusive (within noise)."""
    plain = results.get("plain", [])
    out = []
    fr = [s["eb"]["eb_epoch"] / dense_epochs if s.get("eb", {}).get("eb_epoch") is not None
          else None for s in plain]
    if any(f is None for f in fr) or not fr:
        out.append(("(a) the EB epoch comes early", "does not hold",
                    "no EB epoch was found for every seed"))
    else:
        v = verdict([f - 0.5 for f in fr], 0.0)
        out.append(("(a) the EB epoch comes early (in the first half of the dense run)",
                    v.word, f"EB epoch at {fmt_mean_std(fr, '.2f')} of the dense run"))
    pairs = [(s["eb"], s["tpf"]) for s in plain if "eb" in s and "tpf" in s]
    if pairs:
        v = verdict([e["quality"] - t["quality"] for e, t in pairs], noise_floor)
        cost = [e["flops"] / t["flops"] for e, t in pairs]
        word = "does not hold" if v.word == "does not hold" else (
            "holds" if all(c < 1 for c in cost) else "does not hold")
        out.append(("(b) the EB ticket reaches train-prune-finetune's quality at a fraction "
                     "of its cost", word,
                     f"digits-FD EB - TPF = {fmt_mean_std([e['quality'] - t['quality'] for e, t in pairs])} "
                     f"(margin {v.margin:.2f}); cost EB / TPF = {fmt_mean_std(cost, '.2f')} "
                     f"in FLOPs"))
    pairs = [(s["taeb"], s["eqflops"]) for s in plain if "taeb" in s and "eqflops" in s]
    if pairs:
        d = [a["quality"] - b["quality"] for a, b in pairs]
        v = verdict(d, noise_floor)
        macs = fmt_mean_std([a["macs"] / b["macs"] for a, b in pairs], ".2f")
        out.append(("(c) TA-EB beats a uniform EB ticket of equal cost", v.word,
                    f"digits-FD TA-EB - uniform = {fmt_mean_std(d)} (margin {v.margin:.2f}); "
                    f"sampling MACs TA-EB / uniform = {macs}; equal fine-tuning FLOPs"))
    out += _speed_verdicts(plain, results.get("speed", []), noise_floor)
    return out


def _speed_verdicts(plain, speed, noise_floor):
    """SpeeD is orthogonal: each method + SpeeD trains better than the method alone at the
    same budget (same epochs; SpeeD costs no FLOPs of its own)."""
    out = []
    for kind in ("dense", "eb", "taeb"):
        pairs = [(a[kind], b[kind]) for a, b in zip(plain, speed) if kind in a and kind in b]
        if not pairs:
            continue
        d = [b["quality"] - a["quality"] for a, b in pairs]
        v = verdict(d, noise_floor)
        name = LABELS[kind]
        out.append((f"(SpeeD) {name} + SpeeD trains better than {name} alone at the same "
                    f"budget", v.word, f"digits-FD with SpeeD - without = {fmt_mean_std(d)} "
                    f"(margin {v.margin:.2f})"))
    return out

