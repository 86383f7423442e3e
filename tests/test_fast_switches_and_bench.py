"""Fast-path switches keep results (CPU), and the benchmark suite runs in smoke mode."""
import copy
import math
import os
import sys

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
    res = run_py([os.path.join(ROOT, "bench", "step_modes.py"), "--smoke", "--device", "cpu",
                  "--batch", "2", "--ratios", "0.8", "--iters", "1"],
                 cwd=os.path.join(ROOT, "bench"), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    table = res.stdout.split("step modes")[-1]
    assert table.count("| ticket 0.8 |") == 4 and "graph, bf16 weights" in table
    assert "failed" not in table


@pytest.mark.slow
def test_gpu_check_falls_back_on_cpu(tmp_path):
    import subprocess
    # the test's interpreter (a checkout without .venv/ would otherwise get the system python3)
    env = dict(os.environ, OUT=str(tmp_path), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHON=sys.executable)
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


def test_bf16_weights_with_fp32_master_weights_train_like_fp32():
    """fast.amp: bf16_weights (a bf16 compute copy, fp32 master weights in the optimizer):
    the same 20 steps from the same start give a loss curve within 3% of fp32, the master
    stays fp32, and the compute copy is the master rounded to bf16 after every step."""
    import types
    from contextlib import nullcontext

    from models.diffusion import Diffusion
    from models.resample import AntitheticSampler
    from runners.step import MasterWeights, train_step
    d = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  num_diffusion_timesteps=100)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    curves = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = UNet(**ARGS)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        master = MasterWeights(model) if bf16 else None
        run = types.SimpleNamespace(model=model, optimizer=opt, ema=EMA(model, 0.9),
                                    master=master, train_model=master.compute if bf16 else model)
        torch.manual_seed(5)
        curves[bf16] = [train_step(run, x, sampler=AntitheticSampler(0, 100), diffusion=d,
                                   autocast=nullcontext, grad_clip=1.0)[0].item()
                        for _ in range(20)]
        if bf16:
            assert all(p.dtype == torch.float32 for p in model.parameters())
            assert all(c.dtype == torch.bfloat16 and torch.equal(c, m.to(torch.bfloat16))
                       for c, m in zip(master.params, master.master))
    fp32, bf16 = (sum(curves[k][10:]) / 10 for k in (False, True))
    assert curves[True][-1] < 0.8 * curves[True][0]  # it trains
    assert abs(bf16 - fp32) / fp32 < 0.03


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
    written-out swish); the counts measured when this test was written are its ceilings.
    bf16 weights with fp32 master weights drop autocast's casts: a handful of copies."""
    import re
    from conftest import run_py
    out = {}
    for precision in ("autocast", "fp32", "bf16_weights"):
        res = run_py(["bench/step_ops.py", "--smoke", "--batch", "8", "--ratios", "0", "0.8",
                      "--precision", precision])
        assert res.returncode == 0, res.stderr[-2000:]
        assert "copies 2 tensors to the device per epoch, 0 per step" in res.stdout
        for r, ops, copies, syncs in re.findall(
                r"ratio ([\d.]+): ops/step (\d+), copies/step (\d+), host syncs/step (\S+)",
                res.stdout):
            out[(precision, float(r))] = (int(ops), int(copies), float(syncs))
        assert "sigmoid" not in res.stdout  # F.silu: one kernel each way
    assert len(out) == 6 and all(s == 0 for _, _, s in out.values())
    # counted with autocast's cast cache cleared per step, as a real step leaves it (a cache
    # kept from the warm-up step hid the weight casts: 497 ops / 186 copies before)
    assert out[("autocast", 0.0)][0] <= 575 and out[("autocast", 0.0)][1] <= 264
    assert out[("autocast", 0.8)][1] == out[("autocast", 0.0)][1]  # a ticket copies as much
    assert out[("fp32", 0.0)][0] <= 313 and out[("fp32", 0.0)][1] <= 2
    for r in (0.0, 0.8):
        ops, copies, _ = out[("bf16_weights", r)]
        assert copies <= 8 and ops <= out[("fp32", r)][0] + 4


