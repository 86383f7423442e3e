"""Exponential moving average of a network's parameters (kept on the unwrapped module, so
DDP's ``module.`` prefix never reaches a checkpoint)."""
import copy

import torch


def unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


class EMA:
    """shadow <- d * shadow + (1 - d) * params, with d = rate, or with warm-up
    d = min(rate, (1 + n) / (10 + n)) after n updates, so an average started from a freshly
    pruned ticket does not keep a large share of its untrained starting weights."""

    def __init__(self, model, rate, foreach=True, warmup=True):
        self.rate = rate
        self.foreach = foreach
        self.warmup = warmup
        self.num_updates = 0
        self.shadow = copy.deepcopy(unwrap(model)).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def make_graph_safe(self, device):
        """From now on the decay is computed on the device from a device counter, so an update
        can be captured in a CUDA graph and replayed (fast.cuda_graph)."""
        self._n = torch.full((), float(self.num_updates), device=device)
        self._rate = torch.full((), self.rate, device=device)  # lives on the device, like _n

    @torch.no_grad()
    def update(self, model):
        if getattr(self, "_n", None) is not None:
            return self._update_on_device(model)
        n = self.num_updates
        rate = min(self.rate, (1.0 + n) / (10.0 + n)) if self.warmup else self.rate
        self.num_updates += 1
        src = list(unwrap(model).parameters())  # no_grad: no detach needed
        dst = list(self.shadow.parameters())
        if self.foreach:
            # shadow <- shadow + (1 - rate) * (p - shadow), as one fused op per dtype
            torch._foreach_lerp_(dst, src, 1.0 - rate)
        else:
            for d, s in zip(dst, src):
                d.mul_(rate).add_(s, alpha=1.0 - rate)
        for d, s in zip(self.shadow.buffers(), unwrap(model).buffers()):
            d.copy_(s)

    def _update_on_device(self, model):
        """shadow <- d * shadow + (1 - d) * p with d a device tensor: no host value per step."""
        d = self._rate
        if self.warmup:
            d = torch.minimum(d, (1.0 + self._n) / (10.0 + self._n))
        self._n.add_(1)
        self.num_updates += 1  # eager calls only; a replayed graph counts on the device
        dst = list(self.shadow.parameters())
        torch._foreach_mul_(dst, d)
        torch._foreach_add_(dst, torch._foreach_mul(list(unwrap(model).parameters()), 1.0 - d))

    def state_dict(self):
        return self.shadow.state_dict()

    def load_state_dict(self, sd):
        self.shadow.load_state_dict(sd)
