"""FID (pytorch-fid), statistics caching, and the digits metric's sanity properties."""
import os

import numpy as np
import pytest
import torch

from conftest import run_py
from utils.errors import UserError
from evaluation.fid import (feature_statistics, frechet_distance, list_images,
                         reference_statistics)


def test_frechet_distance_closed_form():
    # diagonal Gaussians: ||mu1-mu2||^2 + sum (s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    expect = 1 + 0 + 4 + (1 + 4 - 4) + (4 + 1 - 4) + (9 + 1 - 6)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-6)
    feats = np.random.RandomState(0).randn(500, 8)
    mu, sig = feature_statistics(feats)
    assert frechet_distance(mu, sig, mu, sig) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserError, match="different feature sizes"):
        frechet_distance(mu, sig, mu[:4], sig[:4, :4])


def _folder(path, n, size=(16, 16), seed=0):
    from PIL import Image
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(n):
        Image.fromarray(rng.randint(0, 255, size + (3,), dtype=np.uint8)).save(
            os.path.join(path, f"{i:06d}.png"))
    return str(path)


def test_sample_folder_checks(tmp_path):
    f = _folder(tmp_path / "a", 3)
    with pytest.raises(UserError, match="fewer than the 5 asked for"):
        list_images(f, 5)
    _folder(tmp_path / "b", 2)
    _folder(tmp_path / "b2", 1, size=(20, 20))
    os.rename(tmp_path / "b2" / "000000.png", tmp_path / "b" / "000009.png")
    with pytest.raises(UserError, match="different sizes"):
        list_images(str(tmp_path / "b"))
    (tmp_path / "a" / "zzz.png").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable image"):
        list_images(f)


def test_statistics_cache_is_reused(tmp_path, monkeypatch):
    import evaluation.fid as fid
    calls = []

    def fake_stats(files, model, **kw):
        calls.append(len(files))
        return np.zeros(4), np.eye(4)
    monkeypatch.setattr(fid, "folder_statistics", fake_stats)
    ref = _folder(tmp_path / "real", 3)
    cache = str(tmp_path / "stats.npz")
    reference_statistics(ref, None, dims=4, device="cpu", batch_size=2, cache=cache)
    assert os.path.isfile(cache) and calls == [3]
    mu, sigma = reference_statistics(ref, None, dims=4, device="cpu", batch_size=2, cache=cache)
    assert calls == [3] and mu.shape == (4,)


@pytest.mark.slow
def test_pytorch_fid_pipeline_with_random_inception_weights(tmp_path):
    """A pipeline test of the real pytorch-fid path (random Inception weights stand in for the
    downloaded ones, so the number is not a quality measure)."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                          init_weights=False)
    weights = tmp_path / "random_inception.pth"
    torch.save(net.state_dict(), weights)
    samples, real = _folder(tmp_path / "s", 6, seed=1), _folder(tmp_path / "r", 6, seed=2)
    out = tmp_path / "fid.json"
    res = run_py(["earlybird_scripts/fid.py", samples, real, "--dims", "64", "--batch-size",
                  "3", "--inception_weights", str(weights), "--output", str(out)])
    assert res.returncode == 0, res.stderr
    assert "FID:" in res.stdout and os.path.isfile(out)
    assert os.path.isfile(str(tmp_path / "r") + "_fid_stats_64.npz")
    res = run_py(["earlybird_scripts/fid.py", samples, str(tmp_path / "none.npz"),
                  "--dims", "64", "--inception_weights", str(weights)])
    assert res.returncode == 2 and "statistics file not found" in res.stderr


@pytest.mark.slow
def test_digits_metric_is_meaningful(trained, tmp_path):
    from evaluation.digits_metric import evaluate, load_folder, real_digits
    cache = str(tmp_path)
    x_train, _ = real_digits(8, train=True)
    real = evaluate(x_train[:300], 8, cache)
    assert real["classifier_acc"] > 0.9
    assert os.path.isfile(os.path.join(cache, "digits_classifier_8.pth"))  # cached
    noise = evaluate(torch.rand(300, 1, 8, 8) * 2 - 1, 8, cache)
    # a briefly trained model's samples
    folder = tmp_path / "gen"
    from main import main
    assert main(["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny", "--ni",
                 "--sample", "--use_ema", "--timesteps", "20", "--image_folder", str(folder),
                 "--n_samples", "300"]) == 0
    gen = evaluate(load_folder(str(folder), 8), 8, cache)
    assert real["digits_fd"] < gen["digits_fd"] < noise["digits_fd"]
    assert real["digits_fd"] < 0.1 * noise["digits_fd"]


def test_small_digits_are_compared_upsampled_like_the_data(tmp_path):
    """Samples at the digits' native 8x8 are scored at 16x16 after the same uint8 resize the
    data set applies to real digits: real 8x8 digits then are exactly real 16x16 digits, and a
    folder of 8x8 PNGs loads at 16x16; larger or mixed sizes are refused."""
    from PIL import Image
    from datasets import data_transform, digit_split
    from evaluation.digits_metric import (compare_size, load_folder, real_digits,
                                          upsample_like_data)
    assert (compare_size(8), compare_size(16), compare_size(28)) == (16, 16, 28)
    native, _ = digit_split("DIGITS", False)
    assert native.shape[-1] == 8
    up = upsample_like_data(data_transform(native), 16)
    assert torch.equal(up, real_digits(16, train=False)[0])
    assert torch.equal(upsample_like_data(up, 16), up)   # already there: unchanged
    folder = tmp_path / "gen"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(native[i, 0].numpy()).save(folder / f"{i:06d}.png")
    assert torch.equal(load_folder(str(folder), 16), up[:4])
    with pytest.raises(UserError, match="at most 4x4"):
        load_folder(str(folder), 4)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "000009.png")
    with pytest.raises(UserError, match="expected 8x8"):
        load_folder(str(folder), 16)
    with pytest.raises(UserError, match="cannot be compared"):
        upsample_like_data(torch.zeros(2, 1, 28, 28), 16)
