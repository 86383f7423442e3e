"""The results report (docs/design.md, step 8): one row per method found under {exp}, in the shape
of the paper's tables, with training time as critical path and total, and figures.

It reads what the pipeline and the shell scripts write (names from core/layout.py): the
dense run {doc}, EB tickets {doc}_eb_{p} (fine-tuned from ckpt_ep{EB}), train-prune-finetune
runs {doc}_tpf_{p} (fine-tuned from the last epoch), the TA-EB manifest, and each method's
sample metric.
"""
import json
import os

import yaml

from core.checkpoint import load_checkpoint
from core.layout import Layout, plan_set, region_doc, sample_grid_of, taeb_name
from core.runlog import read_costs
from utils.errors import UserError
from utils.io import atomic_write_text


def _metric_json(layout, method):
    path = layout.metric_file(method)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _metric(layout, method, m=None):
    """(name, value) of a method's sample metric file (already read: ``m``), or None."""
    m = _metric_json(layout, method) if m is None else m
    if "fid" in m:
        return ("FID", m["fid"])
    if "digits_fd" in m:
        return ("digits-FD", m["digits_fd"])
    return None


def _arch_cost(ckpt_path):
    """(params, MACs per image, EB epoch or None, pruning ratio or None) of a checkpoint's
    network (from its pruning metadata when present)."""
    c = load_checkpoint(ckpt_path)
    p = c.get("pruning") or {}
    if p.get("params") is not None:
        return p["params"], p["macs"], p.get("epoch"), p.get("ratio")
    from models.pruning import count_params_macs
    from core.checkpoint import build_model
    model = build_model(c["model_args"], c.get("pruning"))
    params, macs = count_params_macs(model, c["model_args"])
    return params, macs, None, None


def _cost(costs, upto=None):
    """(wall-clock seconds, training FLOPs) of the epochs <= upto (online early-bird time is
    part of the wall-clock; FLOPs count training steps only)."""
    sel = [c for c in costs if upto is None or c["epoch"] <= upto]
    return (sum(c["wall_s"] + c.get("earlybird_s", 0.0) for c in sel),
            sum(c.get("train_flops", 0) for c in sel))


def _row(method, *, kind, key, params, macs, eb, epochs, critical, total, layout):
    """critical / total: (wall s, FLOPs) pairs."""
    m = _metric_json(layout, key)  # read once: the metric and the valid share
    return {"method": method, "kind": kind, "key": key, "params": params, "macs": macs,
            "eb_epoch": eb, "epochs": epochs, "critical_s": critical[0], "total_s": total[0],
            "critical_flops": critical[1], "total_flops": total[1],
            "metric": _metric(layout, key, m), "valid": m.get("valid")}


def _finetune_row(layout, kind, *, ratio, name, dense_costs, notes):
    from core.layout import RUN_KINDS
    label = RUN_KINDS[kind]
    ckpt = layout.latest_checkpoint(name)
    costs = read_costs(layout.costs(name))
    if not os.path.isfile(ckpt) or not costs:
        notes.append(f"{label} at p={ratio:g}: fine-tuning has not run "
                     f"({layout.run_dir(name)})")
        return None
    params, macs, eb, _ = _arch_cost(ckpt)
    ft = _cost(costs)
    pre = _cost(dense_costs) if kind == "tpf" else _cost(dense_costs, upto=eb)
    both = (pre[0] + ft[0], pre[1] + ft[1])
    return _row(f"{label} (p={ratio:g})", kind=kind, key=name, params=params, macs=macs,
                eb=None if kind == "tpf" else eb, epochs=len(costs), critical=both,
                total=both, layout=layout)


