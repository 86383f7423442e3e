"""A diffusion transformer (DiT, Peebles & Xie, ICCV 2023) for eps-prediction.

The architecture of the reference DiT (facebookresearch/DiT), unconditional and without the
learned variance: the image is cut into p x p patches (timm's PatchEmbed) and given fixed 2-D
sine-cosine position embeddings; the timestep's sinusoidal features (256, cosines first,
frequencies 10000^(-k/128)) go through a two-layer MLP to the conditioning vector c; each block
is pre-LayerNorm attention and MLP (timm's Attention and Mlp, tanh GELU) whose LayerNorms carry
no affine weights but are shifted and scaled by c, and whose residual branches are gated by c
(adaLN-Zero: the six modulation vectors come from one Linear of SiLU(c), initialised to zero, so
every block starts as the identity); a final adaLN LayerNorm and Linear give p * p * channels
values per token, folded back into the image.

What prunes (models/pruning.py): whole attention heads (q, k, v and the projection's inputs
together), the MLP's hidden units and, with ``pruning.depth_scale``, whole blocks (a removed
block becomes a ``SkippedBlock``, which passes its tokens through, so the other blocks keep
their names and a pruning history still replays). The token width (``hidden_size``) is shared
by every residual branch and stays. A pruned block keeps its head width; ``heads_from_widths``
restores each Attention's head count from its projection's width after a pruning history is
replayed.
"""
import math

import numpy as np
import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from timm.layers.attention import Attention

FREQ_DIM = 256  # sinusoidal features of the timestep (the reference's frequency_embedding_size)


def timestep_features(t, dim=FREQ_DIM, max_period=10000):
    """[N] timesteps -> [N, dim]: cos(t w_k), then sin(t w_k), w_k = max_period^(-k/(dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def sincos_1d(dim, positions):
    """[M] positions -> [M, dim]: sines then cosines at frequencies 10000^(-k/(dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim, grid):
    """Fixed position embeddings of a grid x grid token map, row-major: the first half of each
    vector encodes the column, the second half the row (the reference's layout)."""
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                             indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, hidden_features=mlp_hidden,
                       act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class SkippedBlock(nn.Module):
    """A block removed by depth pruning: its residual branches contribute nothing, so the
    tokens pass through unchanged (no parameters)."""

    def forward(self, x, c):
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden, out_per_token):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_per_token)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """eps(x_t, t) for images [N, in_channels, resolution, resolution]."""

    def __init__(self, *, in_channels, out_ch, resolution, patch_size=2, hidden_size=128,
                 depth=4, num_heads=4, mlp_ratio=4.0, arch="dit"):
        super().__init__()
        if arch != "dit":
            raise ValueError(f"DiT built with arch {arch!r}")
        if resolution % patch_size:
            raise ValueError(f"image size {resolution} is not a multiple of the patch size "
                             f"{patch_size}")
        if hidden_size % num_heads or (hidden_size // 2) % 2:
            raise ValueError(f"hidden_size {hidden_size} must split into {num_heads} heads and "
                             f"into sine-cosine halves (a multiple of 4)")
        self.in_channels, self.out_ch, self.patch_size = in_channels, out_ch, patch_size
        self.grid = resolution // patch_size
        self.x_embedder = PatchEmbed(resolution, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = nn.Sequential(nn.Linear(FREQ_DIM, hidden_size), nn.SiLU(),
                                        nn.Linear(hidden_size, hidden_size))
        # fixed, not trained: a buffer in the state dict (the reference keeps a frozen parameter)
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_2d(hidden_size, self.grid)).float()[None], persistent=True)
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_hidden)
                                    for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * out_ch)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder[2].weight, std=0.02)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x):
        """[N, tokens, p * p * C] -> [N, C, H, W]."""
        n, g, p, c = x.shape[0], self.grid, self.patch_size, self.out_ch
        x = x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, g * p, g * p)

    def forward(self, x, t):
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(timestep_features(t).to(h.dtype))
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def heads_from_widths(model):
    """After pruning: each Attention's head count from its projection's input width. Pruning
    removes whole heads, so ``head_dim`` (an attribute torch-pruning leaves alone) is still the
    width every head was built with."""
    for m in model.modules():
        if isinstance(m, Attention):
            m.attn_dim = m.proj.in_features
            m.num_heads = m.attn_dim // m.head_dim


def drop_blocks(model, indices):
    """Replace the blocks at ``indices`` with ``SkippedBlock`` (in place); returns the model."""
    for i in indices:
        model.blocks[int(i)] = SkippedBlock()
    return model


def dropped_blocks(model):
    """Indices of the blocks depth pruning removed ([] for a UNet or an unpruned DiT)."""
    return [i for i, b in enumerate(getattr(model, "blocks", []))
            if isinstance(b, SkippedBlock)]
