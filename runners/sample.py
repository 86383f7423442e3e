"""Sampling to a folder (docs/design.md, steps 6-7): one seed per image, ``{index:06d}.png``, so
sampling shards and resumes exactly, plus a grid PNG. Works with a checkpoint or a stitched
TA-EB ticket manifest."""
import hashlib
import json
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core import checkpoint as ck
from core.device import autocast_for, dist_setup, select_device, use_channels_last
from core.layout import Layout, folder_lock, sample_grid_of
from core.lock import hold_for_job
from core.regions import read_manifest
from datasets import inverse_data_transform
from models.diffusion import Diffusion, sample_images, timestep_sequence
from models.stitched import StitchedTickets
from runners.grids import save_sample_grid
from utils.errors import UserError
from utils.io import atomic_path, atomic_write_json, check_free

# Image i's initial noise comes from seed + i, its step noise (eta > 0, ddpm_noisy) from
# seed + i + STEP_NOISE_OFFSET (a large prime, so the two streams never share a seed).
STEP_NOISE_OFFSET = 1_000_003
META_FILE = "sampling.json"  # what made the images of a sample folder


def weights_fingerprint(model):
    """sha256 (16 hex digits) of a network's weights, in state-dict order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_sampling_model(cfg, opts, device):
    """(network, what it is) to sample with: a checkpoint (--restore_from / the run's latest)
    or stitched tickets. What it is: checkpoint paths, their steps, a hash of the weights."""
    T = cfg.diffusion.num_diffusion_timesteps
    if opts.tickets:
        tickets, regions, sources = [], [], []
        for t in read_manifest(opts.tickets, T).tickets:
            c = ck.load_checkpoint(t.checkpoint)
            tickets.append(ck.model_from_checkpoint(c, t.checkpoint, opts.use_ema))
            regions.append(list(t.range))
            sources.append({"checkpoint": os.path.abspath(t.checkpoint), "step": c.get("step"),
                            "range": list(t.range)})
        model = StitchedTickets(tickets, regions, T)
    else:
        path = opts.restore_from or Layout(opts.exp).latest_checkpoint(opts.doc)
        c = ck.load_checkpoint(path)
        args = c.get("model_args")
        if args is None:
            args = cfg.model_kwargs()
        else:
            diff = ck.architecture_differences(cfg, args)
            if diff:
                print(f"note: {path} holds another network than the config's model section "
                      f"({', '.join(diff)}); sampling the checkpoint's network")
        model = ck.model_from_checkpoint(c, path, opts.use_ema, model_args=args)
        if args["in_channels"] != cfg.data.channels:
            raise UserError(f"{path}: network takes {args['in_channels']} channels, "
                            f"data.channels is {cfg.data.channels}")
        sources = [{"checkpoint": os.path.abspath(path), "step": c.get("step")}]
    about = {"sources": sources, "use_ema": bool(opts.use_ema),
             "weights_sha256": weights_fingerprint(model)}
    model.to(device).eval()
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    return model, about


def image_noise(index, shape, seed):
    """The initial noise of image ``index``."""
    g = torch.Generator().manual_seed(seed + index)
    return torch.randn(shape, generator=g)


def per_image_step_noise(indices, seed, device):
    """step_noise for a batch: image i's draws come from its own generator, so its pixels
    depend only on (seed, i), not on the batch it shares (after EDM's per-image seeds)."""
    gens = [torch.Generator(device=device).manual_seed(seed + i + STEP_NOISE_OFFSET)
            for i in indices]

    def draw(k, x):
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device)
                            for g in gens])
    return draw


def sample_indexed(model, cfg, indices, *, device, timesteps=None, seed=None):
    """Images ``indices`` [N, C, H, W] in [0, 1] (float, on the CPU), sampled with
    ``cfg.sampling`` (``timesteps`` / ``seed`` override its own). Image i depends on (seed, i)
    alone: the one sampling routine of sample folders, training grids and quality curves."""
    d, s = cfg.data, cfg.sampling
    seed = s.seed if seed is None else seed
    device = torch.device(device)
    shape = (d.channels, d.image_size, d.image_size)
    noise = torch.stack([image_noise(i, shape, seed) for i in indices]).to(device)
    was_training = model.training
    model.eval()
    x = sample_images(model, Diffusion(**vars(cfg.diffusion), device=device), noise,
                      timesteps=timesteps or s.timesteps, skip_type=s.skip_type,
                      sample_type=s.sample_type, eta=s.eta, autocast=autocast_for(cfg, device),
                      step_noise=per_image_step_noise(indices, seed, device))
    model.train(was_training)
    return inverse_data_transform(x.float().cpu())


