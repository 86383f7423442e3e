"""The results report (docs/design.md, step 8): one row per method found under {exp}, in the shape
of the paper's tables, with training time as critical path and total, and figures.

It reads what the pipeline and the shell scripts write (names from core/layout.py): the
dense run {doc}, EB tickets {doc}_eb_{p} (fine-tuned from ckpt_ep{EB}), train-prune-finetune
runs {doc}_tpf_{p} (fine-tuned from the last epoch), the TA-EB manifest, and each method's
sample metric.
"""
import os
from dataclasses import replace

from core.checkpoint import build_model, load_checkpoint
from core.config import load_config
from core.layout import Layout, region_doc, sample_grid_of, taeb_name
from core.regions import read_manifest
from core.runlog import critical_and_total, read_costs, summed_cost
from evaluation.costs import cost_to_target, method_curves
from evaluation.evidence import fraction, sampling_average_macs
from evaluation.methods import BY_KIND, DATA_COLUMNS, FINETUNED, TICKET_SETS, Cost, Row
from evaluation.plots import plot_loss_curves, plot_mask_series
from evaluation.tables import write_data
from evaluation.targets import read_record
from models.diffusion import timestep_sequence
from models.pruning import count_params_macs
from utils.errors import UserError
from utils.io import atomic_write_text, read_json


def read_metric(layout, key):
    """(metric name, value, valid share, real digits' valid share, noise-like share, images)
    of a method's sample metric file; Nones where there is none."""
    m = read_json(layout.metric_file(key), {})
    name = "FID" if "fid" in m else "digits-FD" if "digits_fd" in m else None
    value = m.get("fid", m.get("digits_fd"))
    return name, value, m.get("valid"), m.get("real_valid"), m.get("noise_like"), m.get("n")


def _arch_cost(ckpt_path):
    """(params, MACs per image, EB epoch or None) of a checkpoint's network (from its pruning
    metadata when present)."""
    c = load_checkpoint(ckpt_path)
    p = c.get("pruning") or {}
    if p.get("params") is not None:
        return p["params"], p["macs"], p.get("epoch")
    params, macs = count_params_macs(build_model(c["model_args"], c.get("pruning")),
                                     c["model_args"])
    return params, macs, None


def _row(layout, method, name, key, *, critical, total, **kw):
    metric, value, valid, _, noise_like, n = read_metric(layout, key)
    return Row(method=method, name=name, key=key, critical=Cost(*critical),
               total=Cost(*total), metric=metric, value=value, valid=valid,
               noise_like=noise_like, final_n=n, **kw)


def _finetune_row(layout, method, *, ratio, name, costs, dense_costs):
    params, macs, eb = _arch_cost(layout.latest_checkpoint(name))
    ft, pre = summed_cost(costs), method.prefix_cost(dense_costs, eb)
    both = (pre[0] + ft[0], pre[1] + ft[1])
    return _row(layout, method, f"{method.label} (p={ratio:g})", name, params=params,
                macs=macs, eb_epoch=eb if method.prefix == "eb" else None,
                epochs=len(costs), critical=both, total=both)


def _taeb_row(layout, method, man, *, dense_costs, sampling):
    tickets = man.tickets
    seq = timestep_sequence(sampling.skip_type, sampling.timesteps, man.num_timesteps)
    ebs = [k.eb_epoch for k in tickets if k.eb_epoch is not None]
    eb_max = max(ebs) if ebs else None
    pre = method.prefix_cost(dense_costs, eb_max)
    wall = critical_and_total(pre[0], [k.wall_s for k in tickets], [k.slot for k in tickets])
    flops = critical_and_total(pre[1], [k.train_flops for k in tickets])
    regions = ", ".join(f"[{k.range[0]},{k.range[1]}):{k.pruning_ratio:g}" for k in tickets)
    return _row(layout, method, f"{method.label} ({regions})", taeb_name(man.ticket_set),
                params=sum(k.params for k in tickets),
                macs=sampling_average_macs([(*k.range, k.macs) for k in tickets], seq),
                eb_epoch=eb_max, epochs=max(k.epochs for k in tickets),
                critical=(wall[0], flops[0]), total=(wall[1], flops[1]),
                regions=tuple(k.range for k in tickets), ticket_set=man.ticket_set,
                schedule=man.schedule)


