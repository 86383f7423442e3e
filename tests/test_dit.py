"""The DiT backbone (models/dit.py): its numbers against an independent implementation
(diffusers' DiTTransformer2DModel), head and MLP pruning, checkpoints, export, MNIST5K."""
import copy
import json
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY, pipeline_config, run_py, write_config
from core.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint
from core.config import load_config
from models.dit import DiT
from models.earlybird import find_earlybird, hamming
from models.networks import build_network
from models.pruning import MaskExtractor, count_flops, count_params_macs
from utils.errors import UserError
from utils.io import atomic_save

ARGS = dict(arch="dit", in_channels=1, out_ch=1, resolution=8, patch_size=2, hidden_size=32,
            depth=2, num_heads=4, mlp_ratio=4.0)
DIT_MODEL = {"type": "dit", "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 4,
             "mlp_ratio": 2.0}


def _random_dit(seed=0, **changes):
    """A DiT with every weight random (adaLN-Zero starts at zero: nothing would be tested)."""
    torch.manual_seed(seed)
    model = build_network(dict(ARGS, **changes)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model


def _inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.tensor([0, 317, 999][:n])


def _diffusers_twin(ours, freq_shift):
    """diffusers' DiTTransformer2DModel carrying our weights: one class whose embedding is
    zero; its timestep frequencies' divisor is half - freq_shift (diffusers ships 1)."""
    from diffusers import DiTTransformer2DModel
    a = ARGS
    heads, width = a["num_heads"], a["hidden_size"] // a["num_heads"]
    theirs = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=width, in_channels=a["in_channels"],
        out_channels=a["out_ch"], num_layers=a["depth"], sample_size=a["resolution"],
        patch_size=a["patch_size"], num_embeds_ada_norm=1, norm_eps=1e-6).eval()
    sd = ours.state_dict()
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"],
           "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"],
           "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(a["depth"]):
        b, t = f"transformer_blocks.{i}.", f"transformer_blocks.{i}.norm1.emb."
        for kind in ("weight", "bias"):
            out[t + f"timestep_embedder.linear_1.{kind}"] = sd[f"t_embedder.0.{kind}"]
            out[t + f"timestep_embedder.linear_2.{kind}"] = sd[f"t_embedder.2.{kind}"]
            out[b + f"norm1.linear.{kind}"] = sd[f"blocks.{i}.adaLN_modulation.1.{kind}"]
            q, k, v = sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)
            out.update({b + f"attn1.to_q.{kind}": q, b + f"attn1.to_k.{kind}": k,
                        b + f"attn1.to_v.{kind}": v})
            out[b + f"attn1.to_out.0.{kind}"] = sd[f"blocks.{i}.attn.proj.{kind}"]
            out[b + f"ff.net.0.proj.{kind}"] = sd[f"blocks.{i}.mlp.fc1.{kind}"]
            out[b + f"ff.net.2.{kind}"] = sd[f"blocks.{i}.mlp.fc2.{kind}"]
        table = theirs.state_dict()[t + "class_embedder.embedding_table.weight"]
        out[t + "class_embedder.embedding_table.weight"] = torch.zeros_like(table)
    theirs.load_state_dict(out, strict=True)
    for block in theirs.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = freq_shift
    return theirs


def test_dit_forward_matches_an_independent_implementation():
    """Patchify, position embeddings, adaLN-Zero, attention, tanh-GELU MLP, final layer and
    unpatchify agree with diffusers' DiT to float precision once its two differences from the
    reference DiT are neutralised - which also shows both are real (export refuses on them)."""
    ours = _random_dit()
    x, t = _inputs()
    with torch.no_grad():
        mine = ours(x, t)
        same = _diffusers_twin(ours, freq_shift=0)(x, t, class_labels=torch.zeros(3).long())
        shipped = _diffusers_twin(ours, freq_shift=1)(x, t, class_labels=torch.zeros(3).long())
    assert mine.shape == (3, 1, 8, 8)
    assert float((mine - same.sample).abs().max()) < 2e-5 * float(mine.abs().max())
    assert float((mine - shipped.sample).abs().max()) > 1e-2 * float(mine.abs().max())


