"""Diffusion math (docs/design.md, steps 1 and 6): schedules, noising, the eps-loss, and the DDIM /
DDPM samplers (timestep samplers for training are in models/resample.py).

Nothing here is an ``nn.Module``: every function takes the network as an argument, so the UNet
knows nothing about betas and torch-pruning traces the bare network. Small t = little noise.
"""
import math
from contextlib import nullcontext

import numpy as np
import torch


def get_beta_schedule(beta_schedule, *, beta_start, beta_end, num_diffusion_timesteps):
    """The DDIM codebase's schedules, as a float64 numpy array of length T."""
    T = num_diffusion_timesteps
    if beta_schedule == "quad":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif beta_schedule == "const":
        betas = beta_end * np.ones(T, dtype=np.float64)
    elif beta_schedule == "jsd":  # 1/T, 1/(T-1), ..., 1
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    elif beta_schedule == "sigmoid":
        x = np.linspace(-6, 6, T)
        betas = (1 / (np.exp(-x) + 1)) * (beta_end - beta_start) + beta_start
    elif beta_schedule == "cosine":  # Nichol & Dhariwal 2021, s = 0.008, betas capped at 0.999
        s = 0.008
        f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=np.float64)
    else:
        raise ValueError(f"unknown beta schedule {beta_schedule!r}")
    assert betas.shape == (T,)
    return betas


def alphas_cumprod_f64(*, beta_schedule, beta_start, beta_end, num_diffusion_timesteps):
    """abar_t of a schedule in float64 (numpy), for schedule-derived constants."""
    betas = get_beta_schedule(beta_schedule, beta_start=beta_start, beta_end=beta_end,
                              num_diffusion_timesteps=num_diffusion_timesteps)
    return np.cumprod(1.0 - betas)


class Diffusion:
    """One noise schedule (a config's ``diffusion`` section as keywords), its tensors on
    ``device``."""

    def __init__(self, *, beta_schedule, beta_start, beta_end, num_diffusion_timesteps,
                 device="cpu"):
        betas = get_beta_schedule(beta_schedule, beta_start=beta_start, beta_end=beta_end,
                                  num_diffusion_timesteps=num_diffusion_timesteps)
        self.num_timesteps = len(betas)
        self.betas = torch.from_numpy(betas).float().to(device)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise: [B, C, H, W], t: [B]."""
        a = self.alphas_cumprod.index_select(0, t).view(-1, 1, 1, 1)
        return x0 * a.sqrt() + noise * (1.0 - a).sqrt()

    def per_sample_loss(self, model, x0, t, noise=None):
        """Squared eps error summed over pixels, per sample: [B] (no host sync)."""
        if noise is None:
            noise = torch.randn_like(x0)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t)
        return (noise - out.float()).square().sum(dim=(1, 2, 3))

    def loss(self, model, x0, t, noise=None, weights=None, per_sample=None):
        """eps-prediction loss: squared error summed over pixels, times ``weights`` [B] when
        given, mean over the batch (the DDIM codebase's convention). Returns a 0-d tensor.

        per_sample: a list that receives the unweighted per-sample losses (detached)."""
        terms = self.per_sample_loss(model, x0, t, noise)
        if per_sample is not None:
            per_sample.append(terms.detach())
        if weights is not None:
            terms = terms * weights
        return terms.mean()


def timestep_sequence(skip_type, num_steps, num_timesteps):
    """The timesteps a sampler visits, ascending (the DDIM codebase's uniform / quad skips)."""
    if skip_type == "uniform":
        skip = max(num_timesteps // num_steps, 1)
        seq = list(range(0, num_timesteps, skip))
    elif skip_type == "quad":
        seq = (np.linspace(0, np.sqrt(num_timesteps * 0.8), num_steps) ** 2).astype(int)
        seq = sorted(set(int(s) for s in seq))
    else:
        raise ValueError(f"unknown skip type {skip_type!r}")
    return seq


def _eps(model, x, t, i):
    # A stitched set of tickets picks its network from the host-side step index, so routing
    # never reads t back from the device.
    pick = getattr(model, "for_timestep", None)
    net = pick(i) if pick is not None else model
    return net(x, t).float()


def _abar(alphas_cumprod, i):
    return alphas_cumprod[i] if i >= 0 else alphas_cumprod.new_tensor(1.0)


def _noise_source(step_noise, generator):
    """step_noise(k, x) -> the Gaussian draw of sampler iteration k (shape of x); by default
    torch.randn from ``generator``."""
    if step_noise is not None:
        return step_noise
    return lambda k, x: torch.randn(x.shape, generator=generator, device=x.device)


@torch.no_grad()
def generalized_steps(model, x, seq, alphas_cumprod, eta=0.0, generator=None, autocast=None,
                      step_noise=None):
    """DDIM sampling (eta=0 deterministic, eta=1 DDPM-like). x: [B, C, H, W] noise -> x0.

    With eta > 0 iteration k (k = 0 at the largest t) draws step_noise(k, x)."""
    n = x.size(0)
    draw = _noise_source(step_noise, generator)
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        at, at_next = _abar(alphas_cumprod, i), _abar(alphas_cumprod, j)
        with autocast() if autocast else nullcontext():
            e = _eps(model, x, t, i)
        x0_t = (x - e * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / at_next) * (1 - at_next) / (1 - at)).sqrt()
        c2 = ((1 - at_next) - c1 ** 2).sqrt()
        noise = draw(k, x) if eta > 0 else 0.0
        x = at_next.sqrt() * x0_t + c1 * noise + c2 * e
    return x


@torch.no_grad()
def ddpm_steps(model, x, seq, betas, generator=None, autocast=None, step_noise=None):
    """DDPM ancestral sampling ("ddpm_noisy") over a possibly skipped sequence.

    Iteration k draws step_noise(k, x), except the last (t = 0), which adds no noise."""
    n = x.size(0)
    draw = _noise_source(step_noise, generator)
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    seq_next = [-1] + list(seq[:-1])
    for k, (i, j) in enumerate(zip(reversed(seq), reversed(seq_next))):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        at, at_next = _abar(alphas_cumprod, i), _abar(alphas_cumprod, j)
        beta_t = 1 - at / at_next
        with autocast() if autocast else nullcontext():
            e = _eps(model, x, t, i)
        x0 = ((x - e * (1 - at).sqrt()) / at.sqrt()).clamp(-1, 1)
        mean = ((at_next.sqrt() * beta_t) * x0 + ((1 - beta_t).sqrt() * (1 - at_next)) * x) / (1.0 - at)
        if j >= 0:
            # fixedlarge variance (beta_t), as the DDIM codebase's ddpm_steps
            x = mean + beta_t.sqrt() * draw(k, x)
        else:
            x = mean
    return x


def sample_images(model, diffusion, noise, *, timesteps, skip_type, sample_type, eta,
                  generator=None, autocast=None, step_noise=None):
    """Run a sampler from ``noise`` [B, C, H, W]; returns images in [-1, 1] (not clamped)."""
    seq = timestep_sequence(skip_type, timesteps, diffusion.num_timesteps)
    if sample_type == "generalized":
        return generalized_steps(model, noise, seq, diffusion.alphas_cumprod, eta=eta,
                                 generator=generator, autocast=autocast, step_noise=step_noise)
    if sample_type == "ddpm_noisy":
        return ddpm_steps(model, noise, seq, diffusion.betas, generator=generator,
                          autocast=autocast, step_noise=step_noise)
    raise ValueError(f"unknown sample type {sample_type!r}")