def _taeb_row(layout, doc, man, *, dense_costs, sampling_steps, skip_type, notes,
              kind="taeb", label="TA-EB"):
    from models.diffusion import timestep_sequence
    from core.runlog import critical_and_total
    from evaluation.evidence import sampling_average_macs
    tickets = man["tickets"]
    seq = timestep_sequence(skip_type, sampling_steps, man["num_timesteps"])
    avg_macs = sampling_average_macs([(*k["range"], k["macs"]) for k in tickets], seq)
    ebs = [k["eb_epoch"] for k in tickets if k.get("eb_epoch") is not None]
    eb_max = max(ebs) if ebs else None
    if len(ebs) < len(tickets):
        notes.append("TA-EB: some tickets were given as files; their dense training time "
                     "before pruning is not counted")
    pre = _cost(dense_costs, upto=eb_max) if eb_max is not None else (0.0, 0)
    wall = critical_and_total(pre[0], [k["wall_s"] for k in tickets],
                              [(k.get("placement") or {}).get("slot") for k in tickets])
    flops = critical_and_total(pre[1], [k.get("train_flops", 0) for k in tickets])
    regions = ", ".join(f"[{k['range'][0]},{k['range'][1]}):{k['pruning_ratio']:g}"
                        for k in tickets)
    tset = man.get("ticket_set") or doc
    row = _row(f"{label} ({regions})", kind=kind, key=taeb_name(tset),
               params=sum(k["params"] for k in tickets), macs=avg_macs, eb=eb_max,
               epochs=max(k["epochs"] for k in tickets), critical=(wall[0], flops[0]),
               total=(wall[1], flops[1]), layout=layout)
    row["regions"] = [k["range"] for k in tickets]
    row["set"] = tset
    row["schedule"] = man.get("schedule")
    return row


def collect(exp, doc, *, sampling_steps=100, skip_type="quad"):
    """Rows of the results table (dicts) and notes on what is missing."""
    layout = Layout(exp)
    rows, notes = [], []
    dense_costs = read_costs(layout.costs(doc))
    if not dense_costs:
        raise UserError(f"{layout.run_dir(doc)}: no dense training run here (no costs.jsonl)")
    params0, macs0, _, _ = _arch_cost(layout.latest_checkpoint(doc))
    dense = _cost(dense_costs)
    rows.append(_row("Dense", kind="dense", key=doc, params=params0, macs=macs0, eb=None,
                     epochs=len(dense_costs), critical=dense, total=dense, layout=layout))
    for kind in ("tpf", "eb", "eqflops"):
        for ratio, name in layout.derived_runs(doc, kind):
            row = _finetune_row(layout, kind, ratio=ratio, name=name, dense_costs=dense_costs,
                                notes=notes)
            if row:
                rows.append(row)
    if not any(r["kind"] == "tpf" for r in rows):
        notes.append("train-prune-finetune: missing")
    if not any(r["kind"] == "eb" for r in rows):
        notes.append("EB ticket: missing")
    for tset, kind, label in ((doc, "taeb", "TA-EB"), (plan_set(doc), "taeb_plan",
                                                       "TA-EB planned")):
        man_path = layout.manifest(tset)
        if os.path.isfile(man_path):
            with open(man_path) as f:
                man = yaml.safe_load(f)
            rows.append(_taeb_row(layout, doc, man, dense_costs=dense_costs,
                                  sampling_steps=sampling_steps, skip_type=skip_type,
                                  notes=notes, kind=kind, label=label))
        elif kind == "taeb" and not os.path.isfile(layout.manifest(plan_set(doc))):
            notes.append(f"TA-EB tickets: missing ({man_path})")
    _speedups(rows)
    _to_target(layout, doc, rows)
    for r in rows:
        if r["metric"] is None:
            notes.append(f"{r['method']}: no sample metric yet ({layout.metric_file(r['key'])})")
    return rows, notes


def _speedups(rows):
    """Fixed-budget speed-ups of each row's critical path, in FLOPs and in wall-clock."""
    from evaluation.evidence import fraction
    dense = rows[0]
    tpf = next((r for r in rows if r["kind"] == "tpf"), None)
    for r in rows:
        for unit, key in (("flops", "critical_flops"), ("wall", "critical_s")):
            r[f"vs_dense_{unit}"] = fraction(dense[key], r[key])
            r[f"vs_tpf_{unit}"] = fraction(tpf[key], r[key]) if tpf else None


def _to_target(layout, doc, rows):
    """Cost to reach the target (when the pipeline trained to one): each row's curve, on its
    critical path, first at or below the target (interpolated), and the speed-up over dense's
    own cost to get there. Sets row["target"], row["to_target"] = (FLOPs, wall) or None."""
    from evaluation.costs import cost_to_target, method_curves
    from evaluation.targets import read_record
    recs = {r["key"]: read_record(layout.target_record(r["key"])) for r in rows}
    target = next((x["target"] for x in recs.values() if x and x.get("kind") == "target"),
                  None)
    curves = method_curves(layout.exp, doc, rows) if target is not None else {}
    dense = None
    for r in rows:
        r["target"] = target
        r["to_target"] = cost_to_target(curves[r["key"]], target) \
            if r["key"] in curves and target is not None else None
        r["target_record"] = recs[r["key"]]
        if r["kind"] == "dense":
            dense = r["to_target"]
    for r in rows:
        ok = dense and r["to_target"]
        r["to_target_vs_dense"] = (dense[0] / r["to_target"][0], dense[1] / r["to_target"][1]) \
            if ok else None


