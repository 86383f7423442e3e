"""Prune checkpoints: masks (.npy + JSON sidecar) and optionally the pruned model.

  python earlybird_scripts/prune.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni \
      --use_ema --restore_from checkpoints/logs/cifar10/ckpt_ep3.pth --pruner magnitude \
      --pruning_ratio 0.3 --thr 0.05 --save_pruned_model cifar10_pruned-0.3-magnitude-3.pth \
      --save_masks
Many at once (one dependency graph for all): --restore_from a folder or glob, several ratios.
"""
import argparse

import _common  # noqa: F401

from core.config import flatten_overrides
from core.options import Experiment, add_run_args, check_name, flag_overrides
from utils.errors import UserError, run_cli

PRUNERS_HELP = "magnitude | taylor | random | diff-pruning ('ours' = diff-pruning)"
CONFIG_FLAGS = {"pruner": "earlybird.pruner", "thr": "pruning.thr",
                "taylor_batch_size": "pruning.taylor_batch_size", "use_ema": "pruning.use_ema"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, "the dense run; masks go to {exp}/pruned/{doc}/masks")
    p.add_argument("--ni", action="store_true",
                   help="accepted for the seed's commands: outputs are always replaced "
                        "(default: off)")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--use_ema", action="store_true", default=None,
                     help="prune the EMA weights (sets pruning.use_ema=true; default: the "
                          "config's pruning.use_ema)")
    ema.add_argument("--no_ema", dest="use_ema", action="store_false",
                     help="prune the raw weights: sets pruning.use_ema=false (default: the config's)")
    p.add_argument("--restore_from", required=True, nargs="+",
                   help="checkpoint(s), a folder of ckpt_ep*.pth, or a glob (default: required)")
    p.add_argument("--pruner", default=None,
                   help=f"{PRUNERS_HELP}; sets earlybird.pruner (default: the config's)")
    p.add_argument("--pruning_ratio", type=float, nargs="+", required=True,
                   help="one or more ratios in (0, 1) (default: required)")
    p.add_argument("--thr", type=float, default=None,
                   help="Diff-Pruning loss threshold; sets pruning.thr (default: the config's)")
    p.add_argument("--taylor_batch_size", type=int, default=None,
                   help="real images for taylor / diff-pruning; sets pruning.taylor_batch_size "
                        "(default: the config's)")
    p.add_argument("--save_pruned_model", default=None, nargs="?", const="",
                   help="save the pruned model; NAME: its file under {exp}/pruned/{doc}/models "
                        "(default: not saved; without NAME: named like the mask)")
    p.add_argument("--save_masks", action="store_true", help="save the masks (default: off)")
    p.add_argument("--device", default="cpu", help="(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="print nothing (default: off)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from runners.masks import pruner_arg
    from core.config import check_setting
    from runners.pruning import expand_checkpoints, prune_checkpoints
    if args.pruner is not None:
        args.pruner = pruner_arg(args.pruner)
    check_name(args.doc, "--doc")
    for r in args.pruning_ratio:
        check_setting("pipeline", "pruning_ratio", r, "--pruning_ratio")
    xp = Experiment.load(args.config, args.exp, args.doc,
                         flatten_overrides(args.override) + flag_overrides(args, CONFIG_FLAGS))
    ckpts = expand_checkpoints(args.restore_from)
    if args.save_pruned_model and (len(ckpts) > 1 or len(args.pruning_ratio) > 1):
        raise UserError("--save_pruned_model NAME names one file; with several checkpoints or "
                        "ratios pass --save_pruned_model without a name")
    prune_checkpoints(xp, ckpts, args.pruning_ratio,
                      save_masks=args.save_masks, save_models=args.save_pruned_model is not None,
                      model_name=args.save_pruned_model or None, device=args.device,
                      log=None if args.quiet else print)
    return 0


if __name__ == "__main__":
    run_cli(main)