def test_graph_safe_step_equals_the_ordinary_step_on_the_cpu(tmp_path):
    """fast.cuda_graph's step (fused Adam with a tensor lr, EMA decay from a device counter,
    counters in place) runs eagerly on the CPU; after 5 steps from the same start it equals
    the ordinary step with the optimizer a GPU uses (fused Adam, float lr) within 1e-6."""
    import types
    from contextlib import nullcontext

    from conftest import write_config
    from core.config import load_config
    from models.diffusion import Diffusion
    from models.resample import AntitheticSampler
    from runners.graph_step import GraphStep
    from runners.optim import make_optimizer
    from runners.step import NonFinite, QuartileLoss, train_step
    cfg = load_config(write_config(tmp_path / "t.yml"))
    d = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  num_diffusion_timesteps=100)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kw = dict(sampler=AntitheticSampler(0, 100), diffusion=d, autocast=nullcontext,
              grad_clip=1.0)
    cpu = torch.device("cpu")
    results = []
    for graph in (False, True):
        torch.manual_seed(0)
        model = UNet(**ARGS)
        opt = make_optimizer(cfg, model.parameters(), cpu, graph_safe=True)  # fused, as on a GPU
        run = types.SimpleNamespace(model=model, train_model=model, optimizer=opt,
                                    ema=EMA(model, 0.9), master=None,
                                    nonfinite=NonFinite(cpu, first_step=0, skip=False))
        q = QuartileLoss(100, cpu)
        step = GraphStep(run, channels_last=False, grad_accum=1, device=cpu, **kw) if graph \
            else (lambda x, lr, q: train_step(run, x, lr=lr, quartiles=q, **kw))
        torch.manual_seed(5)
        losses = [step(x, 2e-3, q)[0].item() for _ in range(5)]
        results.append((losses, torch.cat([p.flatten() for p in model.parameters()]),
                        torch.cat([p.flatten() for p in run.ema.shadow.parameters()]),
                        q.read_and_reset()))
    (l0, w0, e0, q0), (l1, w1, e1, q1) = results
    assert l0 == pytest.approx(l1, rel=1e-6)
    assert (w0 - w1).abs().max() < 1e-6 and (e0 - e1).abs().max() < 1e-6
    assert q0.keys() == q1.keys() and all(q0[k] == pytest.approx(q1[k]) for k in q0)


def test_cuda_graph_trains_on_the_cpu_and_refuses_what_it_cannot_capture(tmp_path):
    from conftest import write_config
    from main import main
    from utils.errors import UserError
    cfg = write_config(tmp_path / "t.yml", fast__cuda_graph=True, training__n_epochs=1)
    assert main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "g", "--ni"]) == 0
    c = torch.load(tmp_path / "e" / "logs" / "g" / "ckpt.pth", weights_only=True)
    assert c["epochs_done"] == 1 and c["step"] == 3
    assert main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "g",
                 "--resume_training", "--override", "training.n_epochs=2"]) == 0
    for extra, needle in ((["fast.compile=true"], "choose one"),
                          (["training.on_nonfinite=skip"], "on_nonfinite: stop")):
        with pytest.raises(UserError, match=needle):
            main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "x", "--ni",
                  "--override"] + extra)


class _CpuGraphStep:
    """GraphStep with CPU stand-ins for the CUDA stream and graph: the capture branch runs as
    on a GPU (warm-up calls, the zero_grad before capture, the capture, replays), with a
    "graph" that re-runs the captured step and writes its outputs in place."""

    @staticmethod
    def make(run, **kw):
        from runners.graph_step import GraphStep

        class Replayer:
            def __init__(self, fn, out):
                self.fn, self.out, self.first = fn, out, True

            def replay(self):
                if self.first:  # the capture itself ran the step once (as its replay would)
                    self.first = False
                    return
                for o, n in zip(self.out, self.fn()):
                    o.copy_(n)

        class Step(GraphStep):
            captured_shapes = []

            def _side_stream(self, fn):
                return fn()

            def _capture(self, fn):
                self.captured_shapes.append(tuple(self.static_x.shape))
                out = fn()
                return Replayer(fn, out), out
        step = Step(run, device=torch.device("cpu"), **kw)
        step.enabled = True
        return step


def _graph_run(cfg, *, bf16=False):
    import types

    from runners.optim import make_optimizer
    from runners.step import MasterWeights, NonFinite
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = UNet(**ARGS)
    master = MasterWeights(model) if bf16 else None
    opt = make_optimizer(cfg, model.parameters(), cpu, graph_safe=True)
    return types.SimpleNamespace(model=model, train_model=master.compute if bf16 else model,
                                 optimizer=opt, ema=EMA(model, 0.9), master=master,
                                 nonfinite=NonFinite(cpu, first_step=0, skip=False))


def _graph_kw():
    from contextlib import nullcontext

    from models.diffusion import Diffusion
    from models.resample import AntitheticSampler
    d = Diffusion(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                  num_diffusion_timesteps=100)
    return dict(sampler=AntitheticSampler(0, 100), diffusion=d, autocast=nullcontext,
                grad_clip=1.0, channels_last=False, grad_accum=1)