def collect(exp, doc, cfg):
    """Rows of the results table (Row records) and notes on what is missing. ``cfg``: the
    settings the runs were made with (their ratios, regions and sampler)."""
    layout = Layout(exp)
    rows, notes = [], []
    dense_costs = read_costs(layout.costs(doc))
    if not dense_costs:
        raise UserError(f"{layout.run_dir(doc)}: no dense training run here (no costs.jsonl)")
    params0, macs0, _ = _arch_cost(layout.latest_checkpoint(doc))
    dense = summed_cost(dense_costs)
    rows.append(_row(layout, BY_KIND["dense"], "Dense", doc, params=params0, macs=macs0,
                     eb_epoch=None, epochs=len(dense_costs), critical=dense, total=dense))
    for method in FINETUNED:
        for ratio in cfg.pruning_ratios():
            name = method.run_name(doc, ratio)
            costs = read_costs(layout.costs(name))  # read once per run
            if not costs or not os.path.isfile(layout.latest_checkpoint(name)):
                continue
            rows.append(_finetune_row(layout, method, ratio=ratio, name=name, costs=costs,
                                      dense_costs=dense_costs))
    notes += [f"{BY_KIND[k].label}: missing" for k in ("tpf", "eb")
              if not any(r.kind == k for r in rows)]
    for method in TICKET_SETS:
        path = layout.manifest(method.set_name(doc))
        if os.path.isfile(path):
            man = read_manifest(path)
            rows.append(_taeb_row(layout, method, man, dense_costs=dense_costs,
                                  sampling=cfg.sampling))
            if any(k.eb_epoch is None for k in man.tickets):
                notes.append(f"{method.label}: some tickets were given as files; their dense "
                             f"training time before pruning is not counted")
    if not any(r.method.tickets for r in rows):
        notes.append(f"TA-EB tickets: missing ({layout.manifest(doc)})")
    rows = _to_target(layout, doc, _speedups(rows))
    notes += [f"{r.name}: no sample metric yet ({layout.metric_file(r.key)})"
              for r in rows if r.metric is None]
    return rows, notes


def _speedups(rows):
    """Fixed-budget speed-ups of each row's critical path, in FLOPs and in wall-clock."""
    dense = rows[0].critical
    tpf = next((r.critical for r in rows if r.kind == "tpf"), None)
    return [replace(r, vs_dense=(fraction(dense.flops, r.critical.flops),
                                 fraction(dense.wall_s, r.critical.wall_s)),
                    vs_tpf=(fraction(tpf.flops, r.critical.flops),
                            fraction(tpf.wall_s, r.critical.wall_s)) if tpf else None)
            for r in rows]


def target_axis(rows):
    """The axis the run's targets were read on (its target records say; digits_fd before)."""
    return next((r.target_record["axis"] for r in rows
                 if r.target_record and "axis" in r.target_record), "digits_fd")


def _to_target(layout, doc, rows):
    """Cost to reach the target (when the pipeline trained to one): each row's curve, on its
    critical path, first at or below the target (interpolated), and the speed-up over dense's
    own cost to get there."""
    recs = {r.key: read_record(layout.target_record(r.key)) for r in rows}
    decided = next((x for x in recs.values() if x and x.get("kind") == "target"), None)
    target = decided["target"] if decided else None
    curves = method_curves(layout.exp, doc, rows, decided.get("axis", "digits_fd")) \
        if decided else {}
    reach = {r.key: cost_to_target(curves[r.key], target) if r.key in curves else None
             for r in rows}
    dense = reach[rows[0].key]
    return [replace(r, target=target, to_target=reach[r.key], target_record=recs[r.key],
                    to_target_vs_dense=(dense.flops / reach[r.key].flops,
                                        dense.wall_s / reach[r.key].wall_s)
                    if dense and reach[r.key] else None) for r in rows]


