"""Names of the importance criteria (kept apart from models/pruning.py, which imports
torch-pruning, so that file names can be parsed without it)."""

PRUNERS = ("magnitude", "taylor", "random", "diff-pruning")
# importance from forward + backward passes over real data (the others read weights only)
GRADIENT_PRUNERS = ("taylor", "diff-pruning")
# 'ours' is the authors' release's name for Diff-Pruning
ALIASES = {"ours": "diff-pruning", "diff_pruning": "diff-pruning", "l2": "magnitude"}


def canonical_pruner(name):
    name = ALIASES.get(name, name)
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r} (expected one of {', '.join(PRUNERS)}, "
                         f"or 'ours')")
    return name


def needs_gradients(name):
    """Whether the pruner's importance runs forward + backward passes over real data."""
    return canonical_pruner(name) in GRADIENT_PRUNERS
