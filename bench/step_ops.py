"""Count a GPU training step's work on a machine without a GPU: the CUDA path emulated on the
CPU, one line per network.

  python bench/step_ops.py --config cifar10.yml --batch 128 --ratios 0 0.8

The network, optimizer (fused Adam) and EMA live as FakeTensors on device "cuda", so dispatch
follows CUDA's rules (autocast policy, channels-last propagation, fused and foreach kernels)
without a device. Our ``train_step`` runs once to warm up and once counted; every operator that
reaches the dispatcher is counted except views and metadata (they launch no kernel). The autograd
engine wants a CUDA context for backward, so backward walks the graph itself, in topological
order, under no_grad, as the engine does (including its reduction of broadcast gradients and its
casts to each input's dtype). A host read (``.item()``, ``bool(tensor)``) inside the step raises
under FakeTensors: the count of host syncs is the number of such reads the step needed (0 when
it ran through), plus the host-to-device copies of the data path (which sync from pageable
memory). Copies done inside kernels (CUDA GroupNorm making its input NCHW-contiguous) are not
seen. Machine-independent: the same counts on any CPU.
"""
import argparse
import collections
import contextlib
import os
import sys
import warnings

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NO_KERNEL = {"detach", "view", "_unsafe_view", "t", "empty", "empty_strided", "as_strided",
             "expand", "permute", "transpose", "reshape", "alias", "slice", "select",
             "unsqueeze", "squeeze", "split", "split_with_sizes", "chunk", "unbind",
             "_reshape_alias", "lift_fresh", "is_same_size", "empty_like", "new_empty",
             "new_empty_strided", "sym_size", "sym_stride", "sym_numel",
             "sym_storage_offset", "dim", "size", "stride", "is_contiguous", "_local_scalar_dense",
             "device"}
COPIES = {"_to_copy", "copy_", "clone", "contiguous", "_foreach_copy_"}


class OpCounter(TorchDispatchMode):
    """Operators by name, copies, and host-to-device transfers."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.h2d = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if name not in NO_KERNEL:
            self.ops[name] += 1
            if name in ("_to_copy", "copy_") and _device_of(out) == "cuda" and \
                    any(_device_of(a) == "cpu" for a in args):
                self.h2d += 1
        return out

    @property
    def total(self):
        return sum(self.ops.values())

    @property
    def copies(self):
        return sum(n for k, n in self.ops.items() if k in COPIES)


def _device_of(x):
    return x.device.type if isinstance(x, torch.Tensor) else None


def manual_backward(loss):
    """loss.backward() without the autograd engine: nodes in topological order, called with
    their output gradients; gradients summed to each input's shape and cast to its dtype."""
    order, seen, stack = [], set(), [(loss.grad_fn, False)]
    while stack:
        fn, done = stack.pop()
        if done:
            order.append(fn)
            continue
        if fn in seen:
            continue
        seen.add(fn)
        stack.append((fn, True))
        stack.extend((nf, False) for nf, _ in fn.next_functions if nf is not None and
                     nf not in seen)
    grads = {loss.grad_fn: [torch.ones_like(loss)]}
    with torch.no_grad():
        for fn in reversed(order):
            g = grads.pop(fn, None)
            if g is None:
                continue
            if type(fn).__name__ == "AccumulateGrad":
                v = fn.variable
                v.grad = g[0] if v.grad is None else v.grad + g[0]
                continue
            g = list(g) + [None] * (len(fn._input_metadata) - len(g))
            outs = fn(*g)
            outs = outs if isinstance(outs, tuple) else (outs,)
            for (nf, idx), go in zip(fn.next_functions, outs):
                if nf is None or go is None:
                    continue
                if type(nf).__name__ == "AccumulateGrad":
                    shape, dtype = nf.variable.shape, nf.variable.dtype
                else:
                    shape, dtype = nf._input_metadata[idx].shape, nf._input_metadata[idx].dtype
                if tuple(go.shape) != tuple(shape):
                    go = go.sum_to_size(shape)
                if go.dtype != dtype:
                    go = go.to(dtype)
                slot = grads.setdefault(nf, [])
                slot.extend([None] * (idx + 1 - len(slot)))
                slot[idx] = go if slot[idx] is None else slot[idx] + go


@contextlib.contextmanager
def cuda_autocast(enabled):
    """CUDA's bf16 autocast switched on at the dispatcher (torch.autocast refuses without a
    device), for one step: its cast cache is cleared before and after, as leaving a training
    step's ``with torch.autocast(...)`` clears it (a cache kept from the warm-up step hid every
    weight cast of the counted one)."""
    prev = torch.is_autocast_enabled("cuda")
    torch.set_autocast_enabled("cuda", enabled)
    if enabled:
        torch.set_autocast_dtype("cuda", torch.bfloat16)
    torch.clear_autocast_cache()
    try:
        yield
    finally:
        torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev)