def _valid_note(layout, rows):
    real = next((v for v in (read_metric(layout, r.key)[3] for r in rows) if v is not None),
                None)
    if real is None:
        return ""
    return (" 'valid' is the share of samples the digit classifier calls one digit with "
            f"confidence >= 0.9 (held-out real digits: {real:.0%}); 'noise-like' the share "
            "rougher (mean |discrete Laplacian|) than every held-out real digit.")


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def _x(v):
    return "–" if v is None else f"{v:.2f}x"


def _pct(v):
    return "–" if v is None else f"{v:.0%}"


def _pair(v, i):
    return v[i] if v else None


def _target_cells(r):
    t = r.to_target
    if t is None:
        return "not reached | –"
    v = r.to_target_vs_dense
    return (f"{t.flops / 1e12:.2f} / {t.wall_s:.0f} | " +
            (f"{_x(v[0])} / {_x(v[1])}" if v else "–"))


def table(rows):
    metric_name = next((r.metric for r in rows if r.metric), "metric")
    target = next((r.target for r in rows if r.target is not None), None)
    head = "| Method | Params (M) | MACs (M) | EB epoch | "
    if target is not None:
        # the target is read on the quality curves' axis (target.axis)
        name = "held-out loss" if target_axis(rows) == "heldout" else \
            metric_name if metric_name != "metric" else "digits-FD"
        head += (f"To {name} {target:.4g}: TFLOPs / s (critical) | "
                 "to target vs dense, FLOPs / wall | ")
    head += ("Train TFLOPs, critical / total | Train time (s), critical / total | "
             "vs dense, FLOPs / wall | vs train-prune-finetune, FLOPs / wall | "
             f"{metric_name} | valid | noise-like |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params / 1e6:.3f} | {r.macs / 1e6:.2f} | "
            f"{_fmt(r.eb_epoch, 'd')} | " +
            (_target_cells(r) + " | " if target is not None else "") +
            f"{r.critical.flops / 1e12:.2f} / {r.total.flops / 1e12:.2f} | "
            f"{r.critical.wall_s:.1f} / {r.total.wall_s:.1f} | "
            f"{_x(_pair(r.vs_dense, 0))} / {_x(_pair(r.vs_dense, 1))} | "
            f"{_x(_pair(r.vs_tpf, 0))} / {_x(_pair(r.vs_tpf, 1))} | "
            f"{_fmt(r.value, '.2f')} | {_pct(r.valid)} | {_pct(r.noise_like)} |")
    return "\n".join(lines)


def plot_losses(layout, rows, path):
    """Training loss per epoch of every run (each TA-EB ticket on its own, dashed)."""
    runs = []
    for r in rows:
        names = [region_doc(r.ticket_set, rng) for rng in r.regions] if r.method.tickets \
            else [r.key]
        for name in names:
            c = read_costs(layout.costs(name))
            runs.append((name if r.method.tickets else r.name, [x["epoch"] for x in c],
                         [x["loss"] for x in c], r.method.tickets))
    plot_loss_curves(runs, path)


def report_config(exp, doc, config=None):
    """The settings a report reads: ``config`` (a file or configs/ name), else the pipeline's
    resolved config of ``doc``, else the dense run's own config.yml."""
    layout = Layout(exp)
    for path in (config, layout.pipeline_config(doc), layout.run_config(doc)):
        if path and (path == config or os.path.isfile(path)):
            return load_config(path)
    raise UserError(f"{layout.run_dir(doc)}: no dense training run here (no config.yml)")


