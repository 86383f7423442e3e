"""The bundled default's quality metric (docs/design.md, "The bundled default").

NOT Inception FID: Inception weights cannot be downloaded offline. It is the Fréchet distance
between generated digits and held-out real digits in the 64-d penultimate features of a small
CNN classifier trained on the data set's training split ("digits-FD"), reported next to that
classifier's accuracy on held-out real digits (which shows the features mean something). One
classifier per digit data set (DIGITS: scikit-learn's 8x8 digits; MNIST5K: 5,000 MNIST digits)
and image size, trained once and cached. Digits are never compared below COMPARE_MIN (16x16):
smaller samples are upsampled exactly as the data set upsamples its real digits (quantised to
uint8, then ``resize_uint8``), so a model trained at the digits' native 8x8 is scored by the
same classifier, against the same held-out digits, as one trained at 16x16.

Beside it, a sample-validity figure: the share of samples the classifier calls one digit with
softmax confidence >= VALID_CONFIDENCE ("valid"), printed next to the same share on held-out
real digits (the ceiling a perfect generator reaches), so broken samples show as a number.
"""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from datasets import data_transform, digit_split, resize_uint8
from core.checkpoint import load_checkpoint
from utils.io import atomic_save
from utils.errors import UserError
from evaluation.fid import feature_statistics, frechet_distance

VALID_CONFIDENCE = 0.9
COMPARE_MIN = 16


def compare_size(image_size):
    """The size samples of ``image_size`` are compared at: their own, at least COMPARE_MIN."""
    return max(int(image_size), COMPARE_MIN)


def upsample_like_data(samples, size):
    """Samples [N, 1, s, s] in [-1, 1] with s <= ``size`` -> [N, 1, size, size], the way a real
    digit reaches ``size``: quantised to uint8 (as a PNG is), then ``resize_uint8``."""
    if samples.shape[-1] == size:
        return samples
    if samples.shape[-1] > size or samples.shape[-1] != samples.shape[-2]:
        raise UserError(f"samples of {tuple(samples.shape[-2:])} cannot be compared at "
                        f"{size}x{size}")
    u8 = ((samples.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return data_transform(resize_uint8(u8, size))


class DigitClassifier(nn.Module):
    def __init__(self, image_size, feature_dim=64):
        super().__init__()
        self.image_size = image_size
        self.convs = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(64 * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x):
        return F.relu(self.fc(self.convs(x).flatten(1)))

    def forward(self, x):
        return self.head(self.features(x))


def real_digits(image_size, train, dataset="DIGITS"):
    images, labels = digit_split(dataset, train)
    return data_transform(resize_uint8(images, image_size)), labels


def train_classifier(image_size, epochs=15, seed=0, dataset="DIGITS"):
    torch.manual_seed(seed)
    x, y = real_digits(image_size, train=True, dataset=dataset)
    model = DigitClassifier(image_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            xb = x[idx]
            # small random shifts: robustness to imperfect generated digits
            shift = torch.randint(-1, 2, (2,), generator=g).tolist()
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def classifier_file(cache_dir, image_size, dataset="DIGITS"):
    prefix = "digits" if dataset == "DIGITS" else dataset.lower()
    return os.path.join(cache_dir, f"{prefix}_classifier_{image_size}.pth")


def load_or_train_classifier(image_size, cache_dir, dataset="DIGITS"):
    """The classifier for this data set and image size, trained once and cached in
    ``cache_dir``."""
    path = classifier_file(cache_dir, image_size, dataset)
    model = DigitClassifier(image_size)
    if os.path.isfile(path):
        model.load_state_dict(load_checkpoint(path)["model"])
        return model.eval(), path
    model = train_classifier(image_size, dataset=dataset)
    os.makedirs(cache_dir, exist_ok=True)
    atomic_save({"model": model.state_dict(), "model_args": {"image_size": image_size},
                 "version": 1}, path)
    return model, path


@torch.no_grad()
def features_of(model, x):
    return torch.cat([model.features(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()


def load_folder(folder, image_size, n=None):
    """A folder of generated PNGs -> float [-1, 1] tensor [N, 1, S, S], S = ``image_size``
    (square images of one smaller size are upsampled as the data set's digits are)."""
    if not os.path.isdir(folder):
        raise UserError(f"sample folder not found: {folder}")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png"))
    if n is not None:
        if len(files) < n:
            raise UserError(f"{folder}: {len(files)} images, fewer than the {n} asked for")
        files = files[:n]
    if not files:
        raise UserError(f"{folder}: no PNG images")
    arrs = []
    for f in files:
        try:
            with Image.open(os.path.join(folder, f)) as im:
                a = np.array(im.convert("L"))
        except OSError:
            raise UserError(f"{os.path.join(folder, f)}: not a readable image")
        side = arrs[0].shape[0] if arrs else a.shape[0]
        if a.shape != (side, side) or side > image_size:
            raise UserError(f"{os.path.join(folder, f)}: size {a.shape[::-1]}, expected "
                            f"{side}x{side}, at most {image_size}x{image_size}")
        arrs.append(a)
    images = torch.from_numpy(np.stack(arrs))[:, None]
    return data_transform(resize_uint8(images, image_size))


@torch.no_grad()
def valid_share(model, x, confidence=VALID_CONFIDENCE):
    """Share of images [N, 1, S, S] in [-1, 1] the classifier calls one digit with softmax
    confidence >= ``confidence``."""
    probs = torch.cat([F.softmax(model(x[i:i + 256]), 1) for i in range(0, len(x), 256)])
    return float((probs.max(1).values >= confidence).float().mean())


def roughness(x):
    """Mean |discrete Laplacian| of each image [N, 1, S, S] in [-1, 1]: [N]. Speckled noise that
    never became a digit is far rougher than any pen stroke."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return F.conv2d(x.float(), kernel).abs().mean(dim=(1, 2, 3))


def noise_like_share(samples, real):
    """Share of samples rougher than every real digit (``real``: the held-out digits)."""
    return float((roughness(samples) > roughness(real).max()).float().mean())


def evaluate(samples, image_size, cache_dir, dataset="DIGITS"):
    """samples: [N, 1, s, s] in [-1, 1], s <= ``image_size`` (upsampled like the data) ->
    dict(digits_fd, valid, real_valid, noise_like, classifier_acc, n, class_histogram), at
    ``image_size`` against ``dataset``'s held-out digits."""
    samples = upsample_like_data(samples, image_size)
    model, _ = load_or_train_classifier(image_size, cache_dir, dataset)
    x_test, y_test = real_digits(image_size, train=False, dataset=dataset)
    with torch.no_grad():
        acc = float((model(x_test).argmax(1) == y_test).float().mean())
    mu_r, s_r = feature_statistics(features_of(model, x_test))
    mu_g, s_g = feature_statistics(features_of(model, samples))
    with torch.no_grad():
        pred = model(samples).argmax(1)
    class_hist = torch.bincount(pred, minlength=10).tolist()
    return {"digits_fd": frechet_distance(mu_g, s_g, mu_r, s_r), "classifier_acc": acc,
            "valid": valid_share(model, samples), "real_valid": valid_share(model, x_test),
            "noise_like": noise_like_share(samples, x_test),
            "valid_confidence": VALID_CONFIDENCE,
            "n": int(samples.shape[0]), "class_histogram": class_hist,
            "metric": "digits-FD: Fréchet distance in a digit classifier's 64-d features vs "
                      "held-out real digits (not Inception FID)"}
