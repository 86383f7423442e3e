"""Every file and folder name under an experiment root ``{exp}``, in both directions.

This module is the only place that knows the layout; everything else asks it.

  {exp}/logs/{doc}/                 a training run (dense, EB ticket, baseline or TA-EB region):
      ckpt.pth, ckpt_ep{E}.pth, snapshot_ep{E}.pth, config.yml, log.txt, costs.jsonl,
      earlybird.json, DONE, LOCK (while a process trains), samples/ep{E}.png
  {exp}/tensorboard/{doc}/          its TensorBoard events
  {exp}/pruned/{doc}/masks/         masks of the dense run {doc}: {doc}_pruned-{p}-{pruner}-{E}.npy
                                    (+ .json), earlybird-{p}-{pruner}.json, overlap figures
  {exp}/pruned/{doc}/models/        pruned tickets, named like their masks (.pth)
  {exp}/tickets/{doc}/              TA-EB: tickets.yml (the manifest), logs/region_{lo}_{hi}.log,
                                    slurm/region_{lo}_{hi}.sbatch and slurm/jobs.json
  {exp}/samples/{name}/             sample folders; {name}.metric.json and {name}_grid.png beside
  {exp}/metric/                     the digits classifier cache
  {exp}/report/{doc}/               results.md and its figures; report/study/: the study page
  {exp}/pipeline/{doc}.yml          the resolved config the pipeline's stages read
  {exp}/curves/{name}.jsonl         quality along training (evaluation/curves.py)

Runs derived from a dense run ``doc`` are named ``{doc}_eb_{p}`` (EB ticket at ratio p),
``{doc}_tpf_{p}`` (train-prune-finetune at p), ``{doc}_eqflops_{p}`` (a uniform EB ticket given
the TA-EB tickets' fine-tuning FLOPs) and ``{doc}_taeb_{lo}_{hi}`` (TA-EB region). Names are
built from the settings, never parsed back: a run's ratio and region come from the config, its
checkpoint's pruning record and the ticket manifest.
"""
import os
import re
from dataclasses import dataclass

from models.pruner_names import canonical_pruner

_EPOCH_CKPT = re.compile(r"ckpt_ep(\d+)\.pth$")
_SNAPSHOT = re.compile(r"^snapshot_ep(\d+)\.pth$")
# {doc}_pruned-{ratio}-{pruner}-{epoch}; the pruner may hold a dash (diff-pruning)
_MASK = re.compile(r"^(?P<doc>.*)_pruned-(?P<ratio>[0-9.eE+-]+?)-(?P<pruner>[a-z_]+(?:-[a-z_]+)?)"
                   r"-(?P<epoch>\d+)$")


@dataclass(frozen=True)
class MaskName:
    doc: str
    ratio: float
    pruner: str
    epoch: int


def ratio_key(ratio):
    """A pruning ratio as it appears in file and run names and as a JSON key: 0.5 -> '0.5'."""
    return f"{float(ratio):g}"


def mask_stem(doc, ratio, pruner, epoch):
    """The seed's mask and ticket naming: {doc}_pruned-{ratio}-{pruner}-{epoch}."""
    return f"{doc}_pruned-{ratio_key(ratio)}-{pruner}-{epoch}"


def parse_mask_stem(stem):
    """A mask or ticket file name (without extension) -> MaskName, or None.

    The release's pruner name 'ours' (its Diff-Pruning) reads as 'diff-pruning'."""
    m = _MASK.match(stem)
    if not m:
        return None
    try:
        ratio, pruner = float(m["ratio"]), canonical_pruner(m["pruner"])
    except ValueError:
        return None
    return MaskName(m["doc"], ratio, pruner, int(m["epoch"]))


def epoch_of_checkpoint(path):
    """ckpt_ep{E}.pth -> E; any other name -> None."""
    m = _EPOCH_CKPT.search(os.path.basename(path))
    return int(m.group(1)) if m else None


def eb_doc(doc, ratio):
    return f"{doc}_eb_{ratio_key(ratio)}"


def tpf_doc(doc, ratio):
    return f"{doc}_tpf_{ratio_key(ratio)}"


def eqflops_doc(doc, ratio):
    return f"{doc}_eqflops_{ratio_key(ratio)}"


def region_doc(doc, rng):
    return f"{doc}_taeb_{rng[0]}_{rng[1]}"


def plan_set(doc):
    """The ticket set of the planned TA-EB regions of dense run ``doc``."""
    return f"{doc}_plan"


def taeb_name(doc):
    """The sample/metric name of the stitched TA-EB tickets."""
    return f"{doc}_taeb"