def _valid_note(layout, rows):
    real = next((m["real_valid"] for m in (_metric_json(layout, r["key"]) for r in rows)
                 if "real_valid" in m), None)
    if real is None:
        return ""
    return (" 'valid' is the share of samples the digit classifier calls one digit with "
            f"confidence >= 0.9 (held-out real digits: {real:.0%}).")


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def _x(v):
    return "–" if v is None else f"{v:.2f}x"


# results.json / .csv: the columns of the table, at full precision
DATA_COLUMNS = ("method", "params", "macs", "eb_epoch", "train_flops_critical",
                "train_flops_total", "train_s_critical", "train_s_total", "vs_dense_flops",
                "vs_dense_wall", "vs_tpf_flops", "vs_tpf_wall", "metric", "metric_value",
                "valid", "target", "to_target_flops", "to_target_s",
                "to_target_vs_dense_flops", "to_target_vs_dense_wall")


def data_rows(rows):
    """The table's rows as plain values (DATA_COLUMNS)."""
    return [{"method": r["method"], "params": r["params"], "macs": r["macs"],
             "eb_epoch": r["eb_epoch"], "train_flops_critical": r["critical_flops"],
             "train_flops_total": r["total_flops"], "train_s_critical": r["critical_s"],
             "train_s_total": r["total_s"], "vs_dense_flops": r["vs_dense_flops"],
             "vs_dense_wall": r["vs_dense_wall"], "vs_tpf_flops": r["vs_tpf_flops"],
             "vs_tpf_wall": r["vs_tpf_wall"],
             "metric": r["metric"][0] if r["metric"] else None,
             "metric_value": r["metric"][1] if r["metric"] else None,
             "valid": r.get("valid"), "target": r.get("target"),
             "to_target_flops": (r.get("to_target") or (None, None))[0],
             "to_target_s": (r.get("to_target") or (None, None))[1],
             "to_target_vs_dense_flops": (r.get("to_target_vs_dense") or (None, None))[0],
             "to_target_vs_dense_wall": (r.get("to_target_vs_dense") or (None, None))[1]}
            for r in rows]


def _target_cells(r):
    t = r.get("to_target")
    if t is None:
        return "not reached | –"
    v = r.get("to_target_vs_dense")
    return (f"{t[0] / 1e12:.2f} / {t[1]:.0f} | " +
            (f"{_x(v[0])} / {_x(v[1])}" if v else "–"))


