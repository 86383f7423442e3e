"""The results report (DESIGN.md step 8): one row per method found under {exp}, in the shape
of the paper's tables, with training time as critical path and total, and figures.

It reads what the pipeline and the shell scripts write (names from runners/layout.py): the
dense run {doc}, EB tickets {doc}_eb_{p} (fine-tuned from ckpt_ep{EB}), train-prune-finetune
runs {doc}_tpf_{p} (fine-tuned from the last epoch), the TA-EB manifest, and each method's
sample metric.
"""
import json
import os

import yaml

from runners.checkpoint import load_checkpoint
from runners.layout import Layout, region_doc, sample_grid_of, taeb_name
from runners.runlog import read_costs
from utils.errors import UserError
from utils.io import atomic_write_text


def _metric(layout, method):
    path = layout.metric_file(method)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        m = json.load(f)
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
    from runners.checkpoint import build_model
    model = build_model(c["model_args"], c.get("pruning"))
    params, macs = count_params_macs(model, c["model_args"])
    return params, macs, None, None


def _wall(costs, upto=None):
    """Wall-clock seconds of epochs <= upto (online early-bird time included)."""
    return sum(c["wall_s"] + c.get("earlybird_s", 0.0) for c in costs
               if upto is None or c["epoch"] <= upto)


def _finetune_row(layout, kind, ratio, name, dense_costs, dense_wall, notes):
    label = "Train-prune-finetune" if kind == "tpf" else "EB ticket"
    ckpt = layout.latest_checkpoint(name)
    costs = read_costs(layout.costs(name))
    if not os.path.isfile(ckpt) or not costs:
        notes.append(f"{label} at p={ratio:g}: fine-tuning has not run "
                     f"({layout.run_dir(name)})")
        return None
    params, macs, eb, _ = _arch_cost(ckpt)
    ft = _wall(costs)
    pre = dense_wall if kind == "tpf" else _wall(dense_costs, upto=eb)
    return {"method": f"{label} (p={ratio:g})", "params": params, "macs": macs,
            "eb_epoch": eb if kind == "eb" else None, "epochs": len(costs),
            "critical_s": pre + ft, "total_s": pre + ft, "metric": _metric(layout, name),
            "key": name, "kind": kind}


def _taeb_row(layout, doc, man, dense_costs, sampling_steps, skip_type, notes):
    from models.diffusion import timestep_sequence
    tickets = man["tickets"]
    seq = timestep_sequence(skip_type, sampling_steps, man["num_timesteps"])

    def macs_at(t):
        return next(k["macs"] for k in tickets if k["range"][0] <= t < k["range"][1])
    avg_macs = sum(macs_at(t) for t in seq) / len(seq)
    ebs = [k["eb_epoch"] for k in tickets if k.get("eb_epoch") is not None]
    eb_max = max(ebs) if ebs else None
    if len(ebs) < len(tickets):
        notes.append("TA-EB: some tickets were given as files; their dense training time "
                     "before pruning is not counted")
    pre = _wall(dense_costs, upto=eb_max) if eb_max is not None else 0.0
    regions = ", ".join(f"[{k['range'][0]},{k['range'][1]}):{k['pruning_ratio']:g}"
                        for k in tickets)
    return {"method": f"TA-EB ({regions})", "params": sum(k["params"] for k in tickets),
            "macs": avg_macs, "eb_epoch": eb_max, "epochs": max(k["epochs"] for k in tickets),
            "critical_s": pre + max(k["wall_s"] for k in tickets),
            "total_s": pre + sum(k["wall_s"] for k in tickets),
            "metric": _metric(layout, taeb_name(doc)), "key": taeb_name(doc), "kind": "taeb",
            "regions": [k["range"] for k in tickets]}


