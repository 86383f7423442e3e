"""Fast-path switches keep results (CPU), and the benchmark suite runs in smoke mode."""
import copy
import os

import pytest
import torch

from conftest import ROOT, run_py
from datasets import BatchStream, TensorImages
from models.ema import EMA
from models.unet import UNet

ARGS = dict(in_channels=1, out_ch=1, ch=16, ch_mult=[1, 2], num_res_blocks=1,
            attn_resolutions=[4], dropout=0.0, resolution=8, gn_groups=8)


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    a = UNet(**ARGS)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 20, 50, 99])
    ya = a(x, t)
    yb = b(x.contiguous(memory_format=torch.channels_last), t)
    assert torch.allclose(ya, yb, atol=1e-5)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4, rtol=1e-4), n


def test_foreach_ema_equals_loop_ema():
    torch.manual_seed(0)
    model = UNet(**ARGS)
    e1, e2 = EMA(model, 0.9, foreach=True), EMA(model, 0.9, foreach=False)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        e1.update(model)
        e2.update(model)
    for (n, a), b in zip(e1.state_dict().items(), e2.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_on_device_batches_equal_dataloader_batches():
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    ds = TensorImages(images, "test")
    kw = dict(batch_size=8, seed=5, device="cpu", random_flip=True)
    on = BatchStream(ds, on_device=True, **kw)
    off = BatchStream(ds, on_device=False, **kw)
    assert on.images is not None and off.images is None
    for epoch in (0, 3):
        a, b = list(on.epoch(epoch)), list(off.epoch(epoch))
        assert len(a) == len(b) == 5
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    # resuming mid-epoch replays the same remaining batches
    assert all(torch.equal(x, y) for x, y in zip(list(on.epoch(1))[2:], on.epoch(1, 2)))
    # flips happen (about half the images, mirrored left-right), data are rescaled to [-1, 1]
    allx = torch.cat(list(on.epoch(0)))
    plain = torch.cat(list(BatchStream(ds, on_device=True, **dict(kw, random_flip=False))
                           .epoch(0)))
    flipped = [not torch.equal(a, b) for a, b in zip(allx, plain)]
    assert 0.2 < sum(flipped) / len(flipped) < 0.8
    assert all(torch.equal(a, b.flip(2)) for a, b, f in zip(allx, plain, flipped) if f)
    assert allx.min() >= -1 and allx.max() <= 1


@pytest.mark.slow
def test_bench_suite_smoke():
    for script in ("suite.py", "train_step.py", "ticket_speed.py", "mask_overhead.py"):
        res = run_py([os.path.join(ROOT, "bench", script), "--smoke", "--device", "cpu"],
                     cwd=os.path.join(ROOT, "bench"), timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "|" in res.stdout
    res = run_py([os.path.join(ROOT, "bench", "profile_step.py"), "--smoke", "--device", "cpu",
                  "--ratios", "0", "0.5"], cwd=os.path.join(ROOT, "bench"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = res.stdout.split("step profile")[-1]
    assert "dense" in summary and "ticket 0.5" in summary and "aten::" in res.stdout


@pytest.mark.slow
def test_gpu_check_falls_back_on_cpu(tmp_path):
    import subprocess
    env = dict(os.environ, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no CUDA device" in res.stdout and "seed-style loop" in res.stdout
    assert os.path.isfile(tmp_path / "gpu_check.txt")


def test_bf16_autocast_loss_and_grads_close_to_fp32():
    """The bf16 path (CPU autocast here; CUDA in bench/gpu_check.sh) against fp32."""
    from models.diffusion import Diffusion
    torch.manual_seed(0)
    model = UNet(**ARGS)
    d = Diffusion(**{"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                   "num_diffusion_timesteps": 100})
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    t = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    grads = []
    losses = []
    for amp in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = d.loss(model, x, t, noise)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[1] - losses[0]) / losses[0] < 0.02
    cos = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cos > 0.99


def test_ema_warmup_forgets_the_starting_weights():
    torch.manual_seed(0)
    model = UNet(**ARGS)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ema = EMA(model, 0.9999, warmup=True)
    plain = EMA(model, 0.9999, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    plain.update(model)
    w = "conv_in.weight"
    # first update: d = min(0.9999, 1/10) = 0.1
    assert torch.allclose(ema.state_dict()[w], 0.1 * start[w] + 0.9 * (start[w] + 1), atol=1e-6)
    assert torch.allclose(plain.state_dict()[w], start[w] + 1e-4, atol=1e-6)


@pytest.mark.slow
def test_step_op_counts_on_emulated_cuda_do_not_regress():
    """bench/step_ops.py counts a CUDA training step on the CPU (FakeTensors on device
    'cuda'). The lean step: no host sync in the step or the data path's steps, F.silu (no
    written-out swish), and the counts measured when this test was written as ceilings."""
    import re
    from conftest import run_py
    out = {}
    for flags in ([], ["--no_amp"]):
        res = run_py(["bench/step_ops.py", "--smoke", "--batch", "8", "--ratios", "0", "0.8"]
                     + flags)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "copies 2 tensors to the device per epoch, 0 per step" in res.stdout
        for r, ops, copies, syncs in re.findall(
                r"ratio ([\d.]+): ops/step (\d+), copies/step (\d+), host syncs/step (\S+)",
                res.stdout):
            out[(bool(flags), float(r))] = (int(ops), int(copies), float(syncs))
        assert "sigmoid" not in res.stdout  # the most frequent ops: F.silu, one kernel
    assert all(s == 0 for _, _, s in out.values())
    # bf16 autocast: weights and activations cast around fp32 ops; fp32: no casts
    assert out[(False, 0.0)][0] <= 497 and out[(False, 0.0)][1] <= 186
    assert out[(True, 0.0)][1] <= 2 and out[(True, 0.8)][1] <= 2
    assert out[(False, 0.8)][1] == out[(False, 0.0)][1]  # a ticket issues as many copies
