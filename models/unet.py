"""The DDPM UNet of the DDIM codebase ("simple" architecture).

Parameter names and shapes equal the DDIM codebase's ``Model`` for the same config, so the
official pretrained CIFAR-10 checkpoint loads with ``strict=True``
(tests/golden/ddim_unet_cifar10_state_dict.txt lists them; tests/test_unet.py checks). Only the network lives here: the
noise schedule is in ``models/diffusion.py``. torch-pruning traces this bare module.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    """Sinusoidal embedding of integer timesteps. t: [B] -> [B, dim]."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device)
                     * -(math.log(10000) / (half - 1)))
    args = t.float()[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def swish(x):
    """x * sigmoid(x). On a GPU as F.silu: one kernel forward and one backward instead of five,
    where a small ticket's step is bound by kernel launches; on the CPU written out, which is
    what the published digits numbers were trained with (the two differ by ~1e-6)."""
    if x.is_cuda:
        return F.silu(x)
    return x * torch.sigmoid(x)


def norm(channels, groups):
    # eps=1e-6 as in the DDIM code (TensorFlow's default there), so pretrained weights match.
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=1, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels, with_conv):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        if self.with_conv:
            # asymmetric padding, as in the original TensorFlow DDPM
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    def __init__(self, *, in_channels, out_channels, temb_channels, dropout, groups):
        super().__init__()
        self.norm1 = norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.norm = norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        # reshape with q's own channel count (not x's): a pruned block has fewer q/k channels
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)
        k = k.reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * (c ** -0.5), dim=2)
        v = v.reshape(b, v.shape[1], hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, v.shape[1], hh, ww)
        return x + self.proj_out(h)


class UNet(nn.Module):
    """DDPM UNet. x: [B, in_channels, R, R], t: [B] int -> eps: [B, out_ch, R, R]."""

    def __init__(self, *, in_channels, out_ch, ch, ch_mult, num_res_blocks, attn_resolutions,
                 dropout, resolution, resamp_with_conv=True, gn_groups=32):
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch),
                                         nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, stride=1, padding=1)

        block = dict(temb_channels=self.temb_ch, dropout=dropout, groups=gn_groups)
        curr_res = resolution
        in_ch_mult = (1,) + ch_mult
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(in_channels=block_in, out_channels=block_out, **block))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(AttnBlock(block_in, gn_groups))
            down = nn.Module()
            down.block, down.attn = blocks, attns
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, **block)
        self.mid.attn_1 = AttnBlock(block_in, gn_groups)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, **block)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            skip_in = ch * ch_mult[i_level]
            for i_block in range(num_res_blocks + 1):
                if i_block == num_res_blocks:
                    skip_in = ch * in_ch_mult[i_level]
                blocks.append(ResnetBlock(in_channels=block_in + skip_in,
                                          out_channels=block_out, **block))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attns.append(AttnBlock(block_in, gn_groups))
            up = nn.Module()
            up.block, up.attn = blocks, attns
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res *= 2
            self.up.insert(0, up)  # index = resolution level, as in the DDIM code

        self.norm_out = norm(block_in, gn_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, stride=1, padding=1)

    def forward(self, x, t):
        dtype = self.conv_in.weight.dtype  # a bf16 network takes and makes bf16 (no-op in fp32)
        temb = timestep_embedding(t, self.ch).to(dtype)
        temb = self.temb.dense[1](swish(self.temb.dense[0](temb)))

        hs = [self.conv_in(x.to(dtype))]
        for i_level in range(self.num_resolutions):
            for i_block in range(self.num_res_blocks):
                h = self.down[i_level].block[i_block](hs[-1], temb)
                if len(self.down[i_level].attn) > 0:
                    h = self.down[i_level].attn[i_block](h)
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                hs.append(self.down[i_level].downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for i_level in reversed(range(self.num_resolutions)):
            for i_block in range(self.num_res_blocks + 1):
                h = self.up[i_level].block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(self.up[i_level].attn) > 0:
                    h = self.up[i_level].attn[i_block](h)
            if i_level != 0:
                h = self.up[i_level].upsample(h)

        return self.conv_out(swish(self.norm_out(h)))
