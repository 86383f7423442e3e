"""Export a checkpoint to the field's formats (core/interop.py).

  # a dense network -> a diffusers UNet2DModel folder (+ scheduler/ for DDPMPipeline)
  python earlybird_scripts/export.py --restore_from checkpoints/logs/cifar10/ckpt.pth \
      --to diffusers --out exported/cifar10
  # any network, a pruned ticket too -> one .safetensors file with its pruning history
  python earlybird_scripts/export.py --restore_from checkpoints/logs/cifar10_eb_0.3/ckpt.pth \
      --to safetensors --out exported/cifar10_eb_0.3.safetensors

Both load back with --restore_from (training, pruning, sampling). In Python:
``UNet2DModel.from_pretrained(DIR)``, ``DDPMScheduler.from_pretrained(DIR,
subfolder="scheduler")``; a ticket: ``core.interop.ticket_on_unet2d(FILE)``.
"""
import argparse

import _common  # noqa: F401

from utils.errors import UserError, run_cli


def build_parser():
    from core.config import add_override_flag
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--restore_from", required=True,
                   help="a checkpoint, a .safetensors file or a diffusers folder "
                        "(default: required)")
    p.add_argument("--to", required=True, choices=["diffusers", "safetensors"],
                   help="diffusers: a UNet2DModel folder (dense networks); safetensors: one file "
                        "with model arguments and pruning history (default: required)")
    p.add_argument("--out", required=True, help="the folder or .safetensors file (default: "
                                                "required)")
    p.add_argument("--no_ema", action="store_true",
                   help="export the raw weights instead of the EMA ones (default: EMA)")
    p.add_argument("--config", default=None,
                   help="for the scheduler's betas when the checkpoint holds no config "
                        "(default: the checkpoint's own)")
    add_override_flag(p)
    return p


def betas_of(checkpoint, a):
    """The training schedule's betas: from the checkpoint's config, else --config's."""
    from models.diffusion import get_beta_schedule
    diffusion = (checkpoint.get("config") or {}).get("diffusion")
    if diffusion is None:
        if a.config is None:
            raise UserError(f"{a.restore_from}: holds no config; pass --config for its noise "
                            f"schedule")
        from core.config import flatten_overrides, load_config
        diffusion = vars(load_config(a.config, flatten_overrides(a.override)).diffusion)
    return get_beta_schedule(diffusion["beta_schedule"], beta_start=diffusion["beta_start"],
                             beta_end=diffusion["beta_end"],
                             num_diffusion_timesteps=diffusion["num_diffusion_timesteps"])


def main(argv=None):
    a = build_parser().parse_args(argv)
    from core import interop
    from core.checkpoint import load_checkpoint, pick_weights
    c = load_checkpoint(a.restore_from)
    if not c.get("model_args"):  # a bare state dict: the config says which network it is
        if a.config is None:
            raise UserError(f"{a.restore_from}: bare weights; pass --config for their network")
        from core.config import flatten_overrides, load_config
        c["model_args"] = load_config(a.config, flatten_overrides(a.override)).model_kwargs()
    weights = pick_weights(c, not a.no_ema, a.restore_from)
    if a.to == "diffusers":
        if a.out.endswith(".safetensors"):
            raise UserError("--to diffusers writes a folder: --out names a folder")
        interop.diffusers_config(c["model_args"])  # refuses what no diffusers config can be
        if c.get("pruning"):
            raise UserError(f"{a.restore_from}: a pruned ticket cannot be a diffusers folder "
                            f"(its config would hold the dense widths): export it with "
                            f"--to safetensors")
        interop.export_diffusers(weights, c["model_args"], a.out, betas=betas_of(c, a))
        print(f"diffusers UNet2DModel: {a.out} (scheduler config in "
              f"{a.out}/scheduler)")
    else:
        if not a.out.endswith(".safetensors"):
            raise UserError("--to safetensors writes one file: --out must end in .safetensors")
        interop.export_safetensors(weights, a.out, model_args=c["model_args"],
                                   pruning=c.get("pruning"), config=c.get("config"))
        print(f"safetensors: {a.out}" + (" (pruned ticket: its pruning history is in the "
                                          "file)" if c.get("pruning") else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