def test_dit_shapes_and_zero_start():
    model = build_network(ARGS)
    assert isinstance(model, DiT)
    assert model.pos_embed.shape == (1, 16, 32)  # (8 / 2)^2 tokens of width 32
    # the first half of a token's position vector encodes its column, the second its row
    pe = model.pos_embed[0]
    assert torch.equal(pe[1, 16:], pe[0, 16:]) and not torch.equal(pe[1, :16], pe[0, :16])
    assert torch.equal(pe[4, :16], pe[0, :16]) and not torch.equal(pe[4, 16:], pe[0, 16:])
    x, t = _inputs()
    assert torch.count_nonzero(model(x, t)) == 0  # adaLN-Zero: zero output at init
    # parameters by hand: patch embed, timestep MLP, blocks (qkv, proj, fc1, fc2, adaLN), final
    h, c, p = 32, 1, 2
    per_block = (h * 3 * h + 3 * h) + (h * h + h) + (h * 4 * h + 4 * h) + (4 * h * h + h) + \
        (h * 6 * h + 6 * h)
    expected = (c * p * p * h + h) + (256 * h + h + h * h + h) + 2 * per_block + \
        (h * 2 * h + 2 * h) + (h * p * p * c + p * p * c)
    assert sum(q.numel() for q in model.parameters()) == expected


def _zero_removed(model, extractor, mask):
    """The dense model with every pruned unit's contribution removed by zeroing the weights
    that read it (projection columns of a pruned head, fc2 / second timestep Linear columns of
    a pruned hidden unit)."""
    ref = copy.deepcopy(model)
    mods = dict(ref.named_modules())
    for (name, _, _), m in zip(extractor.layout, extractor.split(mask)):
        cut = np.flatnonzero(m)
        if name.endswith(".qkv"):
            width = mods[name].out_features // 3
            cols = sorted({int(i) % width for i in cut})
            reader = mods[name.removesuffix("qkv") + "proj"]
        elif name.endswith(".fc1"):
            cols, reader = cut.tolist(), mods[name.removesuffix("fc1") + "fc2"]
        else:
            assert name == "t_embedder.0", name
            cols, reader = cut.tolist(), mods["t_embedder.2"]
        with torch.no_grad():
            reader.weight[:, cols] = 0
    return ref


def _scores(ex, pruner):
    """The extractor's group scores by magnitude, or by Taylor on a few training steps."""
    if pruner == "taylor":
        from models.diffusion import Diffusion
        diffusion = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              num_diffusion_timesteps=1000)
        return ex.scores("taylor", diffusion=diffusion, data=_inputs()[0], taylor_steps=3)[0]
    return ex.scores("magnitude")[0]


@pytest.mark.parametrize("pruner", ["magnitude", "taylor"])
def test_dit_pruning_removes_whole_heads_consistently(pruner, tmp_path):
    model = _random_dit()
    ex = MaskExtractor(ARGS)
    ex.load_weights(model.state_dict())
    names = [n for n, _, _ in ex.layout]
    assert sorted(names) == sorted(["t_embedder.0", "blocks.0.attn.qkv", "blocks.0.mlp.fc1",
                                    "blocks.1.attn.qkv", "blocks.1.mlp.fc1"])
    scores = _scores(ex, pruner)
    mask = ex.masks_from_scores(scores, 0.5)
    for (name, c, _), m in zip(ex.layout, ex.split(mask)):
        if name.endswith(".qkv"):  # whole heads: the same heads pruned in q, k and v
            per = m.reshape(3, 4, 8)
            assert (per == per[0:1]).all() and (per == per[:, :, :1]).all()
            assert int(per[0, :, 0].sum()) == 2  # 2 of 4 heads
        else:
            assert int(m.sum()) == c // 2
    pruned, history = ex.prune(model.state_dict(), mask)
    for i in range(2):
        attn = pruned.blocks[i].attn
        assert (attn.num_heads, attn.head_dim, attn.qkv.out_features, attn.proj.in_features) \
            == (2, 8, 48, 16)
        assert pruned.blocks[i].mlp.fc1.out_features == 64
    x, t = _inputs()
    with torch.no_grad():
        got, want = pruned.eval()(x, t), _zero_removed(model, ex, mask)(x, t)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())
    # MACs and FLOPs fall with the pruning; attention's products are in the FLOPs
    dense_params, dense_macs = count_params_macs(model, ARGS)
    params, macs = count_params_macs(pruned, ARGS)
    # adaLN and the other token-width layers stay: about 2/3 of the dense cost remains
    assert params < 0.7 * dense_params and macs < 0.7 * dense_macs
    assert count_flops(pruned, ARGS) < count_flops(model, ARGS)
    # the ticket round-trips through a checkpoint (rebuilt from the pruning history)
    ckpt = make_checkpoint(model={k: v.clone() for k, v in pruned.state_dict().items()},
                           config=None, model_args=ARGS,
                           pruning={"history": history, "ratio": 0.5, "pruner": pruner})
    atomic_save(ckpt, str(tmp_path / "ticket.pth"))
    back = model_from_checkpoint(load_checkpoint(str(tmp_path / "ticket.pth")), "ticket")
    assert back.blocks[0].attn.num_heads == 2
    with torch.no_grad():
        assert torch.equal(back.eval()(x, t), got)


