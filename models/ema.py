"""Exponential moving average of a network's parameters (kept on the unwrapped module, so
DDP's ``module.`` prefix never reaches a checkpoint)."""
import copy

import torch


def unwrap(model):
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)      # DDP


class EMA:
    def __init__(self, model, rate, foreach=True):
        self.rate = rate
        self.foreach = foreach
        self.shadow = copy.deepcopy(unwrap(model)).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        src = [p.detach() for p in unwrap(model).parameters()]
        dst = list(self.shadow.parameters())
        if self.foreach:
            # shadow <- shadow + (1 - rate) * (p - shadow), as one fused op per dtype
            torch._foreach_lerp_(dst, src, 1.0 - self.rate)
        else:
            for d, s in zip(dst, src):
                d.mul_(self.rate).add_(s, alpha=1.0 - self.rate)
        for d, s in zip(self.shadow.buffers(), unwrap(model).buffers()):
            d.copy_(s)

    def state_dict(self):
        return self.shadow.state_dict()

    def load_state_dict(self, sd):
        self.shadow.load_state_dict(sd)
