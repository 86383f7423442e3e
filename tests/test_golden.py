"""Golden tests: numbers produced by running the reference code (ermongroup/ddim e8df66c, the
authors' early-bird script 49a5dd0) on small fixed inputs, stored in tests/golden/ (its README
says what each file holds, how it was made and the tolerances; ``EB_GOLDEN_DIR`` points the tests
at another copy). CPU, float32, no autocast."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import ROOT
from models.diffusion import (Diffusion, ddpm_steps, generalized_steps, get_beta_schedule,
                              timestep_sequence)
from models.earlybird import find_earlybird
from models.unet import UNet

GOLDEN = os.environ.get("EB_GOLDEN_DIR") or os.path.join(ROOT, "tests", "golden")
LINEAR = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
          "num_diffusion_timesteps": 1000}


def _load(name):
    path = os.path.join(GOLDEN, name)
    if not os.path.isfile(path):
        pytest.fail(f"golden file {path} is missing: the golden tests need "
                    f"tests/golden/ (or EB_GOLDEN_DIR)")
    return np.load(path)


@pytest.fixture(scope="module")
def unet():
    z = _load("unet_tiny.npz")
    meta = json.loads(str(z["meta.config_json"]))
    keys = [str(k) for k in z["meta.state_dict_keys"]]
    model = UNet(**meta["project_unet_kwargs"])
    assert list(model.state_dict().keys()) == keys  # same names, same order
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(z[k]) for k in keys}, strict=True)
    assert not missing and not unexpected
    return model.eval(), z


@pytest.fixture(scope="module")
def samplers():
    return _load("samplers_tiny.npz")


def test_unet_eps_matches_reference(unet):
    model, z = unet
    with torch.no_grad():
        out = model(torch.from_numpy(z["input.x"]), torch.from_numpy(z["input.t"]))
    torch.testing.assert_close(out, torch.from_numpy(z["output.eps"]), rtol=3e-5, atol=3e-5)


def test_beta_schedule_matches_reference(samplers):
    ours = get_beta_schedule("linear", beta_start=1e-4, beta_end=0.02,
                             num_diffusion_timesteps=1000)
    np.testing.assert_allclose(ours, samplers["betas.linear_f64"], rtol=0, atol=1e-15)
    d = Diffusion(**LINEAR)
    assert torch.equal(d.betas, torch.from_numpy(samplers["betas.runner_f32"]))


def test_timestep_sequences_match_reference(samplers):
    for key, (skip, steps) in {"seq.uniform10": ("uniform", 10), "seq.quad10": ("quad", 10),
                               "seq.uniform100": ("uniform", 100)}.items():
        assert timestep_sequence(skip, steps, 1000) == samplers[key].tolist(), key
    # ddim's 100-step quad sequence repeats four timesteps; ours visits each once (96 network
    # evaluations), which changes no eta = 0 image
    ours = timestep_sequence("quad", 100, 1000)
    assert ours == sorted(set(samplers["seq.quad100"].tolist())) and len(ours) == 96


@pytest.mark.parametrize("key,skip", [("x0.ddim_eta0_uniform10", "seq.uniform10"),
                                      ("x0.ddim_eta0_quad10", "seq.quad10")])
def test_ddim_eta0_matches_reference(unet, samplers, key, skip):
    model, _ = unet
    d = Diffusion(**LINEAR)
    x = generalized_steps(model, torch.from_numpy(samplers["x_T"]), samplers[skip].tolist(),
                          d.alphas_cumprod, eta=0.0)
    torch.testing.assert_close(x, torch.from_numpy(samplers[key]), rtol=2e-4, atol=2e-4)


def _replay(noise):
    return lambda k, x: torch.from_numpy(noise[k])


def test_ddim_eta1_with_replayed_noise_matches_reference(unet, samplers):
    model, _ = unet
    d = Diffusion(**LINEAR)
    x = generalized_steps(model, torch.from_numpy(samplers["x_T"]),
                          samplers["seq.uniform10"].tolist(), d.alphas_cumprod, eta=1.0,
                          step_noise=_replay(samplers["noise.uniform10"]))
    torch.testing.assert_close(x, torch.from_numpy(samplers["x0.ddim_eta1_uniform10"]),
                               rtol=2e-4, atol=2e-4)


def test_ddpm_with_replayed_noise_matches_reference(unet, samplers):
    model, _ = unet
    d = Diffusion(**LINEAR)
    used = []

    def replay(k, x):
        used.append(k)
        return torch.from_numpy(samplers["noise.uniform10"][k])
    x = ddpm_steps(model, torch.from_numpy(samplers["x_T"]), samplers["seq.uniform10"].tolist(),
                   d.betas, step_noise=replay)
    assert used == list(range(9))  # no draw at the final t = 0 step
    torch.testing.assert_close(x, torch.from_numpy(samplers["x0.ddpm_uniform10"]),
                               rtol=1e-4, atol=1e-4)


def test_eps_loss_matches_reference(unet, samplers):
    model, z = unet
    d = Diffusion(**LINEAR)
    x0, t = torch.from_numpy(z["input.x"]), torch.from_numpy(z["input.t"])
    e = torch.from_numpy(samplers["loss.e"])
    with torch.no_grad():
        loss = d.loss(model, x0, t, noise=e)
    torch.testing.assert_close(loss, torch.from_numpy(samplers["loss.value"]), rtol=1e-5,
                               atol=0)


def _series():
    z = _load("earlybird_series.npz")
    with open(os.path.join(GOLDEN, "earlybird_series.json")) as f:
        ref = json.load(f)
    return z, ref


@pytest.mark.parametrize("name", ["converge", "never", "noisy", "boundary", "drift",
                                  "converge_then_diverge"])
def test_earlybird_rule_matches_release(name):
    z, ref = _series()
    s = ref["series"][name]
    masks = z[s["npz_key"]]
    eb, det = find_earlybird(list(enumerate(masks)), ref["window"], ref["threshold"])
    assert eb == s["eb_epoch"]
    for epoch, _, dists in det.history:
        if str(epoch) in s["release_distances"]:
            np.testing.assert_allclose(dists, s["release_distances"][str(epoch)], rtol=0,
                                       atol=1e-12)
    assert {str(e) for e, _, d in det.history if d and len(d) == ref["window"] - 1} == \
        set(s["release_distances"])


def test_golden_files_are_the_ones_the_manifest_names():
    import hashlib
    with open(os.path.join(GOLDEN, "manifest.json")) as f:
        files = json.load(f)["files"]
    assert set(files) == {"unet_tiny.npz", "samplers_tiny.npz", "earlybird_series.npz",
                          "earlybird_series.json"}
    for name, want in files.items():
        with open(os.path.join(GOLDEN, name), "rb") as f:
            data = f.read()
        assert len(data) == want["bytes"], name
        assert hashlib.sha256(data).hexdigest() == want["sha256"], name