def table(rows):
    metric_name = next((r["metric"][0] for r in rows if r["metric"]), "metric")
    target = next((r["target"] for r in rows if r.get("target") is not None), None)
    head = "| Method | Params (M) | MACs (M) | EB epoch | "
    if target is not None:
        # the target is scored on the quality curves: the digits metric
        name = metric_name if metric_name != "metric" else "digits-FD"
        head += (f"To {name} {target:.2f}: TFLOPs / s (critical) | "
                 "to target vs dense, FLOPs / wall | ")
    head += ("Train TFLOPs, critical / total | Train time (s), critical / total | "
             "vs dense, FLOPs / wall | vs train-prune-finetune, FLOPs / wall | "
             f"{metric_name} | valid |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        valid = r.get("valid")
        lines.append(
            f"| {r['method']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.2f} | "
            f"{_fmt(r['eb_epoch'], 'd')} | " +
            (_target_cells(r) + " | " if target is not None else "") +
            f"{r['critical_flops'] / 1e12:.2f} / "
            f"{r['total_flops'] / 1e12:.2f} | {r['critical_s']:.1f} / {r['total_s']:.1f} | "
            f"{_x(r['vs_dense_flops'])} / {_x(r['vs_dense_wall'])} | "
            f"{_x(r['vs_tpf_flops'])} / {_x(r['vs_tpf_wall'])} | "
            f"{_fmt(r['metric'][1] if r['metric'] else None, '.2f')} | "
            f"{'–' if valid is None else f'{valid:.0%}'} |")
    return "\n".join(lines)


def plot_losses(layout, doc, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get("kind", "").startswith("taeb"):
            for rng in r["regions"]:
                name = region_doc(r.get("set") or doc, rng)
                c = read_costs(layout.costs(name))
                ax.plot([x["epoch"] for x in c], [x["loss"] for x in c], ls="--", marker="o",
                        ms=3, label=name)
            continue
        c = read_costs(layout.costs(r["key"]))
        # markers: a run of a single epoch is a point, not an invisible line
        ax.plot([x["epoch"] for x in c], [x["loss"] for x in c], marker="o", ms=3,
                label=r["method"])
    from evaluation.plots import integer_epochs
    integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(exp, doc, out_dir=None, *, sampling_steps=100, skip_type="quad",
                 metric_note=""):
    rows, notes = collect(exp, doc, sampling_steps=sampling_steps, skip_type=skip_type)
    layout = Layout(exp)
    out_dir = out_dir or layout.report_dir(doc)
    os.makedirs(out_dir, exist_ok=True)
    figures = []
    loss_png = os.path.join(out_dir, "loss_curves.png")
    plot_losses(layout, doc, rows, loss_png)
    figures.append(("Training loss", loss_png))
    mask_dir = layout.masks_dir(doc)
    eb_json = layout.earlybird_record(doc)
    if os.path.isdir(mask_dir) and os.path.isfile(eb_json):
        with open(eb_json) as f:
            eb = json.load(f)
        from evaluation.plots import plot_mask_series
        try:
            paths = plot_mask_series(mask_dir, [float(r) for r in eb["ratios"]], eb["pruner"],
                                     out_dir, doc=doc, window=eb["window"],
                                     threshold=eb["threshold"])
            if "distances" in paths:
                figures.append(("Hamming distance to the FIFO window", paths["distances"]))
            figures += [(f"Mask {k}", v) for k, v in paths.items() if k != "distances"]
        except UserError as e:
            notes.append(f"mask plots: {e}")
    for r in rows:
        grid = sample_grid_of(layout.samples_dir(r["key"]))
        if os.path.isfile(grid):
            figures.append((f"Samples: {r['method']}", grid))
    taeb = next((r for r in rows if r["kind"] == "taeb"), None)
    schedule = (f" The TA-EB tickets were fine-tuned {taeb['schedule']}, so each ticket's time "
                f"is its time on a device of its own." if taeb and taeb.get("schedule") else "")
    md = [f"# Results: {doc}", "",
          "Training cost from each run's costs.jsonl, as FLOPs (machine-independent: a forward "
          "pass's FLOPs as torch.utils.flop_counter counts them, attention included, x 3 for "
          "forward + backward x training images; MACs per image are torch-pruning's count, "
          "as the paper's tables give them) and as measured wall-clock. EB rows count dense "
          "training up to the EB epoch plus fine-tuning; TA-EB counts its slowest ticket on the critical path (one device per "
          "ticket) and all tickets in the total; train-prune-finetune counts the whole dense "
          "run plus fine-tuning. Speed-ups compare critical paths at a fixed budget (each "
          f"method's own number of epochs).{schedule} TA-EB MACs are averaged over the "
          f"{sampling_steps}-step {skip_type} sampling schedule.{_valid_note(layout, rows)}", ""]
    target = next((r["target"] for r in rows if r.get("target") is not None), None)
    if target is not None:
        md += [f"Trained to a target: every fine-tune (and TA-EB ticket set) stopped at the "
               f"first evaluation at or below {target:.2f} (the dense reference's final "
               "quality, unless target.value set it), or at its cap. The cost to the target is "
               "where each method's quality curve first crosses it (interpolated between "
               "evaluations), on its critical path; {exp}/targets/ holds each decision.", ""]
    if metric_note:
        md += [metric_note, ""]
    md += [table(rows), ""]
    if notes:
        md += ["Missing or incomplete:", ""] + [f"- {n}" for n in notes] + [""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    path = os.path.join(out_dir, "results.md")
    atomic_write_text(path, "\n".join(md))
    from evaluation.tables import write_data
    write_data(path, DATA_COLUMNS, data_rows(rows))
    return path, rows, notes
