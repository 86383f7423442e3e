"""Numbers that cannot be silently wrong: exact resume with the shipped config (and after
kill -9), Diff-Pruning as published, FID statistics and sample folders that cannot go stale,
architecture mismatches, the release's mask names, range checks."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_py, write_config
from main import main
from core.checkpoint import load_checkpoint
from utils.errors import UserError

# the shipped digits config (online early bird and grids on), shortened
DIGITS_SHORT = ["training.max_steps_per_epoch=4", "training.sample_every=1",
                "training.grid_samples=4", "sampling.timesteps=4", "earlybird.window=2",
                "earlybird.ratios=[0.5]"]


def _train(exp, doc, epochs, *extra):
    return main(["--config", "digits.yml", "--exp", exp, "--doc", doc, "--ni",
                 *extra, "--override", f"training.n_epochs={epochs}", *DIGITS_SHORT])


def _weights(exp, doc):
    c = load_checkpoint(os.path.join(exp, "logs", doc, "ckpt.pth"))
    return c["model"], c["ema"], c


def _assert_same(a, b):
    for part in (0, 1):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), k


@pytest.mark.slow
def test_resume_is_exact_with_the_shipped_digits_config(tmp_path):
    exp = str(tmp_path)
    assert _train(exp, "full", 3) == 0
    assert _train(exp, "part", 2) == 0
    assert main(["--config", "digits.yml", "--exp", exp, "--doc", "part", "--resume_training",
                 "--override", "training.n_epochs=3", *DIGITS_SHORT]) == 0
    _assert_same(_weights(exp, "full"), _weights(exp, "part"))
    costs = [json.loads(line) for line in open(os.path.join(exp, "logs", "part", "costs.jsonl"))]
    assert [c["epoch"] for c in costs] == [0, 1, 2]
    assert os.path.isfile(os.path.join(exp, "logs", "part", "samples", "ep2.png"))
    eb_full = json.load(open(os.path.join(exp, "logs", "full", "earlybird.json")))
    eb_part = json.load(open(os.path.join(exp, "logs", "part", "earlybird.json")))
    assert eb_full["ratios"] == eb_part["ratios"]


def _every_file_loads(folder):
    n = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            if f.endswith(".pth"):
                load_checkpoint(p)
            elif f.endswith(".npy"):
                np.load(p)
            elif f.endswith(".json"):
                json.load(open(p))
            elif f.endswith(".jsonl"):
                [json.loads(line) for line in open(p) if line.strip()]
            else:
                continue
            n += 1
    return n


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    # every run in a subprocess with one thread: results are bit-identical for a fixed thread
    # count (a reduction over another number of threads rounds differently)
    exp = str(tmp_path)
    longer = ["training.max_steps_per_epoch=12"]

    def cmd(doc, *flags):
        return ["main.py", "--config", "digits.yml", "--exp", exp, "--doc", doc, *flags,
                "--override", "training.n_epochs=3", *DIGITS_SHORT, *longer]
    assert run_py(cmd("full", "--ni")).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable] + cmd("killed", "--ni"), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # ckpt.pth is the last thing an epoch writes: once it exists, epoch 1 has begun
    first = os.path.join(exp, "logs", "killed", "ckpt.pth")
    deadline = time.time() + 300
    while not os.path.isfile(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert _every_file_loads(os.path.join(exp, "logs", "killed")) >= 2
    assert _every_file_loads(os.path.join(exp, "pruned", "killed")) >= 1
    res = run_py(cmd("killed", "--resume_training"))
    assert res.returncode == 0, res.stderr[-2000:]
    _assert_same(_weights(exp, "full"), _weights(exp, "killed"))
    costs = [json.loads(line) for line in
             open(os.path.join(exp, "logs", "killed", "costs.jsonl"))]
    assert [c["epoch"] for c in costs] == [0, 1, 2]


def test_diff_pruning_scans_ascending_t_with_fixed_noise_and_stops_by_the_rule():
    from models.diffusion import Diffusion
    from models.pruning import MaskExtractor
    args = dict(in_channels=1, out_ch=1, ch=16, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[4], dropout=0.0, resolution=8, gn_groups=8)
    torch.manual_seed(0)
    ex = MaskExtractor(args)
    diff = Diffusion(**{"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                      "num_diffusion_timesteps": 60})
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))  # seed 0's batch
    with torch.no_grad():
        losses = [diff.loss(ex.model, x0, torch.full((4,), t), noise).item() for t in range(60)]
    # an untrained network's loss barely moves with t: a threshold just under 1 stops the
    # scan at the first timestep whose loss falls below the largest so far
    thr = 0.999
    assert any(losses[t] < thr * max(losses[:t + 1]) for t in range(60))
    _, info = ex.scores("diff-pruning", diffusion=diff, data=x0, thr=thr, seed=0)
    stop = info["stopped_at"]
    assert stop is not None and info["timesteps"] == list(range(stop))
    assert losses[stop] < thr * max(losses[:stop + 1])
    assert all(losses[t] >= thr * max(losses[:t + 1]) for t in range(stop))
    _, info2 = ex.scores("diff-pruning", diffusion=diff, data=x0, thr=thr, stride=3, seed=0)
    assert info2["timesteps"] == list(range(0, info2["stopped_at"], 3))
    # thr tiny: the scan covers every timestep, and gradients from all of them count
    _, info3 = ex.scores("diff-pruning", diffusion=diff, data=x0, thr=1e-9, stride=7, seed=0)
    assert info3["stopped_at"] is None and info3["timesteps"] == list(range(0, 60, 7))


def test_mask_json_records_the_diff_pruning_timesteps(tmp_path):
    from conftest import TINY
    cfg = write_config(tmp_path / "c.yml", TINY, training__n_epochs=1,
                       earlybird__enabled=True, earlybird__pruner="diff-pruning",
                       pruning__thr=0.5, pruning__taylor_batch_size=8,
                       pruning__diff_stride=7)
    assert main(["--config", cfg, "--exp", str(tmp_path), "--doc", "d", "--ni"]) == 0
    masks = os.path.join(tmp_path, "pruned", "d", "masks")
    meta = json.load(open(os.path.join(masks, "d_pruned-0.3-diff-pruning-0.json")))
    assert meta["timesteps"] == list(range(0, 7 * len(meta["timesteps"]), 7))
    assert meta["thr"] == 0.5 and meta["stride"] == 7 and "stopped_at" in meta


@pytest.mark.parametrize("pruner,where", [("taylor", "cuda:3"), ("diff-pruning", "cuda:3"),
                                          ("magnitude", "cpu")])
def test_online_gradient_importance_runs_on_the_training_device(monkeypatch, pruner, where):
    """Forward + backward importance follows training to its device; magnitude stays on CPU."""
    import runners.earlybird_online as online
    seen = {}

    def fake_extractor(model_args, device="cpu", round_to=0, depth_scale=0.0):
        seen["extractor"] = str(device)

    def fake_inputs(cfg, pruner, dataset, device="cpu"):
        seen["inputs"] = str(device)
        return None, None
    monkeypatch.setattr(online, "MaskExtractor", fake_extractor)
    monkeypatch.setattr(online, "pruning_inputs", fake_inputs)
    from core.config import load_config
    cfg = load_config("digits.yml", [f"earlybird.pruner={pruner}"])
    online.OnlineEarlyBird(cfg, {}, layout=None, doc="d", dataset=None, device="cuda:3")
    assert seen == {"extractor": where, "inputs": where}


@pytest.mark.slow
def test_release_mask_names_with_ours_are_read(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(100) < 0.3).astype(np.float32)
    for e in range(6):  # the release saves float32 0/1 masks, Diff-Pruning named 'ours'
        np.save(tmp_path / f"cifar10_pruned-0.3-ours-{e}.npy", base)
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3", "--pruner", "ours"])
    assert res.returncode == 0, res.stderr
    assert "EarlyBird found at epoch: 4" in res.stdout
    assert json.load(open(tmp_path / "earlybird-0.3-diff-pruning.json"))["eb_epoch"] == 4


@pytest.mark.slow
def test_find_earlybird_window_longer_than_run_keeps_earlier_result(tmp_path):
    for e in range(3):
        np.save(tmp_path / f"r_pruned-0.3-magnitude-{e}.npy", np.zeros(10, np.uint8))
    out = tmp_path / "earlybird-0.3-magnitude.json"
    out.write_text('{"eb_epoch": 7}')
    res = run_py(["earlybird_scripts/find_earlybird.py", "--mask_dir", str(tmp_path),
                  "--pruning_ratio", "0.3", "--window", "5"])
    assert res.returncode == 2 and "can never fill" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert json.load(open(out)) == {"eb_epoch": 7}


# --- FID statistics ----------------------------------------------------------------------------

def _png_folder(folder, n, seed=0):
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{i:06d}.png"))
    return str(folder)


def test_fid_cache_is_keyed_by_weights_source_and_count(tmp_path, monkeypatch):
    import evaluation.fid as fid
    calls = []

    def fake_stats(files, model, **kw):
        calls.append(len(files))
        return np.full(4, float(len(calls))), np.eye(4)
    monkeypatch.setattr(fid, "folder_statistics", fake_stats)
    ref = _png_folder(tmp_path / "real", 5)
    w1, w2 = tmp_path / "w1.pth", tmp_path / "w2.pth"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    said = []
    kw = dict(dims=4, device="cpu", batch_size=2, log=said.append)
    fid.reference_statistics(ref, None, weights=str(w1), **kw)
    fid.reference_statistics(ref, None, weights=str(w1), **kw)
    assert calls == [5] and "cached" in said[-1]
    fid.reference_statistics(ref, None, weights=str(w2), **kw)     # other weights
    assert calls == [5, 5] and "recomputing" in said[-2]
    fid.reference_statistics(ref, None, weights=str(w2), n=3, **kw)  # fewer images
    assert calls == [5, 5, 3]
    _png_folder(tmp_path / "real2", 2, seed=1)
    os.replace(tmp_path / "real2" / "000000.png", tmp_path / "real" / "000005.png")
    mu, _ = fid.reference_statistics(ref, None, weights=str(w2), **kw)  # another file list
    assert calls == [5, 5, 3, 6] and mu[0] == 4.0
    key = fid.load_stats(ref + "_fid_stats_4.npz")[2]
    assert key["n"] == 6 and key["weights"].startswith("sha256:") and key["dims"] == 4


@pytest.mark.slow
def test_export_folder_follows_the_config_and_refreshes(tmp_path):
    from conftest import TINY
    cfg = write_config(tmp_path / "c.yml", TINY, data__path=str(tmp_path / "data"))
    res = run_py(["earlybird_scripts/export_images.py", "--config", cfg, "--limit", "7"])
    assert res.returncode == 0, res.stderr
    out = res.stdout.strip().splitlines()[-1]
    assert out == os.path.join(str(tmp_path / "data"), "digits-train-images")
    assert len([f for f in os.listdir(out) if f.endswith(".png")]) == 7
    res = run_py(["earlybird_scripts/export_images.py", "--config", cfg, "--limit", "4"])
    assert res.returncode == 0
    assert len([f for f in os.listdir(out) if f.endswith(".png")]) == 4


# --- sample folders ----------------------------------------------------------------------------

def _sample(trained, folder, *extra):
    return main(["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny",
                 "--sample", "--use_ema", "--image_folder", str(folder), *extra])


def test_sample_folder_refuses_other_models_tops_up_and_starts_over(trained, tmp_path):
    folder = tmp_path / "s"
    assert _sample(trained, folder, "--n_samples", "3") == 0
    meta = json.load(open(folder / "sampling.json"))
    assert meta["nfe"] == 5 and meta["model"]["sources"][0]["step"] == 12
    first = (folder / "000000.png").read_bytes()
    assert _sample(trained, folder, "--n_samples", "5") == 0        # top-up
    assert len(list(folder.glob("0*.png"))) == 5 and (folder / "000000.png").read_bytes() == first
    with pytest.raises(UserError, match="other eta"):
        _sample(trained, folder, "--n_samples", "6", "--eta", "1")
    ep1 = os.path.join(trained["log"], "ckpt_ep1.pth")
    with pytest.raises(UserError, match="other model"):
        _sample(trained, folder, "--n_samples", "6", "--restore_from", ep1)
    assert len(list(folder.glob("0*.png"))) == 5                   # nothing touched
    assert _sample(trained, folder, "--n_samples", "2", "--restore_from", ep1, "--ni") == 0
    assert len(list(folder.glob("0*.png"))) == 2
    assert json.load(open(folder / "sampling.json"))["model"]["sources"][0]["step"] == 6


def test_sampling_with_another_model_section_names_the_keys(trained, tmp_path, capsys):
    other = write_config(tmp_path / "o.yml", None, model__ch=32)
    assert main(["--config", other, "--exp", trained["exp"], "--doc", "tiny", "--sample",
                 "--image_folder", str(tmp_path / "s"), "--n_samples", "2"]) == 0
    assert "ch" in capsys.readouterr().out.split("note:")[1].splitlines()[0]


def test_resume_or_finetune_with_another_architecture_is_refused(trained, tmp_path):
    import shutil
    exp = tmp_path / "exp"
    shutil.copytree(trained["log"], exp / "logs" / "tiny")
    before = (exp / "logs" / "tiny" / "ckpt.pth").read_bytes()
    with pytest.raises(UserError, match="another architecture: ch"):
        main(["--config", trained["cfg"], "--exp", str(exp), "--doc", "tiny",
              "--resume_training", "--override", "model.ch=32"])
    assert (exp / "logs" / "tiny" / "ckpt.pth").read_bytes() == before
    assert "ch: 16" in (exp / "logs" / "tiny" / "config.yml").read_text()


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [
    ("earlybird.window=1", "earlybird.window must be >= 2"),
    ("earlybird.threshold=1.5", "earlybird.threshold must be in (0, 1)"),
    ("pruning.thr=0", "pruning.thr must be in (0, 1)"),
    ("training.log_every=0", "training.log_every must be >= 1"),
    ("sampling.n_samples=0", "sampling.n_samples must be >= 1"),
    ("model.ema_rate=1.0", "model.ema_rate must be in (0, 1)"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0"),
    ("pruning.pruner=magnitude", "unknown key 'pruning.pruner'"),
    ("model.var_type=fixedlarge", "unknown key 'model.var_type'"),
])
def test_out_of_range_values_are_one_line_errors(tiny_cfg, override, needle):
    res = run_py(["main.py", "--config", tiny_cfg, "--exp", "/nonexistent/x", "--doc", "a",
                  "--override", override])
    assert res.returncode == 2
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,needle", [
    (["--doc", "a/b"], "a run name, not a path"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"],
     "--device cuda"),
    (["--config", "digits"], "did you mean digits.yml"),
])
def test_bad_cli_values_are_one_line_errors(tiny_cfg, args, needle):
    base = ["main.py", "--config", tiny_cfg, "--exp", "/nonexistent/x"]
    res = run_py(base + args)
    assert res.returncode == 2
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
