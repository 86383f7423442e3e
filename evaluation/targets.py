"""Training to a quality target, and a dense reference that has converged (docs/evidence.md).

The rules, no I/O but the records: a dense curve has plateaued when its last ``patience``
evaluations each fail to beat the best before them by more than ``delta``; its level (the mean
of those evaluations and the one before) is the target a fine-tune must reach. A fine-tune
stops at the first evaluation at or below the target, or at its cap (epochs, or FLOPs). Each
decision is written to {exp}/targets/{name}.json with the numbers it was made from.
"""
from utils.io import atomic_write_json, read_json


def plateaued(values, patience, delta):
    """Whether the curve ``values`` (in evaluation order, lower is better) has plateaued."""
    if patience < 1 or len(values) < patience + 1:
        return False
    best_before = min(values[:-patience])
    return min(values[-patience:]) > best_before - delta


def plateau_level(values, patience):
    """The reference quality of a plateaued curve: the mean of its last patience + 1 points."""
    window = values[-(patience + 1):]
    return sum(window) / len(window)


def reached(values, target):
    """Index of the first evaluation at or below ``target``, else None."""
    return next((i for i, v in enumerate(values) if v <= target), None)


def chunk_ends(every, cap):
    """Epoch counts at which a run is paused and evaluated: every, 2 every, ..., cap."""
    ends = list(range(every, cap, every))
    return ends + [cap]


def read_record(path):
    return read_json(path, None)


def write_record(path, record):
    atomic_write_json(path, record)
    return record