def test_the_capture_branch_keeps_bf16_weights_master_gradients(tmp_path):
    """Before the fix the zero_grad before capture cleared the fp32 master's gradients, and
    the captured step's copy into them failed (TypeError: expected Tensor ... NoneType)."""
    from conftest import write_config
    from core.config import load_config
    cfg = load_config(write_config(tmp_path / "t.yml"))
    run = _graph_run(cfg, bf16=True)
    step = _CpuGraphStep.make(run, full_batch=16, **_graph_kw())
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    losses = [step(x, 2e-3)[0].item() for _ in range(6)]  # 3 warm-up, capture, 2 replays
    assert step.graph is not None and all(math.isfinite(v) for v in losses)
    assert all(m.grad is not None for m in run.master.master)


def test_a_partial_batch_is_never_captured():
    """Before the fix the fourth call was captured whatever its shape: a partial last batch
    there made every later full batch run eagerly."""
    from core.config import load_config
    cfg = load_config("digits.yml")
    run = _graph_run(cfg)
    step = _CpuGraphStep.make(run, full_batch=16, **_graph_kw())
    g = torch.Generator().manual_seed(1)
    full, part = (torch.rand(n, 1, 8, 8, generator=g) * 2 - 1 for n in (16, 5))
    for x in (full, full, full, part, full, full, part, full):
        step(x, 1e-3)
    assert step.captured_shapes == [(16, 1, 8, 8)]


def test_graph_and_eager_steps_agree_over_batches_with_the_capture_branch(tmp_path):
    """Eight steps of different batches from the same start: the capture branch (stand-in
    graph) and the eager graph-safe step give the same losses, weights, EMA and Adam steps."""
    from conftest import write_config
    from core.config import load_config
    from runners.step import train_step
    cfg = load_config(write_config(tmp_path / "t.yml"))
    g = torch.Generator().manual_seed(2)
    batches = [torch.rand(16, 1, 8, 8, generator=g) * 2 - 1 for _ in range(8)]
    out = []
    for graph in (False, True):
        run = _graph_run(cfg)
        kw = _graph_kw()
        step = _CpuGraphStep.make(run, full_batch=16, **kw) if graph else \
            (lambda x, lr: train_step(run, x, lr=lr, **kw))
        torch.manual_seed(5)
        losses = [step(x, 2e-3)[0].item() for x in batches]
        steps = [float(s["step"]) for s in run.optimizer.state.values()]
        out.append((losses, torch.cat([p.flatten() for p in run.model.parameters()]),
                    torch.cat([p.flatten() for p in run.ema.shadow.parameters()]), steps,
                    torch.get_rng_state()))
    (l0, w0, e0, s0, r0), (l1, w1, e1, s1, r1) = out
    assert l0 == pytest.approx(l1, rel=1e-6) and len(set(l1)) == 8  # fresh noise each step
    assert (w0 - w1).abs().max() < 1e-6 and (e0 - e1).abs().max() < 1e-6
    assert s0 == s1 == [8.0] * len(s0) and torch.equal(r0, r1)


def test_resuming_a_state_saved_without_the_graph_restores_graph_safe_flags(tmp_path):
    """load_state_dict of an ordinary optimizer's state sets capturable False, fused None,
    foreach True in every group (Adam's capture check then refuses); GraphStep puts the
    graph-safe optimizer's own flags back."""
    from conftest import write_config
    from core.config import load_config
    from runners.optim import make_optimizer
    cfg = load_config(write_config(tmp_path / "t.yml"))
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    plain_model = UNet(**ARGS)
    plain = make_optimizer(cfg, plain_model.parameters(), cpu)  # foreach on the CPU
    plain_model(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).sum().backward()
    plain.step()
    run = _graph_run(cfg)
    want = {k: run.optimizer.defaults[k] for k in ("fused", "foreach", "capturable")}
    run.optimizer.load_state_dict(plain.state_dict())
    assert run.optimizer.param_groups[0]["fused"] != want["fused"]  # what loading does
    _CpuGraphStep.make(run, full_batch=16, **_graph_kw())
    for group in run.optimizer.param_groups:
        assert {k: group[k] for k in want} == want
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    from runners.step import train_step
    train_step(run, x, lr=1e-3, **_graph_kw())  # the fused step runs on the loaded state


def test_capture_uses_the_thread_local_error_mode(monkeypatch):
    """A DataLoader's pin-memory thread allocating host memory during a capture in the
    default (global) mode is an error that kills the run."""
    import contextlib

    from runners.graph_step import GraphStep
    seen = {}

    @contextlib.contextmanager
    def graph(g, **kw):
        seen.update(kw)
        yield
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "graph", graph)
    g, out = GraphStep._capture(None, lambda: (1, 2))
    assert (g, out) == ("graph", (1, 2)) and seen == {"capture_error_mode": "thread_local"}
