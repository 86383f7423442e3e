"""Training in steps until a quality rule says stop (docs/evidence.md): the dense reference until
its curve plateaus, a fine-tune (or a TA-EB ticket set) until it reaches the target.

The loops know nothing of processes, files or metrics: a ``Runs`` record hands them what to
call (train to an epoch count, score the curve so far, count the FLOPs spent), so they are
tested with plain functions and no training. The rules themselves are evaluation/targets.py's.
"""
from dataclasses import dataclass
from typing import Callable, List

from evaluation.targets import chunk_ends, plateau_level, plateaued, reached


@dataclass(frozen=True)
class Runs:
    """One run, or the region runs of a ticket set, as the step loops see them."""
    epochs_done: Callable[[], int]          # epochs every run has finished (the fewest)
    finished: Callable[[], bool]            # every run is marked DONE
    advance: Callable[[int], None]          # train every run until that many epochs are done
    score: Callable[[List[int]], list]      # curve points [{epoch, value, metric}] at ends
    flops: Callable[[], float] = lambda: 0  # training FLOPs the runs have spent


def _step(runs, end):
    if runs.epochs_done() < end and not runs.finished():
        runs.advance(end)


def to_plateau(runs, *, every, cap, patience, delta):
    """Train in steps of ``every`` epochs (at most ``cap``) until the last ``patience``
    evaluations do not beat the best before them by more than ``delta``. Returns the plateau
    record (without the run's own counts)."""
    ends, values = [], []
    for end in chunk_ends(every, cap):
        ends.append(end)
        _step(runs, end)
        values = [p["value"] for p in runs.score(ends)]
        if plateaued(values, patience, delta):
            break
    return {"kind": "plateau", "plateaued": plateaued(values, patience, delta),
            "level": plateau_level(values, patience), "values": values,
            "eval_epochs": [e - 1 for e in ends], "patience": patience, "delta": delta,
            "cap": cap}


def to_target(runs, *, target, every, cap_epochs, cap_flops=0.0):
    """Train in steps of ``every`` epochs until the curve's newest point is at or below
    ``target``, or ``cap_epochs`` / ``cap_flops`` (0: none) is spent. An evaluation counts as
    reaching the target only within the FLOPs cap (the last step may run past it). Returns
    the record."""
    ends, curve, spent = [], [], []
    for end in chunk_ends(every, cap_epochs):
        ends.append(end)
        _step(runs, end)
        curve = runs.score(ends)
        spent = (spent + [runs.flops()] * len(curve))[:len(curve)]
        if _first_within(curve, spent, target, cap_flops) is not None or \
                (cap_flops and spent[-1] >= cap_flops):
            break
    hit = _first_within(curve, spent, target, cap_flops)
    return {"kind": "target", "target": target, "reached": hit is not None,
            "epoch": curve[hit]["epoch"] if hit is not None else None, "epochs": ends[-1],
            "finetune_flops": spent[-1] if spent else 0, "values": [p["value"] for p in curve],
            "spent_flops": spent,
            "eval_epochs": [p["epoch"] for p in curve], "cap_epochs": cap_epochs,
            "cap_flops": cap_flops}


def _first_within(curve, spent, target, cap_flops):
    """Index of the first evaluation at or below ``target`` spent within ``cap_flops``."""
    i = reached([p["value"] for p in curve], target)
    return i if i is not None and (not cap_flops or spent[i] <= cap_flops) else None


def finetune_budget(dense_to_target, carried, carried_by_eb):
    """FLOPs a fine-tune may spend (0: no cap). Each method may spend up to the dense
    reference's cost to the target on its critical path, so its fine-tuning gets that less the
    dense training it carries (``carried``). A method that carries all of it already
    (train-prune-finetune carries the whole dense run) cannot reach dense quality at a lower
    cost at all; it gets the EB ticket's fine-tuning spend, so the two are compared at equal
    fine-tuning FLOPs. ``dense_to_target`` None (the dense curve never got there): no cap."""
    if dense_to_target is None:
        return 0.0
    left = dense_to_target - carried
    return left if left > 0 else max(dense_to_target - carried_by_eb, 0.0)
