"""Train, fine-tune or sample the DDPM UNet (the seed's main.py interface).

  python main.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni --use_ema \
      --train_from_scratch --skip_type quad
  python main.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni --sample --fid \
      --use_ema --skip_type quad --timesteps 100 --eta 0 --image_folder samples/x \
      --restore_from checkpoints/logs/cifar10/ckpt_ep9.pth
"""
import argparse
import sys

from core.config import add_override_flag, flatten_overrides, load_config
from core.options import RunOptions, flag_overrides
from utils.errors import UserError, run_cli

# flags that name a config value: given, they override it
CONFIG_FLAGS = {"seed": "training.seed", "timesteps": "sampling.timesteps",
                "skip_type": "sampling.skip_type", "sample_type": "sampling.sample_type",
                "eta": "sampling.eta", "n_samples": "sampling.n_samples"}

# --verbose values (the seed passes logging level names) -> what the terminal shows
VERBOSITY_NAMES = {"debug": "debug", "info": "info", "warning": "quiet", "error": "quiet",
                   "critical": "quiet", "quiet": "quiet"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    p.add_argument("--exp", default="exp", help="experiment root folder (default: %(default)s)")
    p.add_argument("--doc", default="run",
                   help="run name: logs go to {exp}/logs/{doc} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="sets training.seed (default: the config's)")
    p.add_argument("--comment", default="", help="a note written into log.txt (default: none)")
    p.add_argument("--verbose", default="info",
                   help="what the terminal shows: info (start, one line per epoch, summary), "
                        "debug (also every logged step), warning / quiet (nothing but "
                        "errors) (default: %(default)s)")
    p.add_argument("--quiet", action="store_true",
                   help="same as --verbose quiet (default: off)")
    p.add_argument("--ni", action="store_true",
                   help="no interaction: start the run over, replacing its earlier results "
                        "(default: off)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 (default: this rank's GPU if any, else cpu)")
    # training
    p.add_argument("--train_from_scratch", action="store_true",
                   help="start from random weights: the default without --restore_from / "
                        "--load_pruned_model (default: off)")
    p.add_argument("--resume_training", action="store_true",
                   help="continue {exp}/logs/{doc}/ckpt.pth exactly; when it is missing or "
                        "unreadable, the newest intact snapshot or per-epoch file (saying what "
                        "is lost), or, if the run never saved a whole state, start it over "
                        "(default: off)")
    p.add_argument("--resume_from_last_good", action="store_true",
                   help="accepted for older job scripts: --resume_training falls back by "
                        "itself now (default: off)")
    p.add_argument("--until_epoch", type=int, default=None, metavar="E",
                   help="pause after epoch E-1 (E epochs done in all): the run is left "
                        "resumable, not finished, and the schedule stays that of "
                        "training.n_epochs; --resume_training continues it exactly (a "
                        "pipeline's fine-tune-to-target steps runs this way) (default: "
                        "training.n_epochs)")
    p.add_argument("--restore_from", default=None,
                   help="checkpoint to sample from / start training at (default: none)")
    p.add_argument("--load_pruned_model", default=None,
                   help="fine-tune this pruned ticket (default: none)")
    p.add_argument("--ts_range", nargs=2, type=int, default=None, metavar=("LO", "HI"),
                   help="train only on timesteps in [LO, HI) (default: all)")
    p.add_argument("--use_ema", action="store_true",
                   help="sample / restore with the EMA weights (default: off)")
    # sampling
    p.add_argument("--sample", action="store_true", help="sample instead of training "
                   "(default: off)")
    p.add_argument("--fid", action="store_true",
                   help="accepted for the seed's commands: --sample always writes one PNG per "
                        "image, which cal_fid.sh reads (default: off)")
    p.add_argument("--interpolation", action="store_true", help="not supported")
    p.add_argument("--sequence", action="store_true", help="not supported")
    p.add_argument("--use_pretrained", action="store_true", help="not supported")
    p.add_argument("-i", "--image_folder", default=None,
                   help="where --sample writes {index:06d}.png (default: required to sample)")
    p.add_argument("--n_samples", type=int, default=None,
                   help="sets sampling.n_samples (default: the config's)")
    p.add_argument("--sample_type", choices=["generalized", "ddpm_noisy"], default=None,
                   help="sets sampling.sample_type (default: the config's)")
    p.add_argument("--skip_type", choices=["uniform", "quad"], default=None,
                   help="sets sampling.skip_type (default: the config's)")
    p.add_argument("--timesteps", type=int, default=None,
                   help="sampling steps; sets sampling.timesteps (default: the config's)")
    p.add_argument("--eta", type=float, default=None,
                   help="DDIM eta; sets sampling.eta (default: the config's)")
    p.add_argument("--tickets", default=None,
                   help="tickets.yml: stitched TA-EB sampling (default: none)")
    add_override_flag(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.interpolation or args.sequence or args.use_pretrained:
        raise UserError("--interpolation, --sequence and --use_pretrained are not supported; "
                        "use --restore_from with a checkpoint (official DDPM weights load too)")
    if args.train_from_scratch and (args.restore_from or args.load_pruned_model or
                                    args.resume_training):
        raise UserError("--train_from_scratch restores nothing: drop it, or drop --restore_from "
                        "/ --load_pruned_model / --resume_training")
    level = "quiet" if args.quiet else VERBOSITY_NAMES.get(args.verbose.lower())
    if level is None:
        raise UserError(f"--verbose {args.verbose}: expected one of "
                        f"{', '.join(sorted(VERBOSITY_NAMES))}")
    cfg = load_config(args.config, flatten_overrides(args.override) +
                      flag_overrides(args, CONFIG_FLAGS))
    if args.resume_from_last_good and not args.resume_training:
        raise UserError("--resume_from_last_good goes with --resume_training")
    if args.until_epoch is not None and args.until_epoch < 1:
        raise UserError(f"--until_epoch {args.until_epoch}: expected at least 1")
    opts = RunOptions(exp=args.exp, doc=args.doc, ni=args.ni, resume=args.resume_training,
                      restore_from=args.restore_from, load_pruned_model=args.load_pruned_model,
                      use_ema=args.use_ema, device=args.device,
                      ts_range=tuple(args.ts_range) if args.ts_range else None,
                      until_epoch=args.until_epoch,
                      image_folder=args.image_folder, tickets=args.tickets,
                      comment=args.comment, verbosity=level,
                      command=" ".join(sys.argv) if argv is None else None)
    if args.sample:
        from runners.sample import run_sampling
        return run_sampling(cfg, opts)
    from runners.train import train
    return train(cfg, opts)


if __name__ == "__main__":
    run_cli(main)