def folder_metadata(folder):
    """The sampling.json of a sample folder (None when there is none)."""
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _images_in(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png") and f[:6].isdigit())


def prepare_folder(folder, meta, start_over=False):
    """Make ``folder`` ready to take images made as ``meta`` says: --ni empties it; images
    made any other way are refused in one line; identical settings top the folder up."""
    os.makedirs(folder, exist_ok=True)
    if start_over:
        for f in _images_in(folder) + [META_FILE]:
            if os.path.exists(os.path.join(folder, f)):
                os.remove(os.path.join(folder, f))
    old = folder_metadata(folder)
    if old is None and _images_in(folder):
        raise UserError(f"{folder} holds {len(_images_in(folder))} images without "
                        f"{META_FILE}: their origin is unknown; pass --ni to start it over")
    if old is not None and old != meta:
        diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        raise UserError(f"{folder} holds images made with other {', '.join(diff)}; pass --ni "
                        f"to start it over or choose another --image_folder")
    atomic_write_json(os.path.join(folder, META_FILE), meta)


def _missing(folder, n):
    """Indices of images 0..n-1 not in ``folder`` yet (one listing, not a stat per image)."""
    have = set(os.listdir(folder))
    return [i for i in range(n) if f"{i:06d}.png" not in have]


def png_bytes(data, folder):
    """Disk use of one sample PNG, projected: its raw pixels plus headers (PNG compresses, so
    this is an upper bound), in whole blocks of the folder's file system."""
    block = os.statvfs(folder).f_frsize or 4096
    raw = data.channels * data.image_size ** 2 + 1024
    return -(-raw // block) * block


def save_png(x01, path):
    """x01: [C, H, W] in [0, 1] -> PNG (grayscale for one channel)."""
    arr = (x01.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr)
    with atomic_path(path, durable=False) as tmp:  # a sample folder's resume trusts a PNG
        img.save(tmp, format="PNG")


def sample_to_folder(model, cfg, folder, *, device, about=None, start_over=False,
                     progress=True, rank=0, world=1):
    """Write images 000000.png .. (sampling.n_samples - 1) with ``cfg.sampling``'s sampler,
    skipping those present; returns the count written.

    ``about`` (what the model is) goes into the folder's sampling.json with the sampler
    settings, the seed and the number of network evaluations per image. With ``world``
    processes (torchrun) process ``rank`` draws the images i with i % world == rank; every
    image has its own seeds, so the folder is the same for any number of processes."""
    d, s = cfg.data, cfg.sampling
    nfe = len(timestep_sequence(s.skip_type, s.timesteps, cfg.diffusion.num_diffusion_timesteps))
    meta = {"model": about or {}, "timesteps": s.timesteps, "skip_type": s.skip_type,
            "sample_type": s.sample_type, "eta": s.eta, "seed": s.seed, "nfe": nfe,
            "image_shape": [d.channels, d.image_size, d.image_size]}
    if rank == 0:
        prepare_folder(folder, meta, start_over)
        missing = len(_missing(folder, s.n_samples))
        check_free(folder, missing * png_bytes(d, folder), f"sampling {missing} images",
                   "free space or sample fewer (sampling.n_samples / --n_samples)")
    _barrier(world)
    todo = [i for i in _missing(folder, s.n_samples) if i % world == rank]
    bar = tqdm(total=len(todo), desc="sampling", disable=None if progress else True,
               dynamic_ncols=True)
    for b in range(0, len(todo), s.batch_size):
        idx = todo[b:b + s.batch_size]
        for i, img in zip(idx, sample_indexed(model, cfg, idx, device=device)):
            save_png(img, os.path.join(folder, f"{i:06d}.png"))
        bar.update(len(idx))
    bar.close()
    _barrier(world)
    if rank == 0:
        write_grid(folder, sample_grid_of(folder))
    return len(todo)


def _barrier(world):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


def write_grid(folder, path, n=64, title=None):
    """A titled grid of the first n images of a sample folder."""
    files = _images_in(folder)[:n]
    if not files:
        return None
    imgs = [torch.from_numpy(np.array(Image.open(os.path.join(folder, f)).convert("RGB")))
            .permute(2, 0, 1).float() / 255.0 for f in files]
    meta = folder_metadata(folder) or {}
    if title is None:
        title = os.path.basename(os.path.abspath(folder))
        if meta:
            title += f", {meta['nfe']} network evaluations ({meta['skip_type']}, eta " \
                     f"{meta['eta']:g})"
    save_sample_grid(torch.stack(imgs), path, title)
    return path


def run_sampling(cfg, opts):
    """--sample: one process, or one per GPU under torchrun (the images are split)."""
    if not opts.image_folder:
        raise UserError("--sample needs --image_folder")
    device = select_device(opts.device)
    rank, world = dist_setup(device, cfg.training.dist_timeout_s)
    lock = hold_for_job(folder_lock(opts.image_folder), f"sample folder {opts.image_folder}",
                        rank=rank, world=world, device=device)
    try:
        return _sample_locked(cfg, opts, device, rank, world)
    finally:
        lock.release()


def _sample_locked(cfg, opts, device, rank, world):
    model, about = load_sampling_model(cfg, opts, device)
    n = cfg.sampling.n_samples
    written = sample_to_folder(model, cfg, opts.image_folder, device=device, about=about,
                               start_over=opts.ni, rank=rank, world=world,
                               progress=rank == 0 and opts.verbosity != "quiet")
    if world > 1:
        import torch.distributed as dist
        counts = torch.tensor([written], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(counts)
        written = int(counts.item())
        dist.barrier()  # nobody leaves while another rank still talks to it
        dist.destroy_process_group()
        if rank != 0:
            return 0
    if opts.verbosity == "quiet":
        return 0
    meta = folder_metadata(opts.image_folder)
    print(f"wrote {written} images to {opts.image_folder} ({n - written} already there; "
          f"{meta['nfe']} network evaluations per image); grid: "
          f"{sample_grid_of(opts.image_folder)}")
    return 0
