"""Structural (channel) pruning of the UNet and the DiT with torch-pruning (docs/design.md,
step 2).

Masks: for every pruning group of the dependency graph (in its deterministic order), one 0/1
entry per channel of the group's root layer (1 = pruned), concatenated. A DiT attention's group
is rooted at its qkv Linear and prunes whole heads: a head's q, k and v channels (and the
projection's inputs they feed) are pruned together, ranked by the head's summed importance; the
MLP's hidden units prune per unit. With ``depth_scale`` d > 0 (``pruning.depth_scale``, a DiT
only) a mask at ratio p also removes round(d * p * depth) whole blocks (at most depth - 1), those
of least block importance; a removed block's groups are masked entirely (every head and unit of
it pruned), so the mask format, its length and the early-bird rule stay as they are and a
changed choice of block weighs in the Hamming distance by the block's channels.

How a ratio p becomes kept channels (torch-pruning's GroupNorm handling is not used, see
docs/pruning.md): every group keeps round((1 - p) * C / u) * u of its
C channels, at least u, where u is the GroupNorm group size (C / model.gn_groups) for groups
that feed a GroupNorm and 1 otherwise. With ``round_to`` R (pruning.round_to), u becomes
lcm(R, that unit) wherever it divides C, so kept widths are multiples of R (8: what GPU kernels
like), as torch-pruning's own ``round_to`` does. Channels are ranked per channel by importance. After
pruning, each GroupNorm keeps its original group size where it can: its number of groups
becomes the divisor of its new width closest to new_width / original_group_size. So realised
MACs follow (1 - p)^2 closely and fall monotonically with p, every layer is pruned, and
GroupNorm stays valid.

A pruned model is stored as its state dict plus torch-pruning's pruning history (lists of
ints) and rebuilt on a fresh dense network with ``DependencyGraph.load_pruning_history``.
"""
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from models.pruner_names import canonical_pruner
from models.dit import drop_blocks, heads_from_widths
from models.networks import (attention_heads, build_network, transformer_blocks,
                             unprunable_layers)

def example_inputs(model_args, device="cpu"):
    r, c = model_args["resolution"], model_args["in_channels"]
    return (torch.randn(1, c, r, r, device=device),
            torch.ones(1, dtype=torch.long, device=device))


def build_graph(model, model_args):
    device = next(model.parameters()).device
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs(
        model_args, device))


def count_params_macs(model, model_args):
    """(parameters, MACs per image) of a network."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, example_inputs(model_args, device))
    return int(params), int(macs)


def count_flops(model, model_args):
    """Forward FLOPs per image of a network, counted by ``torch.utils.flop_counter.FlopCounterMode``
    (every matmul and convolution, attention's two matrix products included; 2 FLOPs per
    multiply-add). torch-pruning's MACs skip attention's products, so 2 x MACs undercounts."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode
    net = copy.deepcopy(model).float().cpu().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(*example_inputs(model_args))
    return int(counter.get_total_flops())


def channel_unit(channels, gn_unit, round_to):
    """The step of a group's kept width: lcm(round_to, GroupNorm unit) where it divides the
    group, else the GroupNorm unit."""
    if round_to and round_to > 1:
        u = math.lcm(int(round_to), int(gn_unit))
        if channels % u == 0:
            return u
    return int(gn_unit)


def kept_channels(channels, unit, ratio):
    """How many of ``channels`` a group keeps at pruning ratio ``ratio``."""
    slots = channels // unit
    keep = int(np.floor((1.0 - ratio) * slots + 0.5))
    return max(1, min(slots, keep)) * unit


