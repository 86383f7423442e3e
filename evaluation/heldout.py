"""A held-out quality axis quieter than a sample metric (docs/evidence.md).

The eps-prediction loss of a network on the first ``n`` images of the test split, at a fixed
subset of the timesteps the configured sampler visits (the sampler uses each visited step once,
so each counts equally: more steps at low noise under quad skipping), with the noise of image i
drawn from its own generator (seed + i). Every method and every evaluation sees the same images,
timesteps and noise, so the score moves with the weights alone: it is bit-identical for the same
weights, and a difference between two networks is not a difference between two noise draws.
The forward batch is part of the definition (``HELDOUT_BATCH``): float kernels round a little
differently for another batch shape (about 1e-9 of the score on 2 CPU threads), far below any
difference a verdict reads, but enough to break bit-identity. Reported per pixel (the training
loss sums over pixels), lower is better.
"""
import math
from dataclasses import dataclass

import torch

from datasets import data_transform, get_dataset
from models.diffusion import Diffusion, timestep_sequence

HELDOUT_SEED = 50_021  # the held-out noise's own seeds: no training or sampling stream is drawn
HELDOUT_BATCH = 32     # images per forward pass: fixed, so the score is bit-identical


@dataclass(frozen=True)
class HeldOut:
    """The fixed inputs of the held-out score."""
    x0: torch.Tensor        # [N, C, H, W] in [-1, 1], the test split's first N images
    t: torch.Tensor         # [K] timesteps (long)
    noise: torch.Tensor     # [N, K, C, H, W]: image i's noise at each timestep

    @property
    def key(self):
        """What the score depends on besides the weights (stored beside every value)."""
        return {"images": int(self.x0.shape[0]), "timesteps": [int(v) for v in self.t],
                "batch": HELDOUT_BATCH}


def heldout_timesteps(cfg, k):
    """At most ``k`` of the configured sampler's visited timesteps, spread evenly over its
    sequence (so they keep its density: quad skipping visits low t more often)."""
    s = cfg.sampling
    seq = timestep_sequence(s.skip_type, s.timesteps, cfg.diffusion.num_diffusion_timesteps)
    stride = max(1, math.ceil(len(seq) / k))
    return torch.tensor(sorted(set(int(t) for t in seq[::stride])), dtype=torch.long)


def heldout_set(cfg, *, images, timesteps, seed=HELDOUT_SEED):
    """The held-out inputs of ``cfg``'s data: ``images`` test images, ``timesteps`` steps."""
    data = get_dataset(cfg, train=False)
    n = min(images, len(data))
    x0 = data_transform(torch.stack([torch.as_tensor(data[i]) for i in range(n)]))
    t = heldout_timesteps(cfg, timesteps)
    noise = torch.stack([torch.randn((len(t), *x0.shape[1:]),
                                     generator=torch.Generator().manual_seed(seed + i))
                         for i in range(n)])
    return HeldOut(x0, t, noise)


@torch.no_grad()
def heldout_loss(model, ho, diffusion_settings, *, batch_size=HELDOUT_BATCH, device="cpu"):
    """Mean eps-prediction loss per pixel of ``model`` on the held-out set ``ho`` (another
    ``batch_size`` is for measuring how little it moves: the score is HELDOUT_BATCH's)."""
    device = torch.device(device)
    diffusion = Diffusion(**diffusion_settings, device=device)
    was_training = model.training
    model.eval()
    n, k = ho.x0.shape[0], len(ho.t)
    per = torch.zeros(n, k, dtype=torch.float64)
    for j in range(k):
        for b in range(0, n, batch_size):
            x0 = ho.x0[b:b + batch_size].to(device)
            t = ho.t[j].repeat(x0.shape[0]).to(device)
            loss = diffusion.per_sample_loss(model, x0, t, ho.noise[b:b + batch_size, j]
                                             .to(device))
            per[b:b + batch_size, j] = loss.double().cpu()
    model.train(was_training)
    return float(per.mean()) / ho.x0[0].numel()
