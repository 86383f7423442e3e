"""Train, fine-tune or sample the DDPM UNet (the seed's main.py interface).

  python main.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni --use_ema \
      --train_from_scratch --skip_type quad
  python main.py --config cifar10.yml --exp checkpoints --doc cifar10 --ni --sample --fid \
      --use_ema --skip_type quad --timesteps 100 --eta 0 --image_folder samples/x \
      --restore_from checkpoints/logs/cifar10/ckpt_ep9.pth
"""
import argparse
import os

from runners.config import add_override_flag, flatten_overrides, load_config
from runners.errors import UserError, run_cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    p.add_argument("--exp", default="exp", help="experiment root folder")
    p.add_argument("--doc", default="run", help="run name: logs go to {exp}/logs/{doc}")
    p.add_argument("--seed", type=int, default=None, help="overrides training.seed")
    p.add_argument("--comment", default="")
    p.add_argument("--verbose", default="info")
    p.add_argument("--ni", action="store_true", help="no interaction: overwrite earlier runs")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    # training
    p.add_argument("--train_from_scratch", action="store_true")
    p.add_argument("--resume_training", action="store_true")
    p.add_argument("--restore_from", default=None, help="checkpoint to sample from / start at")
    p.add_argument("--load_pruned_model", default=None, help="fine-tune this pruned ticket")
    p.add_argument("--ts_range", nargs=2, type=int, default=None, metavar=("LO", "HI"),
                   help="train only on timesteps in [LO, HI)")
    p.add_argument("--use_ema", action="store_true", help="sample/restore with EMA weights")
    # sampling
    p.add_argument("--sample", action="store_true")
    p.add_argument("--fid", action="store_true", help="write individual images (for FID)")
    p.add_argument("--interpolation", action="store_true")
    p.add_argument("--sequence", action="store_true")
    p.add_argument("--use_pretrained", action="store_true")
    p.add_argument("-i", "--image_folder", default=None)
    p.add_argument("--n_samples", type=int, default=None)
    p.add_argument("--sample_type", choices=["generalized", "ddpm_noisy"], default=None)
    p.add_argument("--skip_type", choices=["uniform", "quad"], default=None)
    p.add_argument("--timesteps", type=int, default=None, help="sampling steps")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--tickets", default=None, help="tickets.yml: stitched TA-EB sampling")
    add_override_flag(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    overrides = flatten_overrides(args.override)
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    cfg = load_config(args.config, overrides)
    if args.interpolation or args.sequence or args.use_pretrained:
        raise UserError("--interpolation, --sequence and --use_pretrained are not supported; "
                        "use --restore_from with a checkpoint (official DDPM weights load too)")
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    if args.timesteps is not None and not 0 < args.timesteps <= T:
        raise UserError(f"--timesteps {args.timesteps}: expected 1..{T}")
    if args.n_samples is not None and args.n_samples <= 0:
        raise UserError("--n_samples must be positive")
    opts = dict(exp=args.exp, doc=args.doc, ni=args.ni, resume=args.resume_training,
                restore_from=args.restore_from, load_pruned_model=args.load_pruned_model,
                ts_range=args.ts_range, use_ema=args.use_ema, device=args.device,
                image_folder=args.image_folder, n_samples=args.n_samples,
                sample_type=args.sample_type, skip_type=args.skip_type,
                timesteps=args.timesteps, eta=args.eta, tickets=args.tickets)
    for key in ("restore_from", "load_pruned_model", "tickets"):
        if opts[key] and not os.path.isfile(opts[key]):
            raise UserError(f"--{key} {opts[key]}: file not found")
    if args.sample:
        from runners.sample import run_sampling
        return run_sampling(cfg, opts)
    from runners.train import train
    return train(cfg, opts)


if __name__ == "__main__":
    run_cli(main)
