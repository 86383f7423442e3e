"""The optimizer and the learning-rate schedule of a training run (ordinary, or graph-safe for
fast.cuda_graph: fused, with a tensor learning rate)."""
import math

import torch


def make_optimizer(cfg, params, device, *, graph_safe=False):
    """The optimizer of ``cfg.optim``; ``graph_safe``: fused Adam / AdamW whose learning rate is
    a tensor, capturable on CUDA (runners/graph_step.py)."""
    o = cfg.optim
    adam = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}.get(o.optimizer)
    if adam is not None:
        if graph_safe:
            fast = {"fused": True, **({"capturable": True} if device.type == "cuda" else {})}
        elif cfg.fast.fused_optimizer:
            fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        else:
            fast = {}
        return adam(params, lr=o.lr, weight_decay=o.weight_decay, betas=(o.beta1, 0.999),
                    amsgrad=o.amsgrad, eps=o.eps, **fast)
    if o.optimizer == "RMSProp":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=0.9)


def lr_at(optim, step, total_steps):
    """The learning rate of optimizer step ``step`` (0-based): linear warm-up over
    ``optim.warmup`` steps, then constant, or cosine / linear decay to ``optim.min_lr`` at the
    last step. A function of the step alone, so resume needs no scheduler state."""
    lr, warmup = optim.lr, optim.warmup
    if step < warmup:
        return lr * (step + 1) / warmup
    if optim.schedule == "constant":
        return lr
    p = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
    lo = optim.min_lr
    if optim.schedule == "cosine":
        return lo + (lr - lo) * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr + (lo - lr) * p