class Layout:
    """Paths of one experiment root."""

    def __init__(self, exp):
        self.exp = exp

    # --- training runs ---------------------------------------------------------------------
    def run_dir(self, doc):
        return os.path.join(self.exp, "logs", doc)

    def tb_dir(self, doc):
        return os.path.join(self.exp, "tensorboard", doc)

    def latest_checkpoint(self, doc):
        return os.path.join(self.run_dir(doc), "ckpt.pth")

    def epoch_checkpoint(self, doc, epoch):
        return os.path.join(self.run_dir(doc), f"ckpt_ep{epoch}.pth")

    def _by_epoch(self, doc, pattern):
        """{epoch: path} of the files of a run whose name matches ``pattern`` (group 1: E)."""
        d = self.run_dir(doc)
        out = {}
        for f in (os.listdir(d) if os.path.isdir(d) else []):
            m = pattern.search(f)
            if m:
                out[int(m.group(1))] = os.path.join(d, f)
        return dict(sorted(out.items()))

    def epoch_checkpoints(self, doc):
        """{epoch: path} of the per-epoch checkpoints of a run."""
        return self._by_epoch(doc, _EPOCH_CKPT)

    def snapshot(self, doc, epoch):
        return os.path.join(self.run_dir(doc), f"snapshot_ep{epoch}.pth")

    def snapshots(self, doc):
        """{epoch: path} of the snapshots a run keeps after its per-epoch window."""
        return self._by_epoch(doc, _SNAPSHOT)

    def checkpoint_files(self, doc):
        """Every checkpoint file of a run: ckpt.pth, per-epoch files, snapshots."""
        latest = self.latest_checkpoint(doc)
        return ([latest] if os.path.isfile(latest) else []) + \
            list(self.epoch_checkpoints(doc).values()) + list(self.snapshots(doc).values())

    def costs(self, doc):
        return os.path.join(self.run_dir(doc), "costs.jsonl")

    def run_log(self, doc):
        return os.path.join(self.run_dir(doc), "log.txt")

    def run_config(self, doc):
        return os.path.join(self.run_dir(doc), "config.yml")

    def earlybird_record(self, doc):
        return os.path.join(self.run_dir(doc), "earlybird.json")

    def done_marker(self, doc):
        return os.path.join(self.run_dir(doc), "DONE")

    def run_lock(self, doc):
        """Held while a process trains in the run (core/lock.py)."""
        return os.path.join(self.run_dir(doc), "LOCK")

    def training_grid(self, doc, epoch):
        return os.path.join(self.run_dir(doc), "samples", f"ep{epoch}.png")

    # --- masks and pruned tickets ----------------------------------------------------------
    def masks_dir(self, doc):
        return os.path.join(self.exp, "pruned", doc, "masks")

    def models_dir(self, doc):
        return os.path.join(self.exp, "pruned", doc, "models")

    def mask_file(self, doc, ratio, pruner, epoch):
        return os.path.join(self.masks_dir(doc), mask_stem(doc, ratio, pruner, epoch) + ".npy")

    def ticket_file(self, doc, ratio, pruner, epoch):
        return os.path.join(self.models_dir(doc), mask_stem(doc, ratio, pruner, epoch) + ".pth")

    def earlybird_result(self, doc, ratio, pruner):
        return earlybird_result_in(self.masks_dir(doc), ratio, pruner)

    # --- TA-EB tickets -----------------------------------------------------------------------
    def tickets_dir(self, doc):
        return os.path.join(self.exp, "tickets", doc)

    def manifest(self, doc):
        return os.path.join(self.tickets_dir(doc), "tickets.yml")

    def ticket_placement(self, doc):
        """Which GPU slot each ticket ran on (the manifest's placement, kept across reruns)."""
        return os.path.join(self.tickets_dir(doc), "placement.json")

    def tickets_lock(self, doc):
        return os.path.join(self.tickets_dir(doc), "LOCK")

    def region_log(self, doc, rng):
        return os.path.join(self.tickets_dir(doc), "logs", f"region_{rng[0]}_{rng[1]}.log")

    def slurm_script(self, doc, rng):
        return os.path.join(self.tickets_dir(doc), "slurm", f"region_{rng[0]}_{rng[1]}.sbatch")

    def slurm_jobs(self, doc):
        return os.path.join(self.tickets_dir(doc), "slurm", "jobs.json")

    # --- samples, metrics, report ----------------------------------------------------------
    def samples_dir(self, name):
        return os.path.join(self.exp, "samples", name)

    def metric_file(self, name):
        return os.path.join(self.exp, "samples", f"{name}.metric.json")

    def metric_cache(self):
        return os.path.join(self.exp, "metric")

    def report_dir(self, doc):
        return os.path.join(self.exp, "report", doc)

    def report_file(self, doc):
        """The results table of a pipeline (results.json and .csv beside it)."""
        return os.path.join(self.report_dir(doc), "results.md")

    def study_page(self):
        return os.path.join(self.report_dir("study"), "results.md")

    def study_wall(self):
        """The study's wall-clock summed over its invocations."""
        return os.path.join(self.report_dir("study"), "wall.json")

    def pipeline_config(self, doc):
        """The resolved config the pipeline of dense run ``doc`` hands to every stage."""
        return os.path.join(self.exp, "pipeline", f"{doc}.yml")

    def pipeline_lock(self, doc):
        return os.path.join(self.exp, "pipeline", f"{doc}.lock")

    def plan_dir(self, doc):
        """plan_regions.py's output for dense run ``doc``: plan.yml, plan.png."""
        return os.path.join(self.exp, "plans", doc)

    def plan_file(self, doc):
        return os.path.join(self.plan_dir(doc), "plan.yml")

    def target_record(self, name):
        """The fine-tune-to-target (or dense plateau) decision of run or ticket set ``name``."""
        return os.path.join(self.exp, "targets", f"{name}.json")

    def curve_file(self, name):
        """Quality along training of run (or stitched TA-EB) ``name``."""
        return os.path.join(self.exp, "curves", f"{name}.jsonl")


def earlybird_result_in(mask_dir, ratio, pruner):
    """Where find_earlybird writes its result for one mask series."""
    return os.path.join(mask_dir, f"earlybird-{ratio_key(ratio)}-{pruner}.json")


def overlap_stem_in(mask_dir, ratio, pruner):
    return os.path.join(mask_dir, f"overlap-{ratio_key(ratio)}-{pruner}")


def folder_lock(folder):
    """The lock beside a sample folder while a process fills it: {folder}.lock."""
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), os.path.basename(folder) + ".lock")


def sample_grid_of(folder):
    """The grid PNG written beside a sample folder: {folder}_grid.png."""
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), os.path.basename(folder) + "_grid.png")
