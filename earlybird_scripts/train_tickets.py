"""Fine-tune all TA-EB tickets of a config's ``taeb.regions`` in parallel, one process each.

  python earlybird_scripts/train_tickets.py --config cifar10.yml --exp checkpoints \
      --doc cifar10 [--gpus 0,1,2,3] [--max_parallel K]
"""
import argparse

import _common  # noqa: F401

from runners.config import add_override_flag, flatten_overrides, load_config
from runners.options import check_name
from utils.errors import UserError, run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    p.add_argument("--exp", default="exp", help="experiment root (default: %(default)s)")
    p.add_argument("--doc", default="run",
                   help="the dense run whose checkpoints are pruned (default: %(default)s)")
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids (default: all visible GPUs, else the CPU)")
    p.add_argument("--max_parallel", type=int, default=None,
                   help="tickets trained at once (default: one per GPU; on the CPU one at a time, "
                        "each with every core)")
    p.add_argument("--no_ema", action="store_true",
                   help="prune the raw (not EMA) weights: sets pruning.use_ema=false "
                        "(default: the config's pruning.use_ema)")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bars (default: bars)")
    add_override_flag(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    check_name(a.doc, "--doc")
    overrides = flatten_overrides(a.override) + (["pruning.use_ema=false"] if a.no_ema else [])
    cfg = load_config(a.config, overrides)
    gpus = None
    if a.gpus:
        try:
            gpus = [int(g) for g in a.gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus {a.gpus}: expected comma-separated integers")
    if a.max_parallel is not None and a.max_parallel < 1:
        raise UserError("--max_parallel must be at least 1")
    from runners.tickets import train_tickets
    return train_tickets(cfg, config_name=a.config, exp=a.exp, doc=a.doc, overrides=overrides,
                         gpus=gpus, max_parallel=a.max_parallel, progress=not a.no_progress)


if __name__ == "__main__":
    run_cli(main)
