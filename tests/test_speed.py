"""SpeeD (arXiv 2405.17403) as a timestep sampler: p(t), the meaningful step m, the dual
pairing, the loss weights, region restriction, and the weights reaching the loss."""
import numpy as np
import pytest
import torch

from models.diffusion import Diffusion, alphas_cumprod_f64
from models.resample import (SpeedSampler, fold_into, make_timestep_sampler,
                             speed_meaningful_step, speed_weights)

LINEAR = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "num_diffusion_timesteps": 1000}
ABAR = alphas_cumprod_f64(**LINEAR)


def test_meaningful_step_of_the_linear_schedule():
    assert speed_meaningful_step(ABAR) == 642
    # by hand: sqrt(1 - abar) with central differences inside
    f = np.sqrt(1 - ABAR)
    g = [(f[t + 1] - f[t - 1]) / 2 for t in range(1, 999)]
    first = next(t for t, v in zip(range(1, 999), g) if v < 1e-4)
    assert first + 1 == 642


def test_draws_follow_p_t_over_200k_draws():
    s = SpeedSampler(0, 1000, alphas_cumprod=ABAR, k=5, lam=0.6, tau=700)
    t = s.draw(200_000, torch.Generator().manual_seed(0)).numpy()
    # p(t) = 5 / Z below tau, 1 / Z above, Z = 5 * 700 + 300
    edges = np.arange(0, 1001, 50)
    counts, _ = np.histogram(t, edges)
    z = 5 * 700 + 300
    expected = np.array([200_000 * sum(5 if u < 700 else 1 for u in range(a, a + 50)) / z
                         for a in edges[:-1]])
    # each 50-step bin within 5 binomial standard deviations (a false alarm is < 1e-5)
    sd = np.sqrt(expected * (1 - expected / 200_000))
    assert np.all(np.abs(counts - expected) < 5 * sd)
    assert abs((t < 700).mean() - 3500 / 3800) < 0.005


def test_dual_pairing_and_batch_shape():
    s = SpeedSampler(0, 1000, alphas_cumprod=ABAR, k=5, lam=0.6, tau=700)
    gen = torch.Generator().manual_seed(1)
    t, w = s.sample(11, "cpu", gen)
    draws = s.draw(6, torch.Generator().manual_seed(1))
    assert torch.equal(t[:6], draws)
    dual = torch.where(draws < 642, 642 - draws, draws - 642)
    assert torch.equal(t[6:], dual[:5])
    assert t.shape == w.shape == (11,)


def test_loss_weights_by_hand():
    lam, tau = 0.6, 700
    w = speed_weights(ABAR, lam, tau)
    one_minus = 1 - ABAR
    g = np.empty(1000)
    g[1:-1] = (one_minus[2:] - one_minus[:-2]) / 2
    g[0], g[-1] = one_minus[1] - one_minus[0], one_minus[-1] - one_minus[-2]
    head = g[:tau]
    kappa = 1 - lam
    for t in (0, 1, 350, 699):
        assert w[t] == pytest.approx(kappa + (1 - 2 * kappa) * (head[t] - head.min()) /
                                     (head.max() - head.min()), rel=1e-12)
    assert np.all(w[tau:] == 1.0)
    assert w[:tau].min() == pytest.approx(0.4) and w[:tau].max() == pytest.approx(0.6)


@pytest.mark.parametrize("lo,hi", [(0, 240), (240, 440), (440, 1000), (600, 700), (0, 1000)])
def test_region_restriction_keeps_t_inside(lo, hi):
    s = SpeedSampler(lo, hi, alphas_cumprod=ABAR, k=5, lam=0.6, tau=700)
    t, _ = s.sample(20_000, "cpu", torch.Generator().manual_seed(2))
    assert t.min() >= lo and t.max() < hi
    assert len(set(t.tolist())) > min(hi - lo, 50) // 2
    assert torch.equal(fold_into(torch.tensor([lo - 1, hi, hi + 2, lo + 3]), lo, hi),
                       torch.tensor([lo, hi - 1, hi - 3, lo + 3]))


def test_the_weights_reach_the_loss():
    """lam = 1: kappa = 0, so the smallest-g timestep weighs 0 and its samples give no
    gradient, while a weighted-1 timestep does."""
    from models.unet import UNet
    s = SpeedSampler(0, 1000, alphas_cumprod=ABAR, k=5, lam=1.0, tau=700)
    t_min = int(np.argmin(s.weights[:700].numpy()))
    assert s.weights[t_min] == 0.0
    torch.manual_seed(0)
    model = UNet(in_channels=1, out_ch=1, ch=16, ch_mult=[1, 2], num_res_blocks=1,
                 attn_resolutions=[4], dropout=0.0, resolution=8, gn_groups=8)
    d = Diffusion(**LINEAR)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    for t_val, zero in ((t_min, True), (800, False)):
        model.zero_grad()
        t = torch.full((4,), t_val)
        d.loss(model, x, t, weights=s.weights[t]).backward()
        total = sum(p.grad.abs().sum().item() for p in model.parameters())
        assert (total == 0.0) == zero


def test_config_chooses_the_sampler_and_checks_it(tmp_path):
    from conftest import write_config
    from core.config import load_config
    from utils.errors import UserError
    cfg = load_config(write_config(tmp_path / "c.yml", training__timestep_sampler="speed"))
    assert cfg.speed.tau == 70  # tau 0 resolves to 70% of T, once, in the config
    s = make_timestep_sampler(cfg.training.timestep_sampler, 0, 100,
                              alphas_cumprod=alphas_cumprod_f64(**vars(cfg.diffusion)),
                              **vars(cfg.speed))
    assert isinstance(s, SpeedSampler) and s.weights.shape == (100,)
    assert (s.weights[70:] == 1).all() and (s.weights[:70] < 1).all()  # tau 0: 70% of T
    for bad, needle in (("speed.lam=1.5", "speed.lam"), ("speed.k=0", "speed.k"),
                        ("speed.tau=5000", "speed.tau"),
                        ("training.timestep_sampler=other", "timestep_sampler")):
        with pytest.raises(UserError, match=needle):
            load_config(str(tmp_path / "c.yml"), [bad])


def test_resume_is_exact_and_quartiles_are_logged_with_speed(tmp_path):
    import os
    from conftest import write_config
    from main import main
    from core.checkpoint import load_checkpoint
    cfg = write_config(tmp_path / "c.yml", training__timestep_sampler="speed",
                       training__n_epochs=3, training__log_every=1)
    exp = str(tmp_path)
    assert main(["--config", cfg, "--exp", exp, "--doc", "full", "--ni"]) == 0
    assert main(["--config", cfg, "--exp", exp, "--doc", "part", "--ni", "--override",
                 "training.n_epochs=2"]) == 0
    assert main(["--config", cfg, "--exp", exp, "--doc", "part", "--resume_training"]) == 0
    a = load_checkpoint(os.path.join(exp, "logs", "full", "ckpt.pth"))
    b = load_checkpoint(os.path.join(exp, "logs", "part", "ckpt.pth"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(os.path.join(exp, "tensorboard", "full"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {f"train/loss_q{i}" for i in range(4)} <= set(tags)
