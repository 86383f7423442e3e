"""Masks, pruned models and the prune.py CLI."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import run_py
from models.pruning import MaskExtractor, count_params_macs, kept_channels
from models.unet import UNet
from core.checkpoint import load_checkpoint, model_from_checkpoint
from utils.errors import UserError

ARGS = dict(in_channels=3, out_ch=3, ch=64, ch_mult=[1, 2, 2], num_res_blocks=1,
            attn_resolutions=[8], dropout=0.0, resolution=16, resamp_with_conv=True,
            gn_groups=32)


def scores(ex, *args, **kwargs):
    """The importance scores alone (MaskExtractor.scores also returns what it read)."""
    return ex.scores(*args, **kwargs)[0]


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    ex = MaskExtractor(ARGS)
    sd = UNet(**ARGS).state_dict()
    return ex, sd


def test_same_weights_same_mask_and_fixed_layout(extractor):
    ex, sd = extractor
    ex.load_weights(sd)
    m1 = ex.masks_from_scores(scores(ex, "magnitude"), 0.5)
    ex2 = MaskExtractor(ARGS)  # a second graph: same group order
    ex2.load_weights(sd)
    m2 = ex2.masks_from_scores(scores(ex2, "magnitude"), 0.5)
    assert np.array_equal(m1, m2) and m1.size == ex.mask_length == ex2.mask_length
    assert ex.layout == ex2.layout


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_pruned_fraction_per_group_matches_ratio(extractor, ratio):
    ex, sd = extractor
    ex.load_weights(sd)
    mask = ex.masks_from_scores(scores(ex, "magnitude"), ratio)
    for (name, c, unit), m in zip(ex.layout, ex.split(mask)):
        assert c - int(m.sum()) == kept_channels(c, unit, ratio)
        # within rounding to the GroupNorm group size
        assert abs(m.mean() - ratio) <= unit / c / 2 + 1e-9 or c - m.sum() == unit, name


def test_params_and_macs_fall_like_one_minus_p_squared(extractor):
    ex, sd = extractor
    dense = UNet(**ARGS)
    p0, m0 = count_params_macs(dense, ARGS)
    ex.load_weights(sd)
    s = scores(ex, "magnitude")
    last = 1.0
    for ratio in (0.3, 0.5, 0.6, 0.7, 0.8):
        model, _ = ex.prune(sd, ex.masks_from_scores(s, ratio))
        p, m = count_params_macs(model, ARGS)
        assert abs(p / p0 - (1 - ratio) ** 2) < 0.06, ratio
        assert m / m0 < last  # strictly falling with the ratio
        last = m / m0
        for mod in model.modules():
            if isinstance(mod, torch.nn.GroupNorm):
                assert mod.num_channels % mod.num_groups == 0


def test_taylor_and_random_masks(extractor):
    from models.diffusion import Diffusion
    ex, sd = extractor
    ex.load_weights(sd)
    diff = Diffusion(**{"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                      "num_diffusion_timesteps": 100})
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with pytest.raises(ValueError, match="needs a batch of real data"):
        scores(ex, "taylor")
    t1 = ex.masks_from_scores(scores(ex, "taylor", diffusion=diff, data=x, taylor_steps=3), 0.5)
    t2 = ex.masks_from_scores(scores(ex, "taylor", diffusion=diff, data=x, taylor_steps=3), 0.5)
    assert np.array_equal(t1, t2)
    d = ex.masks_from_scores(scores(ex, "diff-pruning", diffusion=diff, data=x, thr=0.05,
                                    stride=25), 0.5)
    r = ex.masks_from_scores(scores(ex, "random"), 0.5)
    mag = ex.masks_from_scores(scores(ex, "magnitude"), 0.5)
    assert t1.mean() == r.mean() == d.mean() == mag.mean()
    assert not np.array_equal(r, mag)


@pytest.mark.slow
def test_prune_cli_saves_mask_sidecar_and_loadable_ticket(trained, tmp_path):
    ck = os.path.join(trained["log"], "ckpt_ep3.pth")
    res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                  str(tmp_path), "--doc", "tiny", "--ni", "--use_ema", "--restore_from", ck,
                  "--pruner", "magnitude", "--pruning_ratio", "0.5", "--thr", "0.05",
                  "--save_pruned_model", "tiny_pruned-0.5-magnitude-3.pth", "--save_masks"])
    assert res.returncode == 0, res.stderr
    assert "params" in res.stdout and "MACs" in res.stdout and "->" in res.stdout
    mask_dir = tmp_path / "pruned" / "tiny" / "masks"
    mask = np.load(mask_dir / "tiny_pruned-0.5-magnitude-3.npy")
    meta = json.load(open(mask_dir / "tiny_pruned-0.5-magnitude-3.json"))
    assert meta["ratio"] == 0.5 and meta["epoch"] == 3 and sum(meta["group_sizes"]) == mask.size
    # the online mask of the same epoch (same EMA weights) is identical
    online = np.load(os.path.join(trained["exp"], "pruned", "tiny", "masks",
                                  "tiny_pruned-0.5-magnitude-3.npy"))
    assert np.array_equal(mask, online)
    path = tmp_path / "pruned" / "tiny" / "models" / "tiny_pruned-0.5-magnitude-3.pth"
    c = torch.load(path, weights_only=True)
    model = model_from_checkpoint(load_checkpoint(str(path)), str(path), use_ema=False)
    assert sum(p.numel() for p in model.parameters()) == c["pruning"]["params"]
    x = torch.randn(2, 1, 8, 8)
    out = model(x, torch.tensor([1, 50]))
    out.square().mean().backward()
    assert out.shape == x.shape and all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_gradient_pruners_rank_trained_channels_differently_from_magnitude(trained, tmp_path):
    """Taylor and Diff-Pruning masks of trained weights, made through prune.py and the config,
    differ from the magnitude mask (a silent fallback to magnitude would give the same one)
    and from each other, at the same pruned fraction; the JSON records what each read."""
    ck = os.path.join(trained["log"], "ckpt_ep3.pth")
    masks = {}
    for pruner in ("magnitude", "taylor", "diff-pruning"):
        res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                      str(tmp_path), "--doc", "tiny", "--use_ema", "--restore_from", ck,
                      "--pruner", pruner, "--pruning_ratio", "0.5", "--save_masks", "--quiet",
                      "--override", "pruning.diff_stride=10", "pruning.taylor_steps=4"])
        assert res.returncode == 0, res.stderr
        stem = tmp_path / "pruned" / "tiny" / "masks" / f"tiny_pruned-0.5-{pruner}-3"
        masks[pruner] = np.load(f"{stem}.npy")
        meta = json.load(open(f"{stem}.json"))
        assert meta["pruner"] == pruner
        if pruner == "diff-pruning":
            assert meta["timesteps"][0] == 0 and all(t % 10 == 0 for t in meta["timesteps"])
    mag, tay, dp = masks["magnitude"], masks["taylor"], masks["diff-pruning"]
    assert mag.mean() == tay.mean() == dp.mean()
    assert (mag != tay).mean() > 0.05 and (mag != dp).mean() > 0.05 and (tay != dp).any()


@pytest.mark.slow
def test_prune_many_checkpoints_one_process(trained, tmp_path):
    res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                  str(tmp_path), "--doc", "tiny", "--use_ema", "--restore_from", trained["log"],
                  "--pruning_ratio", "0.3", "0.5", "--save_masks"])
    assert res.returncode == 0, res.stderr
    files = sorted(os.listdir(tmp_path / "pruned" / "tiny" / "masks"))
    assert len([f for f in files if f.endswith(".npy")]) == 8


@pytest.mark.parametrize("extra,needle", [
    (["--pruning_ratio", "1.2"], "must be in (0, 1)"),
    (["--pruner", "bogus"], "unknown pruner"),
    (["--restore_from", "/nonexistent/ckpt.pth"], "checkpoint not found"),
])
def test_prune_bad_inputs(trained, tmp_path, extra, needle):
    from importlib import import_module
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                    "earlybird_scripts"))
    prune = import_module("prune")
    args = {"--pruning_ratio": ["0.5"], "--pruner": ["magnitude"],
            "--restore_from": [os.path.join(trained["log"], "ckpt_ep0.pth")]}
    for i in range(0, len(extra), 2):
        args[extra[i]] = [extra[i + 1]]
    argv = ["--config", trained["cfg"], "--exp", str(tmp_path), "--doc", "tiny"]
    for k, v in args.items():
        argv += [k] + v
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        prune.main(argv)


def test_taylor_without_data_is_refused(trained, tmp_path):
    from conftest import write_config
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path / "f.yml", data__dataset="FOLDER", data__path=str(empty))
    res = run_py(["earlybird_scripts/prune.py", "--config", cfg, "--exp", str(tmp_path),
                  "--restore_from", os.path.join(trained["log"], "ckpt_ep0.pth"),
                  "--pruner", "taylor", "--pruning_ratio", "0.5"])
    assert res.returncode == 2 and "no images" in res.stderr