class MaskExtractor:
    """Dependency graph and group layout of one architecture, built once; computes importance
    scores from any weights of that architecture and masks at any ratio."""

    def __init__(self, model_args, device="cpu", round_to=0, depth_scale=0.0):
        self.model_args = dict(model_args)
        self.round_to = int(round_to or 0)
        self.depth_scale = float(depth_scale or 0.0)
        self.device = torch.device(device)
        self.model = build_network(model_args).to(self.device).eval()
        self.DG = build_graph(self.model, model_args)
        self.groups = list(self.DG.get_all_groups(ignored_layers=unprunable_layers(self.model),
                                                  root_module_types=(nn.Conv2d, nn.Linear)))
        names = {m: n for n, m in self.model.named_modules()}
        # {qkv name: (heads, head width)}: groups pruned by whole heads
        self.heads = attention_heads(self.model)
        gn_groups = model_args.get("gn_groups", 32)
        self.layout = []  # (root name, channels, unit)
        for g in self.groups:
            root = g[0].dep.target.module
            c = self.DG.get_out_channels(root)
            has_gn = any(isinstance(d.dep.target.module, nn.GroupNorm) for d in g)
            unit = c // gn_groups if has_gn and c % gn_groups == 0 and c >= gn_groups else 1
            self.layout.append((names[root], int(c), channel_unit(c, unit, self.round_to)))
        # {block index: its prefix}: blocks that depth pruning may remove
        self.blocks = transformer_blocks(self.model) if self.depth_scale else {}
        if self.depth_scale and not self.blocks:
            raise ValueError("depth pruning (pruning.depth_scale) needs a network with "
                             "transformer blocks (model.type: dit)")

    @functools.cached_property
    def dense_cost(self):
        """(params, MACs per image) of the unpruned architecture."""
        return count_params_macs(self.model, self.model_args)

    @property
    def mask_length(self):
        return sum(c for _, c, _ in self.layout)

    def load_weights(self, state_dict):
        self.model.load_state_dict(state_dict)

    def scores(self, pruner, *, diffusion=None, data=None, taylor_steps=16, thr=0.05,
               stride=1, seed=0):
        """(per-group importance as a list of [C] tensors, info) for the loaded weights.

        info records what the importance read: for diff-pruning the timesteps whose gradients
        were accumulated and the one that stopped the scan."""
        pruner = canonical_pruner(pruner)
        if pruner == "magnitude":
            imp = tp.importance.GroupMagnitudeImportance(p=2)
            with torch.no_grad():
                return [imp(g).float().cpu() for g in self.groups] + self._block_scores(
                    pruner), {}
        if pruner == "random":
            gen = torch.Generator().manual_seed(seed)
            return [torch.rand(c, generator=gen) for _, c, _ in self.layout] + (
                [torch.rand(len(self.blocks), generator=gen)] if self.blocks else []), {}
        if data is None or diffusion is None:
            raise ValueError(f"the {pruner} pruner needs a batch of real data")
        self.model.zero_grad(set_to_none=True)
        if pruner == "taylor":
            info = self._taylor_gradients(diffusion, data, taylor_steps, seed)
        else:
            info = self._diff_pruning_gradients(diffusion, data, thr, stride, seed)
        imp = tp.importance.GroupTaylorImportance()
        out = [imp(g).float().cpu() for g in self.groups] + self._block_scores(pruner)
        self.model.zero_grad(set_to_none=True)
        return out, info

    def _block_scores(self, pruner):
        """[one tensor of a score per block] with depth pruning, else []: the block's L2 norm
        over all its weights (magnitude), or sum |w * dL/dw| over them (the gradient pruners:
        the first-order change of the loss if the block's weights were zero). Group scores are
        normalised within each group, so they cannot rank blocks."""
        if not self.blocks:
            return []
        params = dict(self.model.named_parameters())
        out = []
        for prefix in self.blocks.values():
            ws = [w for n, w in params.items() if n.startswith(prefix)]
            with torch.no_grad():
                if pruner == "magnitude":
                    out.append(torch.sqrt(sum((w.double() ** 2).sum() for w in ws)))
                else:
                    out.append(sum((w.double() * w.grad.double()).abs().sum() for w in ws
                                   if w.grad is not None))
        return [torch.stack(out).float().cpu()]

    def _taylor_gradients(self, diffusion, x0, steps, seed):
        """Sum the eps-loss gradients at ``steps`` timesteps spread evenly over [0, T), each
        with fresh noise."""
        T = diffusion.num_timesteps
        x0 = x0.to(self.device)
        gen = torch.Generator().manual_seed(seed)
        ts = [int(t) for t in np.linspace(0, T - 1, max(steps, 1)).round().astype(int)]
        for t_val in ts:
            noise = torch.randn(x0.shape, generator=gen).to(self.device)
            t = torch.full((x0.shape[0],), t_val, dtype=torch.long, device=self.device)
            diffusion.loss(self.model, x0, t, noise).backward()
        return {"timesteps": ts}

    def _diff_pruning_gradients(self, diffusion, x0, thr, stride, seed):
        """Diff-Pruning (Fang et al., NeurIPS 2023): one fixed noise batch, t = 0, stride,
        2 * stride, ... ascending; the eps-loss gradient of each t is accumulated until
        loss_t < thr * (the largest loss so far). As in the authors' EB release, the gradient
        of the step that meets the stopping condition is NOT accumulated."""
        T = diffusion.num_timesteps
        x0 = x0.to(self.device)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        used, stopped_at, max_loss = [], None, 0.0
        for t_val in range(0, T, max(int(stride), 1)):
            t = torch.full((x0.shape[0],), t_val, dtype=torch.long, device=self.device)
            loss = diffusion.loss(self.model, x0, t, noise)
            value = float(loss.detach())
            max_loss = max(max_loss, value)
            if value < thr * max_loss:
                stopped_at = t_val
                break
            loss.backward()
            used.append(t_val)
        return {"timesteps": used, "stopped_at": stopped_at, "thr": thr, "stride": stride}

    def masks_from_scores(self, scores, ratio):
        """0/1 uint8 mask (1 = pruned) at ``ratio``, concatenated over groups."""
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
        removed = self.removed_blocks(scores, ratio)
        parts = []
        for (name, c, unit), s in zip(self.layout, scores):
            if any(name.startswith(self.blocks[i]) for i in removed):
                parts.append(np.ones(c, dtype=np.uint8))
                continue
            if name in self.heads:
                parts.append(self._head_mask(name, s, ratio))
                continue
            keep = kept_channels(c, unit, ratio)
            m = np.zeros(c, dtype=np.uint8)
            order = torch.argsort(s, stable=True).numpy()
            m[order[:c - keep]] = 1
            parts.append(m)
        return np.concatenate(parts)

    def removed_blocks(self, scores, ratio):
        """The blocks depth pruning removes at ``ratio``: round(depth_scale * ratio * depth) of
        least block importance (the score list's last entry), at most all but one."""
        if not self.blocks:
            return []
        n = len(self.blocks)
        k = min(n - 1, int(np.floor(self.depth_scale * ratio * n + 0.5)))
        order = torch.argsort(scores[len(self.layout)], stable=True).tolist()
        return sorted(list(self.blocks)[i] for i in order[:k])

    def _head_mask(self, name, scores, ratio):
        """Mask of a qkv group [q | k | v], each heads x head width: the heads of lowest
        summed importance pruned, at least one kept."""
        heads, width = self.heads[name]
        per_head = scores.reshape(3, heads, width).sum(dim=(0, 2))
        keep = kept_channels(heads, 1, ratio)
        m = np.zeros((3, heads, width), dtype=np.uint8)
        m[:, torch.argsort(per_head, stable=True).numpy()[:heads - keep]] = 1
        return m.reshape(-1)

    def split(self, mask):
        """Concatenated mask -> list of per-group masks."""
        if mask.size != self.mask_length:
            raise ValueError(f"mask has {mask.size} entries, this architecture has "
                             f"{self.mask_length}")
        out, i = [], 0
        for _, c, _ in self.layout:
            out.append(mask[i:i + c])
            i += c
        return out

    def prune(self, state_dict, mask):
        """A new pruned network carrying ``state_dict``'s surviving weights, and its history."""
        model = build_network(self.model_args).to(self.device)
        model.load_state_dict(state_dict)
        DG = build_graph(model, self.model_args)
        modules = dict(model.named_modules())
        gn_sizes = _gn_group_sizes(model)
        parts = self.split(mask)
        # a block whose every group is masked whole is removed, not narrowed
        whole = {n for (n, c, _), m in zip(self.layout, parts) if int(m.sum()) == c}
        prefixes = transformer_blocks(model)
        removed = [i for i, prefix in prefixes.items()
                   if any(n.startswith(prefix) for n, _, _ in self.layout)
                   and all(n in whole for n, _, _ in self.layout if n.startswith(prefix))]
        inside = tuple(prefixes[i] for i in removed)
        for (name, _, _), m in zip(self.layout, parts):
            idxs = np.flatnonzero(m).tolist()
            if not idxs or name.startswith(inside):
                continue
            root = modules[name]
            handler = DG.get_pruner_of_module(root).prune_out_channels
            group = DG.get_pruning_group(root, handler, idxs)
            group.prune()
        fix_groupnorms(model, gn_sizes)
        heads_from_widths(model)
        drop_blocks(model, removed)
        history = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in
                   DG.pruning_history()]
        return model, history


def _gn_group_sizes(model):
    return {n: m.num_channels // m.num_groups for n, m in model.named_modules()
            if isinstance(m, nn.GroupNorm)}


def fix_groupnorms(model, group_sizes):
    """Give each pruned GroupNorm the number of groups nearest width / original group size
    that divides its width."""
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm) and name in group_sizes:
            c = m.num_channels
            target = c / group_sizes[name]
            divisors = [d for d in range(1, c + 1) if c % d == 0]
            m.num_groups = min(divisors, key=lambda d: (abs(d - target), -d))


def rebuild_pruned(model_args, history, removed_blocks=()):
    """A pruned network (random weights) from a dense architecture, a pruning history and the
    blocks depth pruning removed."""
    model = build_network(model_args)
    gn_sizes = _gn_group_sizes(model)
    DG = build_graph(model, model_args)
    DG.load_pruning_history([[n, bool(o), list(idx)] for n, o, idx in history])
    fix_groupnorms(model, gn_sizes)
    heads_from_widths(model)
    return drop_blocks(model, removed_blocks)
