"""diffusers folders and safetensors files, both directions (no hub: UNet2DModel at random
initialisation or exported by us), and results as data."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import run_py
from core import interop
from core.checkpoint import load_checkpoint, model_from_checkpoint
from main import main
from utils.errors import UserError

T = torch.tensor([0, 7, 50, 99])


def _eps(model, x, t=T):
    with torch.no_grad():
        out = model(x, t)
    return getattr(out, "sample", out)


def _close(a, b, rel=1e-5):
    return float((a - b).abs().max() / b.abs().max()) <= rel


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("hf") / "dense")
    res = run_py(["earlybird_scripts/export.py", "--restore_from",
                  os.path.join(trained["log"], "ckpt.pth"), "--to", "diffusers", "--out", out])
    assert res.returncode == 0, res.stderr
    return out


def test_dense_export_loads_in_diffusers_with_equal_eps(trained, exported):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    ours = model_from_checkpoint(load_checkpoint(os.path.join(trained["log"], "ckpt.pth")),
                                 "ckpt", use_ema=True).eval()
    theirs = UNet2DModel.from_pretrained(exported).eval()
    assert sum(p.numel() for p in theirs.parameters()) == \
        sum(p.numel() for p in ours.parameters())
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert _close(_eps(theirs, x), _eps(ours, x))
    scheduler = DDPMScheduler.from_pretrained(exported, subfolder="scheduler")
    from models.diffusion import Diffusion
    ours_betas = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           num_diffusion_timesteps=100).betas
    assert torch.equal(scheduler.betas, ours_betas)  # the training schedule, 100 steps
    image = DDPMPipeline(unet=theirs, scheduler=scheduler)(
        batch_size=1, num_inference_steps=3, output_type="np",
        generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 8, 8, 1) and np.isfinite(image).all()


def test_import_samples_the_same_images_as_the_original(trained, exported, tmp_path):
    base = ["--config", trained["cfg"], "--exp", str(tmp_path), "--doc", "tiny", "--sample",
            "--use_ema", "--n_samples", "4", "--timesteps", "4"]
    assert main(base + ["--restore_from", os.path.join(trained["log"], "ckpt.pth"),
                        "--image_folder", str(tmp_path / "a")]) == 0
    assert main(base + ["--restore_from", exported, "--image_folder", str(tmp_path / "b")]) == 0
    from PIL import Image
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "a" / f"{i:06d}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"{i:06d}.png"))
        assert np.array_equal(a, b)


def test_a_random_unet2dmodel_round_trips_through_our_unet(tmp_path):
    from diffusers import UNet2DModel
    args = dict(in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2], num_res_blocks=2,
                attn_resolutions=[8], dropout=0.0, resolution=16, resamp_with_conv=True,
                gn_groups=32)
    cfg = {k: v for k, v in interop.diffusers_config(args).items() if not k.startswith("_")}
    torch.manual_seed(0)
    theirs = UNet2DModel(**cfg).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))  # norms and biases away from their init
    theirs.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    c = load_checkpoint(str(tmp_path / "hf"))
    assert c["model_args"] == args and c["epoch_index"] == 0
    ours = model_from_checkpoint(c, "hf", use_ema=False).eval()
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([3, 900])
    assert _close(_eps(ours, x, t), _eps(theirs, x, t))
    # and back out: the same weights, bit for bit
    back = interop.to_diffusers_state_dict(ours.state_dict(), 3)
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())


def test_a_config_this_unet_is_not_is_refused_naming_the_key(exported, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    cfg = json.load(open(bad / "config.json"))
    cfg["norm_eps"] = 1e-5
    json.dump(cfg, open(bad / "config.json", "w"))
    with pytest.raises(UserError, match="norm_eps is 1e-05"):
        load_checkpoint(str(bad))
    cfg.update(norm_eps=1e-6, up_block_types=["UpBlock2D", "UpBlock2D"])
    json.dump(cfg, open(bad / "config.json", "w"))
    with pytest.raises(UserError, match="do not mirror"):
        load_checkpoint(str(bad))


@pytest.mark.slow
def test_a_pruned_ticket_round_trips_through_safetensors(trained, tmp_path):
    res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                  str(tmp_path), "--doc", "tiny", "--use_ema", "--restore_from",
                  os.path.join(trained["log"], "ckpt_ep3.pth"), "--pruning_ratio", "0.5",
                  "--save_pruned_model", "--quiet"])
    assert res.returncode == 0, res.stderr
    ticket = str(tmp_path / "pruned" / "tiny" / "models" / "tiny_pruned-0.5-magnitude-3.pth")
    out = str(tmp_path / "ticket.safetensors")
    res = run_py(["earlybird_scripts/export.py", "--restore_from", ticket, "--to",
                  "safetensors", "--out", out])
    assert res.returncode == 0 and "pruning history" in res.stdout, res.stderr
    res = run_py(["earlybird_scripts/export.py", "--restore_from", ticket, "--to",
                  "diffusers", "--out", str(tmp_path / "no")])
    assert res.returncode == 2 and "--to safetensors" in res.stderr
    original = model_from_checkpoint(load_checkpoint(ticket), ticket, use_ema=False).eval()
    again = model_from_checkpoint(load_checkpoint(out), out, use_ema=False).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(_eps(again, x), _eps(original, x))
    on_diffusers = interop.ticket_on_unet2d(out)
    assert sum(p.numel() for p in on_diffusers.parameters()) == \
        sum(p.numel() for p in original.parameters())
    assert _close(_eps(on_diffusers, x), _eps(original, x))
    # and it fine-tunes from the file like from its .pth
    assert main(["--config", trained["cfg"], "--exp", str(tmp_path), "--doc", "ft", "--ni",
                 "--load_pruned_model", out, "--override", "training.n_epochs=1"]) == 0


def test_ddim_with_diffusers_scheduler_matches_ours(exported):
    from diffusers import DDIMScheduler, UNet2DModel

    from models.diffusion import Diffusion, generalized_steps, timestep_sequence
    unet = UNet2DModel.from_pretrained(exported).eval()
    ours = model_from_checkpoint(load_checkpoint(exported), "x", use_ema=False).eval()
    sched_cfg = json.load(open(os.path.join(exported, "scheduler", "scheduler_config.json")))
    scheduler = DDIMScheduler(num_train_timesteps=100, trained_betas=sched_cfg["trained_betas"],
                              clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                              timestep_spacing="leading")
    scheduler.set_timesteps(5)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    d = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  num_diffusion_timesteps=100)
    seq = timestep_sequence("uniform", 5, 100)
    assert seq == sorted(scheduler.timesteps.tolist())
    with torch.no_grad():
        y = generalized_steps(ours, x_T.clone(), seq, d.alphas_cumprod, eta=0.0)
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
