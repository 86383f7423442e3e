"""Figures: overlap heatmaps and distance-to-window curves of the early-bird analysis, training
loss per epoch, and the planner's loss gaps."""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from models.earlybird import find_earlybird, hamming, overlap_matrix  # noqa: E402
from core.layout import overlap_stem_in  # noqa: E402
from runners.masks import load_mask_series  # noqa: E402
from utils.io import save_figure  # noqa: E402


def integer_epochs(ax, axes="x"):
    """Epoch axes get whole-number ticks only."""
    for a in axes:
        getattr(ax, f"{a}axis").set_major_locator(MaxNLocator(integer=True))


def plot_heatmap(mat, epochs, title, path):
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(mat, cmap="viridis", vmin=min(0.5, float(mat.min())), vmax=1.0,
                   origin="lower", extent=(epochs[0] - .5, epochs[-1] + .5,
                                           epochs[0] - .5, epochs[-1] + .5))
    fig.colorbar(im, ax=ax, label="mask overlap (1 - Hamming distance)")
    integer_epochs(ax, "xy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("epoch")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def window_distances(series, window):
    """[(epoch, max distance to the previous window-1 masks)] over the whole series."""
    out = []
    for i, (e, m) in enumerate(series):
        prev = series[max(0, i - window + 1):i]
        if prev:
            out.append((e, max(hamming(m, p) for _, p in prev)))
    return out


def _epoch_figure(ax, fig, path, ylabel, fontsize):
    """The shared tail of the per-epoch line figures: whole epochs, labels, legend, PNG."""
    integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=fontsize)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_distance_curves(curves, threshold, path):
    """curves: {label: (epochs, max distances, eb_epoch)}."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (epochs, dists, eb) in curves.items():
        line, = ax.plot(epochs, dists, marker="o", ms=3, label=label)
        if eb is not None:
            ax.axvline(eb, color=line.get_color(), ls=":", lw=1,
                       label=f"EB epoch {eb} ({label})")
    ax.axhline(threshold, color="gray", ls="--", lw=1, label=f"threshold {threshold:g}")
    _epoch_figure(ax, fig, path, "max Hamming distance to the window", 8)


def plot_loss_curves(runs, path):
    """runs: [(label, epochs, epoch-mean losses, dashed)] on a log axis (markers: a run of a
    single epoch is a point, not an invisible line)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, epochs, losses, dashed in runs:
        ax.plot(epochs, losses, ls="--" if dashed else "-", marker="o", ms=3, label=label)
    ax.set_yscale("log")
    _epoch_figure(ax, fig, path, "training loss (epoch mean)", 7)


def plot_mask_series(mask_dir, ratios, pruner, out_dir, *, window, threshold, doc=None,
                     start_epoch=0, end_epoch=None):
    """Heatmap per ratio and one distance-curve figure; returns {name: path}."""
    os.makedirs(out_dir, exist_ok=True)
    curves, paths = {}, {}
    for r in ratios:
        series = load_mask_series(mask_dir, r, pruner, start_epoch=start_epoch,
                                  end_epoch=end_epoch, doc=doc)
        epochs = [e for e, _ in series]
        heat = overlap_stem_in(out_dir, r, pruner) + ".png"
        plot_heatmap(overlap_matrix([m for _, m in series]), epochs,
                     f"mask overlap, ratio {r:g} ({pruner})", heat)
        paths[f"overlap {r:g}"] = heat
        eb, _ = find_earlybird(series, window=window, threshold=threshold)
        pts = window_distances(series, window)
        if pts:
            curves[f"ratio {r:g}"] = ([e for e, _ in pts], [d for _, d in pts], eb)
    if curves:
        path = os.path.join(out_dir, f"distances-{pruner}.png")
        plot_distance_curves(curves, threshold, path)
        paths["distances"] = path
    return paths


def plot_plan(record, path):
    """plan_regions.py's figure: each candidate ratio's loss gap per timestep bin (ticket at
    its EB epoch minus dense, log scale), the sampler's visits per bin, and the chosen plan."""
    edges, weights = record["edges"], record["visit_weights"]
    mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, gaps in sorted(record["gaps"].items(), key=lambda kv: float(kv[0])):
        ax.plot(mids, [max(g, 1e-3) for g in gaps], marker="o", ms=3, label=f"p={key}")
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("loss gap, ticket - dense")
    twin = ax.twinx()
    twin.bar(mids, weights, width=(edges[1] - edges[0]) * 0.9, alpha=0.15, color="gray")
    twin.set_ylabel("share of sampler steps")
    for i, reg in enumerate(record["regions"]):
        lo, hi = reg["range"]
        ax.axvspan(lo, hi, alpha=0.08, color=f"C{i}")
        ax.text((lo + hi) / 2, 0.97, f"p={reg['pruning_ratio']:g}", ha="center", va="top",
                transform=ax.get_xaxis_transform(), fontsize=8)
        if i:
            ax.axvline(lo, color="k", lw=0.8)
    ax.set_title(f"planned regions: {record['plan_macs'] / 1e6:.2f}M MACs (budget "
                 f"{record['budget_macs'] / 1e6:.2f}M)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