def to_fake_cuda(model, mode):
    """Replace every parameter and buffer by a FakeTensor on device "cuda" (in place)."""
    with mode:
        for m in model.modules():
            for k, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[k] = torch.nn.Parameter(mode.from_tensor(p).to("cuda"),
                                                          requires_grad=p.requires_grad)
            for k, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[k] = mode.from_tensor(b).to("cuda")
    return model


PRECISIONS = ("bf16 autocast", "fp32", "bf16 weights")


def count_step(cfg, network, batch, *, precision="bf16 autocast", channels_last=True):
    """OpCounter of one training step of ``network`` (built on the CPU) on emulated CUDA,
    with one of PRECISIONS (core.device.precision's words)."""
    import types

    from models.diffusion import Diffusion
    from models.ema import EMA
    from models.resample import AntitheticSampler
    from runners.step import MasterWeights, train_step
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = to_fake_cuda(network, mode)
    real_backward = torch.Tensor.backward
    torch.Tensor.backward = lambda self, *a, **k: manual_backward(self)
    # clipping takes its foreach path for CUDA tensors; FakeTensors are a subclass, which the
    # check would otherwise send down the per-tensor path
    import torch.nn.utils.clip_grad as clip
    real_support = clip._has_foreach_support
    clip._has_foreach_support = lambda tensors, device: True
    try:
        with mode:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, fused=True)
            ema = EMA(model, cfg.model.ema_rate, foreach=True, warmup=True)
            master = MasterWeights(model) if precision == "bf16 weights" else None
            run = types.SimpleNamespace(model=model, optimizer=opt, ema=ema, master=master,
                                        train_model=master.compute if master else model)
            diffusion = Diffusion(**vars(cfg.diffusion), device="cuda")
            sampler = AntitheticSampler(0, diffusion.num_timesteps)
            d = cfg.data
            x = torch.rand(batch, d.channels, d.image_size, d.image_size, device="cuda") * 2 - 1
            counts = []
            for _ in range(2):  # the first step also creates the optimizer's state
                counter = OpCounter()
                with counter, cuda_autocast(precision == "bf16 autocast"):
                    train_step(run, x, sampler=sampler, diffusion=diffusion,
                               autocast=contextlib.nullcontext, grad_clip=cfg.optim.grad_clip,
                               channels_last=channels_last)
                counts.append(counter)
    finally:
        torch.Tensor.backward = real_backward
        clip._has_foreach_support = real_support
    return counts[-1]


def data_path_transfers(cfg, batch, steps=4):
    """Host-to-device copies of the data path (BatchStream) in one epoch of ``steps`` steps on
    emulated CUDA: (copies in the epoch, of them those inside the steps' loop)."""
    from datasets import BatchStream, TensorImages
    images = torch.zeros(batch * steps, cfg.data.channels, cfg.data.image_size,
                         cfg.data.image_size, dtype=torch.uint8)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        stream = BatchStream(TensorImages(images, "bench"), batch_size=batch, seed=0,
                             device="cuda", random_flip=True)
        batches = stream.epoch(0)
        counter = OpCounter()
        with counter:  # the plan's copies happen at the first batch
            next(batches)
        per_epoch = counter.h2d
        counter = OpCounter()
        with counter:
            n = sum(1 for _ in batches)
    return per_epoch, counter.h2d / max(n, 1)


def main(argv=None):
    from common import bench_config, tickets
    from train_step import SMOKE
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10.yml")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.8])
    p.add_argument("--precision", choices=["autocast", "fp32", "bf16_weights"],
                   default="autocast", help="bf16 autocast (the default on a GPU), fp32, or "
                   "bf16 weights with fp32 master weights (fast.amp: bf16_weights)")
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    cfg = bench_config(a.config, SMOKE if a.smoke else [])
    dense, _, tks = tickets(cfg, [r for r in a.ratios if r > 0])
    per_epoch, per_step = data_path_transfers(cfg, a.batch)
    prec = {"autocast": "bf16 autocast", "fp32": "fp32", "bf16_weights": "bf16 weights"}[
        a.precision]
    print(f"step ops ({a.config}, batch {a.batch}, emulated CUDA, {prec}, channels-last; "
          f"the data path copies "
          f"{per_epoch} tensors to the device per epoch, {per_step:g} per step)")
    for r in a.ratios:
        net = dense if r == 0 else tks[r][0]
        c = count_step(cfg, net.cpu(), a.batch, precision=prec)
        syncs = c.h2d + per_step
        print(f"ratio {r:g}: ops/step {c.total}, copies/step {c.copies}, host syncs/step "
              f"{syncs:g}", flush=True)
        print("  most frequent: " + ", ".join(f"{k} {n}" for k, n in c.ops.most_common(8)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
