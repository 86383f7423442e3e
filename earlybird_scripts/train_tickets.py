"""Fine-tune all TA-EB tickets of a config's ``taeb.regions``: one GPU (or group of GPUs) each,
extra tickets queue; or one Slurm job each. Finished tickets are never retrained.

  python earlybird_scripts/train_tickets.py --config cifar10.yml --exp checkpoints \\
      --doc cifar10 [--gpus 0,1,2,3,4,5,6,7 --gpus_per_ticket 2] [--max_parallel K]
  python earlybird_scripts/train_tickets.py ... --launcher slurm --partition gpu \\
      --time 24:00:00 [--dry_run]            # one sbatch job per unfinished ticket
  python earlybird_scripts/train_tickets.py ... --collect   # the manifest, once all are done
"""
import argparse

import _common  # noqa: F401

from core.config import flatten_overrides
from core.options import Experiment, add_run_args, check_name
from utils.errors import UserError, run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, "the dense run whose checkpoints are pruned")
    p.add_argument("--gpus", default=None,
                   help="comma-separated GPU ids (default: all visible GPUs, else the CPU)")
    p.add_argument("--gpus_per_ticket", type=int, default=1,
                   help="GPUs per ticket: more than 1 runs each ticket with torchrun (DDP); on "
                        "the CPU, that many gloo processes (default: %(default)s)")
    p.add_argument("--tickets_per_gpu", type=int, default=1,
                   help="tickets sharing each GPU group: a small ticket leaves a GPU mostly "
                        "idle (run CUDA MPS so their kernels overlap; docs/scaling.md) "
                        "(default: %(default)s)")
    p.add_argument("--max_parallel", type=int, default=None,
                   help="tickets trained at once (default: one per GPU group; on the CPU one at "
                        "a time, each with every core)")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="run the tickets here, or submit one sbatch job per unfinished ticket "
                        "(default: %(default)s)")
    p.add_argument("--dry_run", action="store_true",
                   help="slurm: write the sbatch scripts and print the commands, submit nothing "
                        "(default: submit)")
    p.add_argument("--collect", action="store_true",
                   help="write the manifest if every ticket is trained, else list the "
                        "unfinished ones and exit 1 (default: train)")
    g = p.add_argument_group("slurm resources (or --slurm_template)")
    g.add_argument("--partition", default=None, help="#SBATCH --partition (default: none)")
    g.add_argument("--time", dest="time_limit", default=None,
                   help="#SBATCH --time, e.g. 24:00:00 (default: none)")
    g.add_argument("--cpus_per_task", type=int, default=None,
                   help="#SBATCH --cpus-per-task (default: none)")
    g.add_argument("--mem", default=None, help="#SBATCH --mem, e.g. 64G (default: none)")
    g.add_argument("--account", default=None, help="#SBATCH --account (default: none)")
    g.add_argument("--slurm_template", default=None,
                   help="an sbatch script template with {job_name} {log} {gpus} {cwd} "
                        "{command} fields, used instead of the flags above (default: none)")
    p.add_argument("--no_ema", action="store_true",
                   help="prune the raw (not EMA) weights: sets pruning.use_ema=false "
                        "(default: the config's pruning.use_ema)")
    p.add_argument("--ticket_set", default="",
                   help="name of this set of tickets (folder tickets/NAME, runs NAME_taeb_LO_HI): "
                        "a second set of regions of the same dense run needs its own "
                        "(default: --doc)")
    p.add_argument("--until_epoch", type=int, default=None, metavar="E",
                   help="train every ticket to E epochs and pause there (resumable; no "
                        "manifest until they finish) (default: taeb.finetune_epochs)")
    p.add_argument("--no_progress", action="store_true",
                   help="no progress bars (default: bars)")
    return p


def _gpus(text):
    if not text:
        return None
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise UserError(f"--gpus {text}: expected comma-separated integers")


def main(argv=None):
    a = build_parser().parse_args(argv)
    check_name(a.doc, "--doc")
    if a.max_parallel is not None and a.max_parallel < 1:
        raise UserError("--max_parallel must be at least 1")
    if a.gpus_per_ticket < 1:
        raise UserError("--gpus_per_ticket must be at least 1")
    if a.tickets_per_gpu < 1:
        raise UserError("--tickets_per_gpu must be at least 1")
    if a.dry_run and a.launcher != "slurm":
        raise UserError("--dry_run goes with --launcher slurm")
    overrides = flatten_overrides(a.override) + (["pruning.use_ema=false"] if a.no_ema else [])
    if a.until_epoch is not None and a.until_epoch < 1:
        raise UserError(f"--until_epoch {a.until_epoch}: expected at least 1")
    xp = Experiment.load(a.config, a.exp, a.doc, overrides, a.ticket_set)
    from runners.tickets import Launch, train_tickets
    launch = Launch(gpus=_gpus(a.gpus), max_parallel=a.max_parallel,
                    gpus_per_ticket=a.gpus_per_ticket, tickets_per_gpu=a.tickets_per_gpu,
                    launcher=a.launcher, dry_run=a.dry_run,
                    collect=a.collect, until_epoch=a.until_epoch, slurm_template=a.slurm_template,
                    slurm=dict(partition=a.partition, time_limit=a.time_limit,
                               cpus=a.cpus_per_task, mem=a.mem, account=a.account),
                    progress=not a.no_progress)
    return train_tickets(xp, launch)


if __name__ == "__main__":
    run_cli(main)