@pytest.mark.parametrize("pruner", ["magnitude", "taylor"])
def test_dit_depth_pruning_removes_whole_blocks(pruner, tmp_path):
    """pruning.depth_scale: a mask at ratio p also removes round(scale * p * depth) blocks, the
    least important (here the block whose weights were shrunk); their groups are masked whole,
    the ticket skips them, and it round-trips through a checkpoint."""
    from models.dit import SkippedBlock, dropped_blocks
    from runners.masks import mask_meta
    from runners.pruning import save_ticket
    args = dict(ARGS, depth=4)
    model = _random_dit(depth=4)
    with torch.no_grad():
        for q in model.blocks[2].parameters():
            q.mul_(0.05)
    ex = MaskExtractor(args, depth_scale=0.5)
    ex.load_weights(model.state_dict())
    scores = _scores(ex, pruner)
    assert ex.removed_blocks(scores, 0.2) == [] and len(ex.removed_blocks(scores, 0.8)) == 2
    assert ex.removed_blocks(scores, 0.5) == [2]  # round(0.5 * 0.5 * 4) = 1: the shrunk one
    mask = ex.masks_from_scores(scores, 0.5)
    width_only = MaskExtractor(args)
    assert mask.size == width_only.mask_length  # the same mask format
    for (name, c, _), m in zip(ex.layout, ex.split(mask)):
        if name.startswith("blocks.2."):
            assert int(m.sum()) == c  # every head and unit of the removed block
        elif name.endswith(".qkv"):
            assert int(m.reshape(3, 4, 8)[0, :, 0].sum()) == 2
    pruned, history = ex.prune(model.state_dict(), mask)
    assert isinstance(pruned.blocks[2], SkippedBlock) and dropped_blocks(pruned) == [2]
    assert [b.attn.num_heads for i, b in enumerate(pruned.blocks) if i != 2] == [2, 2, 2]
    ref = _zero_removed(model, ex, mask)
    ref.blocks[2] = SkippedBlock()
    x, t = _inputs()
    with torch.no_grad():
        got, want = pruned.eval()(x, t), ref.eval()(x, t)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max())
    narrow, _ = width_only.prune(model.state_dict(), width_only.masks_from_scores(
        width_only.scores("magnitude")[0], 0.5))
    assert count_params_macs(pruned, args)[1] < 0.8 * count_params_macs(narrow, args)[1]
    cfg = load_config(write_config(tmp_path / "c.yml", dict(
        copy.deepcopy(TINY), model=dict(DIT_MODEL, depth=4), pruning={"depth_scale": 0.5})))
    meta = mask_meta(ex, mask, ratio=0.5, pruner=pruner, epoch=0, source="x", use_ema=True,
                     info={})
    out = save_ticket(ex, model.state_dict(), mask, model_args=args, cfg=cfg, meta=meta,
                      out_path=str(tmp_path / "ticket.pth"), log=None)
    rec = load_checkpoint(out)["pruning"]
    assert rec["removed_blocks"] == [2] and rec["depth_scale"] == 0.5
    back = model_from_checkpoint(load_checkpoint(out), out, use_ema=False)
    with torch.no_grad():
        assert torch.equal(back.eval()(x, t), got)


def test_depth_pruning_is_refused_for_a_unet(tmp_path):
    with pytest.raises(UserError, match="depth_scale removes a DiT's blocks"):
        load_config(write_config(tmp_path / "u.yml", dict(copy.deepcopy(TINY),
                                                           pruning={"depth_scale": 0.5})))
    with pytest.raises(ValueError, match="transformer blocks"):
        MaskExtractor(load_config("digits.yml").model_kwargs(), depth_scale=0.5)


