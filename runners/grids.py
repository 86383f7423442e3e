"""Sample grids: the titled PNGs that training writes every few epochs and sampling writes beside
its folder (also sent to TensorBoard)."""
import os

import matplotlib

matplotlib.use("Agg")
import math

import matplotlib.pyplot as plt  # noqa: E402

from utils.io import save_figure  # noqa: E402


def upscale_factor(size, target=64):
    """Nearest-neighbour zoom that brings small images to about ``target`` pixels."""
    return max(1, target // max(size, 1))


def save_sample_grid(images, path, title):
    """images: float [N, C, H, W] in [0, 1] -> a titled PNG grid, small images scaled up
    (nearest) so each is about 64 px. Returns the grid image [C', H', W'] in [0, 1]."""

    import torch
    import torch.nn.functional as F
    import torchvision.utils as vutils
    k = upscale_factor(images.shape[-1])
    big = F.interpolate(images, scale_factor=k, mode="nearest") if k > 1 else images
    grid = vutils.make_grid(big, nrow=int(math.ceil(math.sqrt(len(images)))), padding=2 * k,
                            pad_value=1.0)
    h, w = grid.shape[1:]
    fig = plt.figure(figsize=(w / 100, h / 100 + 0.35), dpi=100)
    ax = fig.add_axes((0, 0, 1, h / (h + 35)))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy() if grid.shape[0] == 1 else
              grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1 - 0.1 * 35 / (h + 35))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return grid.clamp(0, 1).to(torch.float32)
