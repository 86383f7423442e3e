"""The methods a report and the study compare, and the one record of a result row.

A ``Method`` says what a row is called, which runs hold it (named by core/layout.py from the
dense run and the settings, never parsed back out of a name) and which dense training its cost
carries: none (dense itself), up to its EB epoch (the EB tickets and TA-EB), or the whole dense
run (train-prune-finetune). Ticket sets run side by side: their critical path is the slowest
ticket (core.runlog.critical_and_total). ``Row`` is one method's numbers in one experiment.
"""
from dataclasses import dataclass
from typing import Optional

from core.layout import eb_doc, eqflops_doc, plan_set, tpf_doc
from core.runlog import summed_cost


@dataclass(frozen=True)
class Method:
    kind: str
    label: str
    prefix: str                     # dense training it carries: none | eb | all
    tickets: bool = False           # a TA-EB ticket set (stitched)

    def run_name(self, doc, ratio):
        """The fine-tuning run of this method at ``ratio`` (fine-tuned kinds)."""
        return RUN_NAMES[self.kind](doc, ratio)

    def set_name(self, doc):
        """The ticket set of this method (ticket-set kinds)."""
        return plan_set(doc) if self.kind == "taeb_plan" else doc

    def prefix_cost(self, dense_costs, eb_epoch):
        """(wall s, FLOPs) of the dense training this method's cost starts with."""
        if self.prefix == "all":
            return summed_cost(dense_costs)
        if self.prefix == "eb" and eb_epoch is not None:
            return summed_cost(dense_costs, upto=eb_epoch)
        return 0.0, 0


RUN_NAMES = {"eb": eb_doc, "tpf": tpf_doc, "eqflops": eqflops_doc}
METHODS = (Method("dense", "Dense", "none"),
           Method("tpf", "Train-prune-finetune", "all"),
           Method("eb", "EB ticket", "eb"),
           Method("eqflops", "Uniform EB ticket, TA-EB's fine-tuning FLOPs", "eb"),
           Method("taeb", "TA-EB", "eb", tickets=True),
           Method("taeb_plan", "TA-EB planned", "eb", tickets=True))
BY_KIND = {m.kind: m for m in METHODS}
FINETUNED = tuple(m for m in METHODS if m.kind in RUN_NAMES)
TICKET_SETS = tuple(m for m in METHODS if m.tickets)


@dataclass(frozen=True)
class Cost:
    wall_s: float
    flops: float


@dataclass(frozen=True)
class Row:
    """One method's numbers in one experiment (a line of results.md and results.json)."""
    method: Method
    name: str                       # as the table shows it, e.g. "EB ticket (p=0.5)"
    key: str                        # its run (or stitched set) name: samples, metric, curve
    params: int
    macs: float                     # per image (TA-EB: averaged over the sampler's steps)
    eb_epoch: Optional[int]
    epochs: int
    critical: Cost
    total: Cost
    metric: Optional[str] = None    # 'digits-FD' | 'FID'
    value: Optional[float] = None
    valid: Optional[float] = None
    noise_like: Optional[float] = None  # share of samples rougher than every real digit
    final_n: Optional[int] = None   # images the metric scored
    regions: tuple = ()             # ticket sets: their ranges
    ticket_set: str = ""
    schedule: Optional[str] = None
    vs_dense: Optional[tuple] = None    # fixed-budget speed-ups (FLOPs, wall)
    vs_tpf: Optional[tuple] = None
    target: Optional[float] = None
    to_target: Optional[Cost] = None
    to_target_vs_dense: Optional[tuple] = None
    target_record: Optional[dict] = None

    @property
    def kind(self):
        return self.method.kind

    def data(self):
        """The row as plain values, in DATA_COLUMNS order."""
        def pick(pair, i):
            return pair[i] if pair else None
        tt = self.to_target
        return {"method": self.name, "params": self.params, "macs": self.macs,
                "eb_epoch": self.eb_epoch, "train_flops_critical": self.critical.flops,
                "train_flops_total": self.total.flops, "train_s_critical": self.critical.wall_s,
                "train_s_total": self.total.wall_s, "vs_dense_flops": pick(self.vs_dense, 0),
                "vs_dense_wall": pick(self.vs_dense, 1), "vs_tpf_flops": pick(self.vs_tpf, 0),
                "vs_tpf_wall": pick(self.vs_tpf, 1), "metric": self.metric,
                "metric_value": self.value, "valid": self.valid,
                "noise_like": self.noise_like, "target": self.target,
                "to_target_flops": tt.flops if tt else None,
                "to_target_s": tt.wall_s if tt else None,
                "to_target_vs_dense_flops": pick(self.to_target_vs_dense, 0),
                "to_target_vs_dense_wall": pick(self.to_target_vs_dense, 1)}


DATA_COLUMNS = ("method", "params", "macs", "eb_epoch", "train_flops_critical",
                "train_flops_total", "train_s_critical", "train_s_total", "vs_dense_flops",
                "vs_dense_wall", "vs_tpf_flops", "vs_tpf_wall", "metric", "metric_value",
                "valid", "noise_like", "target", "to_target_flops", "to_target_s",
                "to_target_vs_dense_flops", "to_target_vs_dense_wall")

