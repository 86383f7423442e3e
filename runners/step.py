"""One training step (docs/design.md, steps 1, 4, 5): draw t, loss, backward, clip, step, EMA,
as device work only (no host read unless training.on_nonfinite: skip), and what it needs
around it: the non-finite counters, the bf16 compute copy with fp32 master weights
(fast.amp: bf16_weights) and the per-quartile losses. runners/train.py runs it eagerly;
runners/graph_step.py captures it."""
import copy
from contextlib import nullcontext

import torch


class Diverged(Exception):
    """A non-finite loss or gradient norm under training.on_nonfinite: stop."""


class MasterWeights:
    """fast.amp: bf16_weights. The network computes in a bf16 copy (no weight or activation
    casts per step); the optimizer, clipping, EMA and checkpoints keep the fp32 master
    weights. Per step: gradients copied to the master (one foreach op), the master stepped,
    the copy refreshed (one foreach op)."""

    def __init__(self, model):
        self.compute = copy.deepcopy(model)
        for m in self.compute.modules():  # parameter by parameter (Module.to swaps tensors)
            for k, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[k] = torch.nn.Parameter(p.detach().to(torch.bfloat16),
                                                          requires_grad=p.requires_grad)
        self.master = list(model.parameters())
        self.params = list(self.compute.parameters())
        for p in self.master:
            p.grad = torch.zeros_like(p)  # written, never reallocated

    def zero_grad(self):
        self.compute.zero_grad(set_to_none=True)

    def grads_to_master(self):
        pairs = [(m.grad, p.grad) for m, p in zip(self.master, self.params)
                 if p.grad is not None]
        torch._foreach_copy_([m for m, _ in pairs], [p for _, p in pairs])

    @torch.no_grad()
    def refresh(self):
        torch._foreach_copy_(self.params, self.master)


class NonFinite:
    """Steps whose loss or gradient norm was not finite, counted on the device so that no
    step waits for the host; read where the loop reads the loss anyway (logging, epoch end)."""

    def __init__(self, device, *, first_step, skip):
        self.skip = skip  # skip: such a step changes no weight (a host read per step)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.step = torch.full((), first_step, dtype=torch.long, device=device)

    def record(self, ok):
        """``ok``: 0-d bool tensor of this step; returns whether to apply the update. In place
        throughout, so that a captured step keeps updating the same tensors."""
        bad = ~ok
        self.first.copy_(torch.where((self.first < 0) & bad, self.step, self.first))
        self.count += bad
        self.step += 1
        return bool(ok) if self.skip else True

    def read(self):
        """(steps not finite so far, the first one's global step or None)."""
        n, first = int(self.count), int(self.first)
        return n, (first if first >= 0 else None)

    def check(self, epoch):
        """Under training.on_nonfinite: stop, a Diverged exception once a step went bad."""
        n, first = self.read()
        if n and not self.skip:
            raise Diverged(f"training diverged: non-finite loss or gradient norm at epoch "
                           f"{epoch}, step {first + 1} ({n} step(s) so far); no weights were "
                           f"saved after it")


def train_step(run, x, *, sampler, diffusion, autocast, grad_clip, channels_last=False,
               grad_accum=1, lr=None, quartiles=None):
    """One optimizer step over batch x, in ``grad_accum`` micro-batches (the gradient is that of
    the whole batch); returns (loss, grad norm) as device tensors (no host sync)."""
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t, weights = sampler.sample(x.shape[0], x.device)
    noise = torch.randn_like(x)
    master = getattr(run, "master", None)
    if master is not None:
        master.zero_grad()
    else:
        run.optimizer.zero_grad(set_to_none=True)
    terms = []  # unweighted per-sample losses, for the loss per timestep quartile
    loss = torch.zeros((), device=x.device)
    chunks = list(zip(x.chunk(grad_accum), t.chunk(grad_accum), noise.chunk(grad_accum),
                      weights.chunk(grad_accum) if weights is not None else [None] * grad_accum))
    no_sync = getattr(run.train_model, "no_sync", None)
    for k, (xk, tk, nk, wk) in enumerate(chunks):
        # DDP: gradients are all-reduced once, after the last micro-batch
        last = k == len(chunks) - 1
        with (no_sync() if no_sync is not None and not last else nullcontext()):
            with autocast():
                part = diffusion.loss(run.train_model, xk, tk, nk, weights=wk, per_sample=terms)
            if grad_accum > 1:
                part = part / grad_accum
            part.backward()
        loss = loss + part.detach()
    if master is not None:
        master.grads_to_master()
    # without clipping (max norm inf) the norm is still measured: it tells a divergence apart
    gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(),
                                           grad_clip if grad_clip > 0 else float("inf"))
    nonfinite = getattr(run, "nonfinite", None)
    if nonfinite is not None and \
            not nonfinite.record(torch.isfinite(loss) & torch.isfinite(gnorm)):
        (master or run.optimizer).zero_grad()  # skipped: no weight, moment or EMA moves
        return loss.detach(), gnorm
    if lr is not None:
        for group in run.optimizer.param_groups:
            group["lr"] = lr
    run.optimizer.step()
    if master is not None:
        master.refresh()
    if run.ema is not None:
        run.ema.update(run.model)
    if quartiles is not None:
        quartiles.add(t, torch.cat(terms))
    return loss.detach(), gnorm


class QuartileLoss:
    """Sum and count of per-sample losses by timestep quartile of [0, T), on the device (read
    only when logged), as improved-diffusion's loss_q0..q3."""

    def __init__(self, num_timesteps, device):
        self.T = num_timesteps
        self.sums = torch.zeros(4, device=device)
        self.counts = torch.zeros(4, device=device)

    def add(self, t, losses):
        q = (t * 4 // self.T).clamp(0, 3)
        self.sums.index_add_(0, q, losses.float())
        self.counts.index_add_(0, q, torch.ones_like(losses, dtype=torch.float32))

    def read_and_reset(self):
        """{'train/loss_q0': mean, ...} for the quartiles seen since the last read."""
        sums, counts = self.sums.tolist(), self.counts.tolist()
        self.sums.zero_()
        self.counts.zero_()
        return {f"train/loss_q{i}": s / c for i, (s, c) in enumerate(zip(sums, counts)) if c}