def collect(exp, doc, *, sampling_steps=100, skip_type="quad"):
    """Rows of the results table (dicts) and notes on what is missing."""
    layout = Layout(exp)
    rows, notes = [], []
    dense_costs = read_costs(layout.costs(doc))
    if not dense_costs:
        raise UserError(f"{layout.run_dir(doc)}: no dense training run here (no costs.jsonl)")
    params0, macs0, _, _ = _arch_cost(layout.latest_checkpoint(doc))
    dense_wall = _wall(dense_costs)
    rows.append({"method": "Dense", "params": params0, "macs": macs0,
                 "eb_epoch": None, "epochs": len(dense_costs), "critical_s": dense_wall,
                 "total_s": dense_wall, "metric": _metric(layout, doc), "key": doc})
    for kind in ("tpf", "eb"):
        for ratio, name in layout.derived_runs(doc, kind):
            row = _finetune_row(layout, kind, ratio, name, dense_costs, dense_wall, notes)
            if row:
                rows.append(row)
    if not any(r.get("kind") == "tpf" for r in rows):
        notes.append("train-prune-finetune: missing")
    if not any(r.get("kind") == "eb" for r in rows):
        notes.append("EB ticket: missing")
    man_path = layout.manifest(doc)
    if os.path.isfile(man_path):
        with open(man_path) as f:
            man = yaml.safe_load(f)
        rows.append(_taeb_row(layout, doc, man, dense_costs, sampling_steps, skip_type, notes))
    else:
        notes.append(f"TA-EB tickets: missing ({man_path})")

    tpf = [r for r in rows if r.get("kind") == "tpf"]
    for r in rows:
        r["speedup_dense"] = dense_wall / r["critical_s"] if r["critical_s"] else None
        r["speedup_tpf"] = (tpf[0]["critical_s"] / r["critical_s"]) if tpf and r["critical_s"] \
            else None
    for r in rows:
        if r["metric"] is None:
            notes.append(f"{r['method']}: no sample metric yet ({layout.metric_file(r['key'])})")
    return rows, notes


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def table(rows):
    metric_name = next((r["metric"][0] for r in rows if r["metric"]), "metric")
    head = (f"| Method | Params (M) | MACs (M) | EB epoch | Train time, critical path (s) | "
            f"Train time, total (s) | Speed-up vs dense | Speed-up vs train-prune-finetune | "
            f"{metric_name} |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['params'] / 1e6:.3f} | {r['macs'] / 1e6:.2f} | "
            f"{_fmt(r['eb_epoch'], 'd')} | {r['critical_s']:.1f} | {r['total_s']:.1f} | "
            f"{_fmt(r['speedup_dense'], '.2f')}x | "
            f"{(_fmt(r['speedup_tpf'], '.2f') + 'x') if r['speedup_tpf'] else '–'} | "
            f"{_fmt(r['metric'][1] if r['metric'] else None, '.2f')} |")
    return "\n".join(lines)


def plot_losses(layout, doc, rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get("kind") == "taeb":
            for rng in r["regions"]:
                name = region_doc(doc, rng)
                c = read_costs(layout.costs(name))
                ax.plot([x["epoch"] for x in c], [x["loss"] for x in c], ls="--", marker="o",
                        ms=3, label=name)
            continue
        c = read_costs(layout.costs(r["key"]))
        # markers: a run of a single epoch is a point, not an invisible line
        ax.plot([x["epoch"] for x in c], [x["loss"] for x in c], marker="o", ms=3,
                label=r["method"])
    from runners.plots import integer_epochs
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
        from runners.plots import plot_mask_series
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
    md = [f"# Results: {doc}", "",
          "Training time is wall-clock from each run's costs.jsonl. EB rows count dense "
          "training up to the EB epoch plus fine-tuning; TA-EB counts its slowest ticket on "
          "the critical path (tickets train in parallel) and all tickets in the total; "
          "train-prune-finetune counts the whole dense run plus fine-tuning. TA-EB MACs are "
          f"averaged over the {sampling_steps}-step {skip_type} sampling schedule.", ""]
    if metric_note:
        md += [metric_note, ""]
    md += [table(rows), ""]
    if notes:
        md += ["Missing or incomplete:", ""] + [f"- {n}" for n in notes] + [""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    path = os.path.join(out_dir, "results.md")
    atomic_write_text(path, "\n".join(md))
    return path, rows, notes
