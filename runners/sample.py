"""Sampling to a folder (DESIGN.md steps 6-7): one seed per image, ``{index:06d}.png``, so
sampling shards and resumes exactly, plus a grid PNG. Works with a checkpoint or a stitched
TA-EB ticket manifest."""
import math
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from datasets import inverse_data_transform
from models.diffusion import Diffusion, sample_images
from models.stitched import StitchedTickets, check_regions
from runners import checkpoint as ck
from runners.errors import UserError
from runners.train import autocast_for, select_device, use_channels_last


def load_manifest(path, num_timesteps=None):
    """tickets.yml -> list of region dicts with resolved checkpoint paths."""
    import yaml
    if not os.path.isfile(path):
        raise UserError(f"ticket manifest not found: {path}")
    try:
        with open(path) as f:
            man = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(man, dict) or not isinstance(man.get("tickets"), list) or \
            not man["tickets"]:
        raise UserError(f"{path}: expected a mapping with a non-empty 'tickets' list")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, t in enumerate(man["tickets"]):
        if not isinstance(t, dict) or "range" not in t or "checkpoint" not in t:
            raise UserError(f"{path}: ticket {i} needs 'range' and 'checkpoint'")
        r = t["range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(v, int) for v in r)):
            raise UserError(f"{path}: ticket {i}: range must be [lo, hi], got {r!r}")
        cp = t["checkpoint"]
        cand = cp if os.path.isabs(cp) else os.path.join(base, cp)
        if not os.path.isfile(cand) and os.path.isfile(cp):
            cand = cp
        if not os.path.isfile(cand):
            raise UserError(f"{path}: ticket {i} [{r[0]}, {r[1]}): checkpoint {cp} not found")
        out.append(dict(t, checkpoint=cand))
    T = num_timesteps or man.get("num_timesteps")
    try:
        check_regions([t["range"] for t in out], T, where=path)
    except ValueError as e:
        raise UserError(str(e))
    return out


def load_sampling_model(cfg, opts, device):
    """The network to sample with: a checkpoint (--restore_from / latest) or stitched tickets."""
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    if opts.get("tickets"):
        tickets, regions = [], []
        for t in load_manifest(opts["tickets"], T):
            c = ck.load_checkpoint(t["checkpoint"])
            tickets.append(ck.model_from_checkpoint(c, t["checkpoint"], opts.get("use_ema")))
            regions.append(t["range"])
        model = StitchedTickets(tickets, regions, T)
    else:
        path = opts.get("restore_from") or os.path.join(opts["exp"], "logs", opts["doc"],
                                                        "ckpt.pth")
        c = ck.load_checkpoint(path)
        args = c.get("model_args")
        if args is None:
            from models.unet import model_args_from_config
            args = model_args_from_config(cfg)
        model = ck.model_from_checkpoint(c, path, opts.get("use_ema"), model_args=args)
        if args["in_channels"] != cfg["data"]["channels"]:
            raise UserError(f"{path}: network takes {args['in_channels']} channels, "
                            f"data.channels is {cfg['data']['channels']}")
    model.to(device).eval()
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    return model


def sampler_settings(cfg, opts):
    """Sampler keyword arguments: command-line flags where given, else the config's."""
    s = cfg["sampling"]
    return dict(timesteps=opts.get("timesteps") or s["timesteps"],
                skip_type=opts.get("skip_type") or s["skip_type"],
                sample_type=opts.get("sample_type") or s["sample_type"],
                eta=s["eta"] if opts.get("eta") is None else opts["eta"])


def image_noise(index, shape, seed):
    g = torch.Generator().manual_seed(seed + index)
    return torch.randn(shape, generator=g)


def save_png(x01, path):
    """x01: [C, H, W] in [0, 1] -> PNG (grayscale for one channel)."""
    arr = (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr)
    tmp = path + ".tmp.png"
    img.save(tmp)
    os.replace(tmp, path)


def sample_to_folder(model, cfg, folder, n_samples, *, device, timesteps, skip_type,
                     sample_type, eta, batch_size=None, seed=None, progress=True):
    """Write images 000000.png .. (n-1) skipping those present; returns the count written."""
    d, s = cfg["data"], cfg["sampling"]
    seed = s["seed"] if seed is None else seed
    batch_size = batch_size or s["batch_size"]
    os.makedirs(folder, exist_ok=True)
    todo = [i for i in range(n_samples)
            if not os.path.isfile(os.path.join(folder, f"{i:06d}.png"))]
    diffusion = Diffusion(cfg["diffusion"], device)
    autocast = autocast_for(cfg, device)
    shape = (d["channels"], d["image_size"], d["image_size"])
    bar = tqdm(total=len(todo), desc="sampling", disable=not progress, dynamic_ncols=True)
    for b in range(0, len(todo), batch_size):
        idx = todo[b:b + batch_size]
        noise = torch.stack([image_noise(i, shape, seed) for i in idx]).to(device)
        gen = torch.Generator(device=device).manual_seed(seed + idx[0] + 1_000_003)
        x = sample_images(model, diffusion, noise, timesteps=timesteps, skip_type=skip_type,
                          sample_type=sample_type, eta=eta, generator=gen, autocast=autocast)
        x = inverse_data_transform(x.float()).cpu()
        for i, img in zip(idx, x):
            save_png(img, os.path.join(folder, f"{i:06d}.png"))
        bar.update(len(idx))
    bar.close()
    write_grid(folder, grid_path(folder))
    return len(todo)


def grid_path(folder):
    return os.path.join(os.path.dirname(os.path.abspath(folder)),
                        os.path.basename(os.path.abspath(folder)) + "_grid.png")


def write_grid(folder, path, n=64):
    """A grid of the first n images of a sample folder."""
    import torchvision.utils as vutils
    files = sorted(f for f in os.listdir(folder) if f.endswith(".png") and f[:6].isdigit())[:n]
    if not files:
        return None
    imgs = [torch.from_numpy(np.array(Image.open(os.path.join(folder, f)).convert("RGB")))
            .permute(2, 0, 1).float() / 255.0 for f in files]
    vutils.save_image(torch.stack(imgs), path, nrow=int(math.ceil(math.sqrt(len(imgs)))))
    return path


def run_sampling(cfg, opts):
    device = select_device(opts.get("device"))
    if not opts.get("image_folder"):
        raise UserError("--sample needs --image_folder")
    model = load_sampling_model(cfg, opts, device)
    n = opts.get("n_samples") or cfg["sampling"]["n_samples"]
    written = sample_to_folder(model, cfg, opts["image_folder"], n, device=device,
                               **sampler_settings(cfg, opts))
    print(f"wrote {written} images to {opts['image_folder']} ({n - written} already there); "
          f"grid: {grid_path(opts['image_folder'])}")
    return 0
