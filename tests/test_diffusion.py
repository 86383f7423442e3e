import numpy as np
import pytest
import torch

from models.resample import AntitheticSampler
from models.diffusion import (Diffusion, generalized_steps,
                              ddpm_steps, get_beta_schedule, timestep_sequence)

CFG = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
       "num_diffusion_timesteps": 1000}


@pytest.mark.parametrize("name", ["linear", "quad", "const", "jsd", "sigmoid", "cosine"])
def test_beta_schedules_valid(name):
    b = get_beta_schedule(name, beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
    assert b.shape == (1000,) and (b > 0).all() and (b <= 1).all()


def test_linear_schedule_values():
    b = get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)


def test_q_sample_closed_form():
    d = Diffusion(**CFG)
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    xt = d.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        expect = np.sqrt(abar[ti]) * x0[i].numpy() + np.sqrt(1 - abar[ti]) * noise[i].numpy()
        assert np.allclose(xt[i].numpy(), expect, atol=1e-5)


def test_loss_is_sum_over_pixels_mean_over_batch():
    d = Diffusion(**CFG)
    x0, noise = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    t = torch.randint(0, 1000, (5,))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert d.loss(zero, x0, t, noise).item() == pytest.approx(
        noise.square().sum(dim=(1, 2, 3)).mean().item(), rel=1e-5)
    oracle = lambda x, t: noise  # noqa: E731
    assert d.loss(oracle, x0, t, noise).item() == pytest.approx(0.0, abs=1e-8)


def test_region_sampler_stays_inside_and_mirrors_pairs():
    s = AntitheticSampler(240, 440)
    t, w = s.sample(1000, "cpu", generator=torch.Generator().manual_seed(0))
    assert w is None
    assert t.min() >= 240 and t.max() < 440
    half = 1000 // 2 + 1
    first, second = t[:half], t[half:]
    assert torch.equal(second, (240 + 440 - 1 - first)[:len(second)])
    full, _ = AntitheticSampler(0, 1000).sample(9, "cpu", torch.Generator().manual_seed(1))
    assert torch.equal(full[5:], 999 - full[:4])


def test_timestep_sequences():
    u = timestep_sequence("uniform", 100, 1000)
    assert u[0] == 0 and len(u) == 100 and u[1] == 10
    q = timestep_sequence("quad", 100, 1000)
    assert q[0] == 0 and q == sorted(q) and max(q) <= 800 and len(q) >= 90


def _point_mass_oracle(d, x_star):
    def eps(x, t):
        a = d.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()
    return eps


def test_ddim_eta0_deterministic_and_recovers_x0_with_exact_oracle():
    d = Diffusion(**CFG)
    x_star = torch.randn(1, 1, 4, 4).clamp(-1, 1)
    eps = _point_mass_oracle(d, x_star)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seq = timestep_sequence("quad", 50, 1000)
    a = generalized_steps(eps, noise, seq, d.alphas_cumprod, eta=0.0)
    b = generalized_steps(eps, noise.clone(), seq, d.alphas_cumprod, eta=0.0)
    assert torch.equal(a, b)
    assert torch.allclose(a, x_star.expand_as(a), atol=1e-3)


def test_ddpm_sampler_with_oracle_lands_on_x0():
    d = Diffusion(**CFG)
    x_star = torch.randn(1, 1, 4, 4).clamp(-1, 1)
    eps = _point_mass_oracle(d, x_star)
    noise = torch.randn(2, 1, 4, 4)
    out = ddpm_steps(eps, noise, list(range(1000)), d.betas,
                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x_star.expand_as(out), atol=1e-2)
