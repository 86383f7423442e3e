"""FID with pytorch-fid (docs/design.md, step 7): statistics of a folder or a data set (cached as
.npz), the Fréchet distance of two statistics, and an offline path for Inception weights.

pytorch-fid downloads its Inception weights on first use; ``inception_weights=PATH`` loads a
local copy into the same FID Inception architecture instead (for machines without internet).
"""
import contextlib
import hashlib
import json
import os
import warnings

import numpy as np
import torch
from PIL import Image

from datasets import IMAGE_EXTS
from utils.errors import UserError
from utils.io import atomic_path, check_free


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), via pytorch-fid's implementation."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    if mu1.shape != mu2.shape:
        raise UserError(f"statistics of different feature sizes ({mu1.shape[0]} vs "
                        f"{mu2.shape[0]}): were they computed with the same --dims?")
    return float(calculate_frechet_distance(mu1, np.atleast_2d(sigma1), mu2,
                                            np.atleast_2d(sigma2)))


def feature_statistics(features):
    """features: [N, D] -> (mu [D], sigma [D, D])."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def list_images(folder, expected=None):
    """Sorted image files of a folder; checks count, readability and one common size."""
    if not os.path.isdir(folder):
        raise UserError(f"image folder not found: {folder}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise UserError(f"{folder}: no images")
    if expected is not None and len(files) < expected:
        raise UserError(f"{folder}: {len(files)} images, fewer than the {expected} asked for")
    if expected is not None:
        files = files[:expected]
    sizes = set()
    for f in files:
        try:
            with Image.open(f) as im:
                sizes.add(im.size)
        except OSError:
            raise UserError(f"{f}: not a readable image")
        if len(sizes) > 1:
            raise UserError(f"{folder}: images of different sizes ({sorted(sizes)[:2]}); "
                            f"FID needs one size")
    return files


@contextlib.contextmanager
def _local_inception_weights(path):
    """Make pytorch-fid load its FID Inception weights from ``path`` instead of the web."""
    import pytorch_fid.inception as pi
    if path is None:
        yield
        return
    if not os.path.isfile(path):
        raise UserError(f"--inception_weights {path}: file not found")
    orig = pi.load_state_dict_from_url

    def load(url, *a, **k):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"--inception_weights {path}: not a readable weights file ({e})")
    pi.load_state_dict_from_url = load
    try:
        yield
    finally:
        pi.load_state_dict_from_url = orig


def inception(dims=2048, device="cpu", weights=None):
    from pytorch_fid.inception import InceptionV3
    if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
        raise UserError(f"--dims {dims}: expected one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}")
    with _local_inception_weights(weights):
        try:
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]])
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"cannot get pytorch-fid's Inception weights ({type(e).__name__}); "
                            f"offline, pass --inception_weights PATH to a local "
                            f"pt_inception-2015-12-05 file")
    return model.to(device).eval()


def folder_statistics(files, model, *, dims, device, batch_size=50):
    from pytorch_fid.fid_score import calculate_activation_statistics
    if len(files) < dims:
        warnings.warn(f"{len(files)} images, fewer than the {dims} feature dimensions: the "
                      f"covariance is singular and FID is biased (the paper's protocol uses "
                      f"50k samples)")
    return calculate_activation_statistics(files, model, batch_size=min(batch_size, len(files)),
                                           dims=dims, device=device, num_workers=0)


def load_stats(path):
    """(mu, sigma, key or None) of a statistics .npz."""
    try:
        with np.load(path) as f:
            key = json.loads(str(f["key"])) if "key" in f.files else None
            return f["mu"], f["sigma"], key
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a statistics file with 'mu' and 'sigma' ({e})")


def save_stats(path, mu, sigma, key=None):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, key=json.dumps(key, sort_keys=True))


def sha256_of(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_id(weights):
    """What identifies the Inception weights: a local file's sha256, else pytorch-fid's own
    download."""
    if weights is None:
        from pytorch_fid.inception import FID_WEIGHTS_URL
        return f"pytorch-fid:{os.path.basename(FID_WEIGHTS_URL)}"
    if not os.path.isfile(weights):
        raise UserError(f"--inception_weights {weights}: file not found")
    return f"sha256:{sha256_of(weights)}"


def statistics_key(files, *, source, dims, weights):
    """Everything that determines a folder's statistics: the folder, its files (names, sizes,
    modification times), their number, the feature size and the Inception weights."""
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.basename(f)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return {"source": os.path.abspath(source), "n": len(files), "files_sha256": h.hexdigest(),
            "dims": dims, "weights": weights_id(weights)}


def reference_statistics(ref, model, *, dims, device, batch_size, cache=None, n=None,
                         weights=None, log=print):
    """ref: a .npz of statistics (used as given) or a folder of images (its first n, sorted);
    a folder's statistics are cached with the key that determines them and recomputed when
    the key differs (other files, count, feature size or weights)."""
    if ref.endswith(".npz"):
        if not os.path.isfile(ref):
            raise UserError(f"statistics file not found: {ref}")
        mu, sigma, _ = load_stats(ref)
        if mu.shape[0] != dims:
            raise UserError(f"{ref}: {mu.shape[0]}-d statistics, --dims is {dims}")
        log(f"reference statistics: {ref} (as given)")
        return mu, sigma
    files = list_images(ref, n)
    key = statistics_key(files, source=ref, dims=dims, weights=weights)
    cache = cache or os.path.abspath(ref).rstrip("/") + f"_fid_stats_{dims}.npz"
    if os.path.isfile(cache):
        mu, sigma, cached_key = load_stats(cache)
        if cached_key == key:
            log(f"reference statistics: cached {cache} ({key['n']} images of {ref})")
            return mu, sigma
        log(f"reference statistics: {cache} was computed from other images or weights; "
            f"recomputing")
    # the cache (mean and covariance in float64) is written after the long part: check first
    check_free(os.path.dirname(os.path.abspath(cache)), 8 * dims * (dims + 1) + 2**16,
               "the reference statistics' cache", "free space or point --stats_cache at a folder "
               "with room")
    mu, sigma = folder_statistics(files, model, dims=dims,
                                  device=device, batch_size=batch_size)
    save_stats(cache, mu, sigma, key)
    log(f"reference statistics: computed from {key['n']} images of {ref}, cached in {cache}")
    return mu, sigma


def fid(samples, ref, *, n=None, n_ref=None, dims=2048, device="cpu", batch_size=50,
        weights=None, cache=None, log=print):
    """FID between a folder of samples and a folder or .npz of reference statistics."""
    files = list_images(samples, n)
    model = inception(dims, device, weights)
    mu_r, s_r = reference_statistics(ref, model, dims=dims, device=device,
                                     batch_size=batch_size, cache=cache, n=n_ref,
                                     weights=weights, log=log)
    mu_s, s_s = folder_statistics(files, model, dims=dims, device=device, batch_size=batch_size)
    return frechet_distance(mu_s, s_s, mu_r, s_r), len(files)
