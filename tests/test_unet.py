import os

import torch

from conftest import ROOT
from models.unet import UNet

REF = os.path.join(ROOT, "tests", "golden", "ddim_unet_cifar10_state_dict.txt")

CIFAR_ARGS = dict(in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=2,
                  attn_resolutions=[16], dropout=0.1, resolution=32)


def reference_shapes():
    """{name: shape} of the DDIM codebase's CIFAR-10 UNet (a missing file is a failure)."""
    out = {}
    with open(REF) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape = line.rstrip("\n").split("\t")
            out[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def test_cifar10_unet_matches_ddim_parameter_names_and_shapes():
    model = UNet(**CIFAR_ARGS)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ref = reference_shapes()
    assert len(ref) == 328
    assert sum(p.numel() for p in model.parameters()) == 35746307
    assert ours == ref


def test_forward_shape_and_timestep_dependence():
    m = UNet(in_channels=1, out_ch=1, ch=16, ch_mult=[1, 2], num_res_blocks=1,
             attn_resolutions=[4], dropout=0.0, resolution=8, gn_groups=8).eval()
    x = torch.randn(3, 1, 8, 8)
    y0 = m(x, torch.zeros(3, dtype=torch.long))
    y1 = m(x, torch.full((3,), 50, dtype=torch.long))
    assert y0.shape == x.shape
    assert not torch.allclose(y0, y1)