def test_dit_head_ratios_round_per_block():
    ex = MaskExtractor(dict(ARGS, num_heads=8, hidden_size=64))
    scores, _ = ex.scores("magnitude")
    kept = {}
    for ratio in (0.4, 0.5, 0.6, 0.8, 0.95):
        m = ex.split(ex.masks_from_scores(scores, ratio))[ex.layout.index(
            next(e for e in ex.layout if e[0] == "blocks.0.attn.qkv"))]
        kept[ratio] = 8 - int(m.reshape(3, 8, 8)[0, :, 0].sum())
    assert kept == {0.4: 5, 0.5: 4, 0.6: 3, 0.8: 2, 0.95: 1}  # never zero heads


def test_dit_config_and_refusals(tmp_path):
    cfg = load_config("digits_dit.yml")
    assert cfg.model.type == "dit" and cfg.model_kwargs()["arch"] == "dit"
    base = load_config("digits.yml")
    # from its base config, but for the longer recipe a DiT needs (fine-tunes in proportion)
    assert cfg.optim == base.optim and cfg.earlybird == base.earlybird
    assert cfg.taeb.regions == base.taeb.regions and cfg.target.levels == base.target.levels
    assert cfg.training.batch_size == base.training.batch_size
    assert cfg.data == base.data and cfg.model_kwargs()["patch_size"] == 2
    assert (cfg.training.n_epochs, cfg.taeb.finetune_epochs) == (150, 18)
    assert cfg.taeb.finetune_epochs / cfg.training.n_epochs == \
        base.taeb.finetune_epochs / base.training.n_epochs
    assert (base.data.image_size, base.training.n_epochs) == (8, 100)
    assert "arch" not in base.model_kwargs()  # UNet arguments (and checkpoints) unchanged
    bad = dict(copy.deepcopy(TINY), model=dict(DIT_MODEL, patch_size=3))
    with pytest.raises(UserError, match="not divisible by model.patch_size 3"):
        load_config(write_config(tmp_path / "bad.yml", bad))
    bad["model"].update(patch_size=2, num_heads=5)
    with pytest.raises(UserError, match="not divisible by model.num_heads 5"):
        load_config(write_config(tmp_path / "bad.yml", bad))
    (tmp_path / "a.yml").write_text("base: b.yml\n")
    (tmp_path / "b.yml").write_text("base: a.yml\n")
    with pytest.raises(UserError, match="leads back to itself"):
        load_config(str(tmp_path / "a.yml"))


def test_dit_export_safetensors_and_diffusers_refusal(tmp_path):
    model = _random_dit()
    ex = MaskExtractor(ARGS)
    ex.load_weights(model.state_dict())
    pruned, history = ex.prune(model.state_dict(), ex.masks_from_scores(
        ex.scores("magnitude")[0], 0.5))
    ckpt = make_checkpoint(model=pruned.state_dict(), config=load_config(write_config(
        tmp_path / "c.yml", dict(copy.deepcopy(TINY), model=DIT_MODEL))).as_dict(),
        model_args=ARGS, pruning={"history": history, "ratio": 0.5, "pruner": "magnitude"})
    atomic_save(ckpt, str(tmp_path / "t.pth"))
    out = tmp_path / "t.safetensors"
    res = run_py(["earlybird_scripts/export.py", "--restore_from", str(tmp_path / "t.pth"),
                  "--to", "safetensors", "--out", str(out), "--no_ema"])
    assert res.returncode == 0, res.stderr
    back = model_from_checkpoint(load_checkpoint(str(out)), str(out), use_ema=False)
    x, t = _inputs()
    with torch.no_grad():
        assert torch.equal(back.eval()(x, t), pruned.eval()(x, t))
    res = run_py(["earlybird_scripts/export.py", "--restore_from", str(tmp_path / "t.pth"),
                  "--to", "diffusers", "--out", str(tmp_path / "hf"), "--no_ema"])
    assert res.returncode == 2 and "10000^(-k/127)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "hf").exists()


def test_mnist5k_split():
    from datasets import digit_split, get_dataset
    x_train, y_train = digit_split("MNIST5K", train=True)
    x_test, y_test = digit_split("MNIST5K", train=False)
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert torch.bincount(y_train).tolist() == [400] * 10
    assert torch.bincount(y_test).tolist() == [100] * 10
    assert x_train.dtype == torch.uint8 and int(x_train.max()) == 255
    # no image in both splits
    train = {bytes(im.numpy()) for im in x_train}
    assert not any(bytes(im.numpy()) in train for im in x_test)
    assert digit_split("MNIST5K", True)[0].equal(x_train)  # fixed split
    ds = get_dataset(load_config("mnist5k.yml"))
    assert len(ds) == 4000 and ds[0].shape == (1, 28, 28)
    dit = load_config("mnist5k_dit.yml")
    assert (dit.data.dataset, dit.model.type, dit.model.patch_size) == ("MNIST5K", "dit", 4)


