"""Hamming distance, the FIFO early-bird rule, overlap matrices and their CLIs."""
import json
import os

import numpy as np
import pytest

from conftest import run_py
from models.earlybird import (EarlyBirdDetector, MaskMismatch, find_earlybird, hamming,
                              overlap_matrix)
from core.layout import mask_stem
from runners.masks import load_mask_series, save_mask


def test_hamming():
    a = np.array([0, 1, 1, 0], dtype=np.uint8)
    assert hamming(a, a) == 0.0
    assert hamming(a, 1 - a) == 1.0
    assert hamming(a, np.array([0, 1, 0, 0])) == 0.25
    with pytest.raises(MaskMismatch, match="different lengths"):
        hamming(a, np.zeros(5))


def _sequence(n_epochs, settle_at, size=200, seed=0):
    """Masks that change a lot until ``settle_at``, then only 2% per epoch."""
    rng = np.random.RandomState(seed)
    masks, m = [], rng.randint(0, 2, size)
    for e in range(n_epochs):
        if e < settle_at:
            m = rng.randint(0, 2, size)
        else:
            m = m.copy()
            flip = rng.choice(size, size // 50, replace=False)
            m[flip] = 1 - m[flip]
        masks.append((e, m.astype(np.uint8)))
    return masks


def test_fifo_rule_finds_known_epoch():
    # the last random mask is epoch 5; epochs 6.. drift 2% each, so the window 5..9 is the
    # first whose masks are all within 0.1 (at most 4 x 2% apart)
    eb, det = find_earlybird(_sequence(20, 6), window=5, threshold=0.1)
    assert eb == 9
    assert det.found and det.history[-1][0] == 9
    # a tighter threshold needs a tighter window: 0.05 admits at most 2 drifts
    assert find_earlybird(_sequence(20, 6), window=3, threshold=0.05)[0] == 7


def test_fifo_rule_none_found_and_window_longer_than_sequence():
    assert find_earlybird(_sequence(12, 100), window=5, threshold=0.1)[0] is None
    assert find_earlybird(_sequence(3, 0), window=5, threshold=0.1)[0] is None


def test_detector_refuses_masks_of_other_lengths():
    det = EarlyBirdDetector(3, 0.1)
    det.push(0, np.zeros(10))
    with pytest.raises(MaskMismatch):
        det.push(1, np.zeros(11))


def test_overlap_matrix_symmetric_with_unit_diagonal():
    masks = [m for _, m in _sequence(6, 3)]
    mat = overlap_matrix(masks)
    assert mat.shape == (6, 6)
    assert np.allclose(mat, mat.T) and np.allclose(np.diag(mat), 1.0)
    assert mat[0, 1] == pytest.approx(1 - hamming(masks[0], masks[1]))


def _write_series(folder, masks, ratio=0.3, pruner="magnitude"):
    for e, m in masks:
        save_mask(os.path.join(str(folder), mask_stem("run", ratio, pruner, e) + ".npy"), m,
                  {"epoch": e})


@pytest.mark.slow
def test_find_earlybird_cli(tmp_path):
    _write_series(tmp_path, _sequence(20, 6))
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3", "--pruner", "magnitude"])
    assert res.returncode == 0, res.stderr
    assert "EarlyBird found at epoch: 9" in res.stdout
    out = json.load(open(tmp_path / "earlybird-0.3-magnitude.json"))
    assert out["eb_epoch"] == 9
    res = run_py(["earlybird_scripts/calculate_overlap.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3"])
    assert res.returncode == 0
    mat = np.load(tmp_path / "overlap-0.3-magnitude.npy")
    assert mat.shape == (20, 20)
    res = run_py(["earlybird_scripts/plot_overlap.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3"])
    assert res.returncode == 0, res.stderr
    assert os.path.getsize(tmp_path / "overlap-0.3-magnitude.png") > 1000
    assert os.path.getsize(tmp_path / "distances-magnitude.png") > 1000


@pytest.mark.slow
def test_find_earlybird_cli_no_ticket(tmp_path):
    _write_series(tmp_path, _sequence(8, 100))
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3"])
    assert res.returncode == 0 and "no early-bird ticket in epochs 0..7" in res.stdout


@pytest.mark.slow
def test_find_earlybird_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(empty),
                  "--pruning_ratio", "0.3"])
    assert res.returncode == 2 and "no masks" in res.stderr
    gap = tmp_path / "gap"
    _write_series(gap, [x for x in _sequence(8, 0) if x[0] not in (3, 5)])
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(gap),
                  "--pruning_ratio", "0.3"])
    assert res.returncode == 2 and "missing for epoch(s) 3, 5" in res.stderr
    mixed = tmp_path / "mixed"
    _write_series(mixed, [(0, np.zeros(10, np.uint8)), (1, np.zeros(12, np.uint8))])
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(mixed),
                  "--pruning_ratio", "0.3", "--window", "2"])
    assert res.returncode == 2 and "entries" in res.stderr


@pytest.mark.slow
def test_online_earlybird_record_equals_the_offline_analysis(trained, tmp_path):
    """The masks, distances and EB epochs the detector wrote during training are what
    prune.py + the FIFO rule give afterwards from the per-epoch checkpoints."""
    rec = json.load(open(os.path.join(trained["log"], "earlybird.json")))
    assert set(rec["ratios"]) == {"0.3", "0.5"} and rec["window"] == 2
    online_dir = os.path.join(trained["exp"], "pruned", "tiny", "masks")
    res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                  str(tmp_path), "--doc", "tiny", "--use_ema", "--restore_from", trained["log"],
                  "--pruning_ratio", "0.3", "0.5", "--save_masks", "--quiet"])
    assert res.returncode == 0, res.stderr
    offline_dir = os.path.join(str(tmp_path), "pruned", "tiny", "masks")
    for ratio in ("0.3", "0.5"):
        online = load_mask_series(online_dir, float(ratio), "magnitude", doc="tiny")
        offline = load_mask_series(offline_dir, float(ratio), "magnitude", doc="tiny")
        assert [e for e, _ in offline] == [0, 1, 2, 3]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(online, offline))
        det = EarlyBirdDetector(rec["window"], rec["threshold"])
        for e, m in offline:
            det.push(e, m)
        want = {str(e): d for e, d, _ in det.history}
        assert rec["ratios"][ratio]["max_distance"] == want
        assert any(v is not None and v > 0 for v in want.values())  # masks moved
        eb, _ = find_earlybird(offline, window=rec["window"], threshold=rec["threshold"])
        assert rec["ratios"][ratio]["eb_epoch"] == eb