def _figures(layout, doc, rows, out_dir, notes):
    figures = []
    loss_png = os.path.join(out_dir, "loss_curves.png")
    plot_losses(layout, rows, loss_png)
    figures.append(("Training loss", loss_png))
    eb = read_json(layout.earlybird_record(doc), None)
    if os.path.isdir(layout.masks_dir(doc)) and eb:
        try:
            paths = plot_mask_series(layout.masks_dir(doc), [float(r) for r in eb["ratios"]],
                                     eb["pruner"], out_dir, doc=doc, window=eb["window"],
                                     threshold=eb["threshold"])
            if "distances" in paths:
                figures.append(("Hamming distance to the FIFO window", paths["distances"]))
            figures += [(f"Mask {k}", v) for k, v in paths.items() if k != "distances"]
        except UserError as e:
            notes.append(f"mask plots: {e}")
    for r in rows:
        grid = sample_grid_of(layout.samples_dir(r.key))
        if os.path.isfile(grid):
            figures.append((f"Samples: {r.name}", grid))
    return figures


def write_report(exp, doc, cfg, out_dir=None, *, metric_note=""):
    """results.md (+ .json, .csv) and figures of dense run ``doc``'s experiment; ``cfg``: the
    settings its runs were made with (report_config)."""
    rows, notes = collect(exp, doc, cfg)
    layout = Layout(exp)
    out_dir = out_dir or layout.report_dir(doc)
    os.makedirs(out_dir, exist_ok=True)
    figures = _figures(layout, doc, rows, out_dir, notes)
    s = cfg.sampling
    taeb = next((r for r in rows if r.kind == "taeb"), None)
    schedule = (f" The TA-EB tickets were fine-tuned {taeb.schedule}, so each ticket's time "
                f"is its time on a device of its own." if taeb and taeb.schedule else "")
    md = [f"# Results: {doc}", "",
          "Training cost from each run's costs.jsonl, as FLOPs (machine-independent: a forward "
          "pass's FLOPs as torch.utils.flop_counter counts them, attention included, x 3 for "
          "forward + backward x training images; MACs per image are torch-pruning's count, "
          "as the paper's tables give them) and as measured wall-clock. EB rows count dense "
          "training up to the EB epoch plus fine-tuning; TA-EB counts its slowest ticket on the critical path (one device per "
          "ticket) and all tickets in the total; train-prune-finetune counts the whole dense "
          "run plus fine-tuning. Speed-ups compare critical paths at a fixed budget (each "
          f"method's own number of epochs).{schedule} TA-EB MACs are averaged over the "
          f"{s.timesteps}-step {s.skip_type} sampling schedule.{_valid_note(layout, rows)}", ""]
    target = next((r.target for r in rows if r.target is not None), None)
    if target is not None:
        md += [f"Trained to a target: every fine-tune (and TA-EB ticket set) stopped at the "
               f"first evaluation at or below {target:.4g} (the dense reference's final "
               "quality, unless target.value set it), or at its FLOPs budget. The cost to the "
               "target is "
               "where each method's quality curve first crosses it (interpolated between "
               "evaluations), on its critical path; {exp}/targets/ holds each decision.", ""]
    else:
        md += ["**A fixed-budget comparison:** every method trains its configured epochs, and "
               "the table compares what each reached with what it cost. Whether a ticket "
               "reaches the dense run's quality at a lower cost is the evidence study's "
               "question (`earlybird_scripts/study.py`; the bundled digits' page is "
               "docs/results/digits.md in the repository).", ""]
    if metric_note:
        md += [metric_note, ""]
    md += [table(rows), ""]
    if notes:
        md += ["Missing or incomplete:", ""] + [f"- {n}" for n in notes] + [""]
    for title, path in figures:
        md += [f"## {title}", "", f"![{title}]({os.path.relpath(path, out_dir)})", ""]
    path = os.path.join(out_dir, "results.md")
    atomic_write_text(path, "\n".join(md))
    write_data(path, DATA_COLUMNS, [r.data() for r in rows])
    return path, rows, notes
