"""Timestep samplers (docs/design.md, steps 1 and 5): which t each training sample gets, and the
weight of its loss.

One small interface, as improved-diffusion's resample.py: ``sample(n, device, generator)``
returns ``(t, weights)``, t a LongTensor [n] and weights a float tensor [n] or None (all ones).
Every sampler can be restricted to a timestep region [lo, hi) (a TA-EB ticket's region).
"""
import numpy as np
import torch


class TimestepSampler:
    """Base class: draws t in [lo, hi)."""

    def __init__(self, lo, hi):
        if not 0 <= lo < hi:
            raise ValueError(f"empty timestep region [{lo}, {hi})")
        self.lo, self.hi = int(lo), int(hi)

    def sample(self, n, device, generator=None):
        raise NotImplementedError

    def _randint(self, low, high, size, device, generator):
        return torch.randint(low, high, size, generator=generator,
                             device="cpu" if generator is not None else device)


class AntitheticSampler(TimestepSampler):
    """Antithetic pairs inside [lo, hi): t and lo + hi - 1 - t in one batch.

    With the full range [0, T) it is the DDIM codebase's sampler (t and T - 1 - t)."""

    def sample(self, n, device, generator=None):
        t = self._randint(self.lo, self.hi, (n // 2 + 1,), device, generator)
        t = torch.cat([t, self.lo + self.hi - 1 - t], dim=0)[:n]
        return t.to(device), None


class UniformSampler(TimestepSampler):
    """Independent uniform t in [lo, hi)."""

    def sample(self, n, device, generator=None):
        return self._randint(self.lo, self.hi, (n,), device, generator).to(device), None


def fold_into(t, lo, hi):
    """Reflect integer timesteps into [lo, hi) at the region's edges (lo - 1 - d -> lo + d,
    hi + d -> hi - 1 - d, repeated), the mirror the antithetic pairs use."""
    span = hi - lo
    u = torch.remainder(t - lo, 2 * span)
    return lo + torch.where(u >= span, 2 * span - 1 - u, u)


def speed_meaningful_step(alphas_cumprod, threshold=1e-4):
    """SpeeD's m: 1 + the first t where d/dt sqrt(1 - abar_t) (numpy.gradient: central
    differences inside, one-sided at the ends) falls below ``threshold``."""
    grad = np.gradient(np.sqrt(1.0 - np.asarray(alphas_cumprod, dtype=np.float64)))
    below = np.flatnonzero(grad < threshold)
    return int(below[0]) + 1 if below.size else len(alphas_cumprod)


def speed_weights(alphas_cumprod, lam, tau):
    """SpeeD's loss weights [T]: for t < tau, kappa + (1 - 2 kappa) (g_t - g_min) /
    (g_max - g_min) with kappa = 1 - lam and g = d/dt (1 - abar_t) (numpy.gradient), the min and
    max taken over t < tau; 1 for t >= tau."""
    g = np.gradient(1.0 - np.asarray(alphas_cumprod, dtype=np.float64))
    w = np.ones_like(g)
    kappa = 1.0 - lam
    head = g[:tau]
    span = head.max() - head.min()
    w[:tau] = kappa + (1.0 - 2.0 * kappa) * ((head - head.min()) / span if span > 0 else 0.0)
    return w


class SpeedSampler(TimestepSampler):
    """SpeeD (Wang et al., arXiv 2405.17403), as its public code's Speed_IDDPM does it.

    t < tau is drawn k times as often as t >= tau (restricted to [lo, hi) and renormalised);
    half the batch (plus one) is drawn and each draw t is paired with its dual m - t (t < m) or
    t - m (t >= m), m the schedule's meaningful step (``speed_meaningful_step``); a dual outside
    [lo, hi) is reflected back inside (``fold_into``). Each sample's loss is weighted by
    ``speed_weights`` at its t."""

    def __init__(self, lo, hi, *, alphas_cumprod, k, lam, tau):
        super().__init__(lo, hi)
        T = len(alphas_cumprod)
        p = np.where(np.arange(T) < tau, float(k), 1.0)[self.lo:self.hi]
        self.probs = torch.from_numpy(p / p.sum())
        self.m = speed_meaningful_step(alphas_cumprod)
        self.weights = torch.from_numpy(speed_weights(alphas_cumprod, lam, tau)).float()
        self._tables = {}  # device -> (probs, weights) there: draws need no host round trip

    def _on(self, device):
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = (self.probs.to(device), self.weights.to(device))
        return self._tables[device]

    def draw(self, k, generator=None, device="cpu"):
        """k timesteps from p(t) (before pairing), on ``device`` (the CPU with a generator)."""
        probs, _ = self._on("cpu" if generator is not None else device)
        return torch.multinomial(probs, k, replacement=True, generator=generator) + self.lo

    def sample(self, n, device, generator=None):
        draws = self.draw(n // 2 + 1, generator, device)
        dual = torch.where(draws < self.m, self.m - draws, draws - self.m)
        t = torch.cat([draws, fold_into(dual, self.lo, self.hi)])[:n]
        _, weights = self._on(t.device)
        return t.to(device), weights[t].to(device)


def make_timestep_sampler(kind, lo, hi, *, alphas_cumprod, k, lam, tau):
    """The sampler named ``kind`` (antithetic | uniform | speed) for timestep region [lo, hi);
    ``k``, ``lam``, ``tau`` are SpeeD's (used by ``speed`` only)."""
    if kind == "antithetic":
        return AntitheticSampler(lo, hi)
    if kind == "uniform":
        return UniformSampler(lo, hi)
    return SpeedSampler(lo, hi, alphas_cumprod=alphas_cumprod, k=k, lam=lam, tau=tau)