@pytest.mark.slow
def test_dit_masks_feed_find_earlybird(tmp_path):
    """Online masks of a DiT run, and the same rule run offline by find_earlybird.py."""
    cfg = dict(copy.deepcopy(TINY), model=DIT_MODEL)
    cfg["optim"] = {"lr": 0.01}
    path = write_config(tmp_path / "dit.yml", cfg, earlybird__enabled=True,
                        earlybird__window=2, earlybird__threshold=0.2,
                        training__n_epochs=5)
    from main import main
    exp = str(tmp_path / "exp")
    assert main(["--config", path, "--exp", exp, "--doc", "dit", "--ni", "--use_ema"]) == 0
    mask_dir = os.path.join(exp, "pruned", "dit", "masks")
    masks = [(e, np.load(os.path.join(mask_dir, f"dit_pruned-0.3-magnitude-{e}.npy")))
             for e in range(5)]
    assert len({m.size for _, m in masks}) == 1 and hamming(masks[0][1], masks[1][1]) > 0
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", mask_dir,
                  "--pruning_ratio", "0.3", "--window", "2", "--threshold", "0.2"])
    assert res.returncode == 0, res.stderr
    offline = json.load(open(os.path.join(mask_dir, "earlybird-0.3-magnitude.json")))
    online = json.load(open(os.path.join(exp, "logs", "dit", "earlybird.json")))
    assert offline["eb_epoch"] == online["ratios"]["0.3"]["eb_epoch"] == \
        find_earlybird(masks, 2, 0.2)[0] is not None


@pytest.mark.slow
def test_dit_study_writes_a_page(tmp_path):
    """The study with a DiT backbone (one seed, tiny) pruned in width and depth: every stage of
    the pipeline (dense, EB epochs, EB ticket, train-prune-finetune, TA-EB tickets of different
    widths and depths, stitched sampling), then the page, its verdict lines and data."""
    path = pipeline_config(tmp_path / "s.yml", 2)
    cfg = yaml.safe_load(open(path))
    cfg["model"].update(DIT_MODEL, depth=4)
    cfg.setdefault("pruning", {})["depth_scale"] = 1.0
    write_config(path, cfg)
    out = tmp_path / "page" / "dit.md"
    res = run_py(["earlybird_scripts/study.py", "--config", path, "--exp", str(tmp_path / "e"),
                  "--doc", "d", "--seeds", "1", "--eval_samples", "16", "--eval_timesteps", "3",
                  "--final_samples", "16", "--out", str(out), "--override", "target.every=1",
                  "target.max_epochs=2", "target.axis=heldout", "target.evaluations=2",
                  "taeb.plan_images=8", "taeb.plan_bins=4"], timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    page = out.read_text()
    assert page.splitlines()[0].endswith(", DiT backbone (1 seed)")
    assert "mean over 1 seed;" in page
    for row in ("| Dense |", "| EB ticket (p=0.5) |", "| Train-prune-finetune (p=0.5) |",
                "| TA-EB ([0,40):0.3, [40,100):0.5) |", "(b) the EB ticket reaches"):
        assert row in page, row
    data = json.load(open(out.with_suffix(".json")))
    assert {r["method"] for r in data["rows"]} >= {"Dense", "EB ticket (p=0.5)"}
    from core.regions import read_manifest
    from models.dit import SkippedBlock
    shapes = []
    for t in read_manifest(str(tmp_path / "e" / "tickets" / "d_s0" / "tickets.yml")).tickets:
        net = model_from_checkpoint(load_checkpoint(t.checkpoint), t.checkpoint)
        shapes.append(sorted({b.attn.num_heads for b in net.blocks
                              if not isinstance(b, SkippedBlock)}) +
                      [sum(not isinstance(b, SkippedBlock) for b in net.blocks)])
    # ratios 0.3 and 0.5: 3 and 2 of 4 heads, in 4 - round(0.3 * 4) = 3 and 4 - 2 = 2 blocks
    assert shapes == [[3, 3], [2, 2]]
