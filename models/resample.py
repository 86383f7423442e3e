"""Timestep samplers (DESIGN.md steps 1 and 5): which t each training sample gets, and the
weight of its loss.

One small interface, as improved-diffusion's resample.py: ``sample(n, device, generator)``
returns ``(t, weights)``, t a LongTensor [n] and weights a float tensor [n] or None (all ones).
Every sampler can be restricted to a timestep region [lo, hi) (a TA-EB ticket's region).
"""
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
