"""What a user sees day to day: terminal lines, fresh logs on --ni, shell scripts outside the
venv, learning-rate schedules, gradient accumulation, samples in TensorBoard, bad images."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, run_py, write_config


def _events(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(tb_dir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    if tag in tags.get("scalars", []):
        return [e.step for e in acc.Scalars(tag)]
    if tag in tags.get("images", []):
        return [e.step for e in acc.Images(tag)]
    return []


@pytest.mark.slow
def test_terminal_lines_fresh_logs_and_grids_in_tensorboard(tmp_path):
    cfg = write_config(tmp_path / "t.yml", TINY, training__sample_every=1,
                       earlybird__enabled=True)
    exp = str(tmp_path / "exp")
    args = ["main.py", "--config", cfg, "--exp", exp, "--doc", "run", "--ni"]
    res = run_py(args)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "run: " in out and "params" in out and "steps/epoch" in out and "cpu" in out
    assert "epoch 0/1: loss" in out and "epoch 1/1: loss" in out and "img/s" in out
    assert "EB distance p=0.3" in out
    assert "finished run" in out and "ckpt.pth" in out and "TensorBoard" in out
    tb = os.path.join(exp, "tensorboard", "run")
    assert _events(tb, "epoch/loss") == [0, 1]
    assert _events(tb, "samples") == [0, 1]
    # a second fresh run starts fresh logs; the old ones are kept under a dated name
    res = run_py(args)
    assert res.returncode == 0
    assert _events(tb, "epoch/loss") == [0, 1]
    old = [d for d in os.listdir(os.path.join(exp, "tensorboard")) if d.startswith("run-")]
    assert len(old) == 1 and _events(os.path.join(exp, "tensorboard", old[0]),
                                     "epoch/loss") == [0, 1]
    logs = os.listdir(os.path.join(exp, "logs", "run"))
    assert "log.txt" in logs and any(f.startswith("log-") and f.endswith(".txt") for f in logs)
    assert open(os.path.join(exp, "logs", "run", "log.txt")).read().count("epoch 0/1") == 1
    # --quiet: nothing on stdout
    res = run_py(args + ["--quiet"])
    assert res.returncode == 0 and res.stdout.strip() == ""


@pytest.mark.slow
def test_region_ticket_draws_no_grid(trained, tmp_path):
    from main import main
    ticket_exp = str(tmp_path / "e")
    assert main(["--config", trained["cfg"], "--exp", ticket_exp, "--doc", "r", "--ni",
                 "--restore_from", os.path.join(trained["log"], "ckpt.pth"), "--ts_range", "0",
                 "40", "--override", "training.sample_every=1", "training.n_epochs=1"]) == 0
    assert not os.path.isdir(os.path.join(ticket_exp, "logs", "r", "samples"))


@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path):
    import signal
    import time
    cfg = write_config(tmp_path / "t.yml", TINY, training__n_epochs=200,
                       training__max_steps_per_epoch=0)
    cmd = [sys.executable, "main.py", "--config", cfg, "--exp", str(tmp_path), "--doc", "c",
           "--ni"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not os.path.isfile(tmp_path / "logs" / "c" / "ckpt_ep0.pth") and \
            time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGINT
    assert "saved a resumable checkpoint" in out and "--resume_training" in out
    assert "--ni" not in out.split("resume with:")[1]


@pytest.mark.slow
def test_shell_scripts_use_the_project_environment(tmp_path):
    """A shell whose python is not the project's: the scripts use {repo}/.venv."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in os.listdir(ROOT):
        if name not in (".venv", ".git"):
            os.symlink(os.path.join(ROOT, name), repo / name)
    (repo / ".venv" / "bin").mkdir(parents=True)
    venv_python = repo / ".venv" / "bin" / "python"  # stands in for the project's venv
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    venv_python.chmod(0o755)
    fake = tmp_path / "fakebin"
    fake.mkdir()
    for name in ("python", "python3"):
        (fake / name).write_text("#!/bin/sh\necho 'not the project python' >&2\nexit 3\n")
        (fake / name).chmod(0o755)
    cfg = write_config(tmp_path / "t.yml", TINY, training__n_epochs=1)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", CONFIG=cfg,
               EXP=str(tmp_path / "exp"), DOC="sh", OMP_NUM_THREADS="1")
    env.pop("PYTHON", None)
    res = subprocess.run(["bash", str(repo / "train_commands.sh")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.path.isfile(tmp_path / "exp" / "logs" / "sh" / "ckpt_ep0.pth")
    res = subprocess.run(["bash", str(repo / "prune_commands.sh")], env=env,
                         capture_output=True, text=True, timeout=300)
    # the config's earlybird.ratios (0.3, 0.5) are pruned; one epoch cannot fill a window
    masks = os.listdir(tmp_path / "exp" / "pruned" / "sh" / "masks")
    assert "sh_pruned-0.3-magnitude-0.npy" in masks and "sh_pruned-0.5-magnitude-0.npy" in masks
    assert "not the project python" not in res.stderr


def test_learning_rate_warmup_and_schedules():
    from dataclasses import replace

    from core.config import OptimSettings
    from runners.optim import lr_at
    base = OptimSettings(lr=1e-3, warmup=10, schedule="constant", min_lr=1e-5)
    assert lr_at(base, 0, 100) == pytest.approx(1e-4)
    assert lr_at(base, 4, 100) == pytest.approx(5e-4)
    assert lr_at(base, 9, 100) == pytest.approx(1e-3)
    assert lr_at(base, 99, 100) == 1e-3
    cos = replace(base, schedule="cosine")
    assert lr_at(cos, 10, 100) == pytest.approx(1e-3)
    assert lr_at(cos, 99, 100) == pytest.approx(1e-5)
    mid = 10 + (99 - 10) / 2
    assert lr_at(cos, int(mid), 100) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (
        1 + __import__("math").cos(__import__("math").pi * (int(mid) - 10) / 89)))
    lin = replace(base, schedule="linear", warmup=0)
    assert lr_at(lin, 0, 101) == pytest.approx(1e-3)
    assert lr_at(lin, 50, 101) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(lin, 100, 101) == pytest.approx(1e-5)
    seed_default = OptimSettings()
    assert all(lr_at(seed_default, s, 1000) == 2e-4 for s in (0, 1, 999))


@pytest.mark.slow
def test_gradient_accumulation_gives_the_big_batch_gradient():
    import types
    from models.diffusion import Diffusion
    from models.resample import AntitheticSampler
    from models.unet import UNet
    from runners.step import train_step
    from contextlib import nullcontext
    args = dict(in_channels=1, out_ch=1, ch=16, ch_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[4], dropout=0.0, resolution=8, gn_groups=8)
    torch.manual_seed(0)
    base = UNet(**args)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    diff = Diffusion(**{"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                      "num_diffusion_timesteps": 100})
    grads, losses = [], []
    for accum in (1, 2, 4):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        run = types.SimpleNamespace(model=model, train_model=model, optimizer=opt, ema=None)
        torch.manual_seed(5)
        loss, _ = train_step(run, x, sampler=AntitheticSampler(0, 100), diffusion=diff,
                             autocast=nullcontext, grad_clip=0.0, grad_accum=accum)
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    for g, loss in zip(grads[1:], losses[1:]):
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-5)
        assert loss == pytest.approx(losses[0], rel=1e-5)


def test_skip_bad_images_counts_what_it_skips(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from datasets import get_dataset
    from core.config import validate
    from utils.errors import UserError
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(folder / f"ok{i}.png")
    (folder / "bad1.png").write_bytes(b"not an image")
    (folder / "bad2.jpg").write_bytes(b"\xff\xd8 broken")
    raw = copy.deepcopy(TINY)
    raw["data"].update(dataset="FOLDER", path=str(folder), channels=3)
    with pytest.raises(UserError, match="cannot read image .*bad1.png"):
        get_dataset(validate(raw))
    raw["data"]["skip_bad_images"] = True
    ds = get_dataset(validate(raw))
    assert len(ds) == 3
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s) of 5" in err and "bad1.png" in err
    assert err.count("warning") == 1


@pytest.mark.slow
def test_sharded_sampling_equals_one_process_for_every_sampler(trained, tmp_path):
    """torchrun with 2 gloo processes and batch 3 writes the same PNGs as one process with
    batch 16: every image has its own seeds."""
    base = ["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny", "--sample",
            "--use_ema", "--timesteps", "5", "--n_samples", "7"]
    for name, extra in (("eta0", ["--eta", "0"]), ("eta1", ["--eta", "1"]),
                        ("ddpm", ["--sample_type", "ddpm_noisy"])):
        one, two = tmp_path / f"{name}_1", tmp_path / f"{name}_2"
        res = run_py(["main.py"] + base + extra + ["--image_folder", str(one)])
        assert res.returncode == 0, res.stderr[-2000:]
        res = run_py(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                      "main.py"] + base + extra + ["--image_folder", str(two), "--override",
                                                   "sampling.batch_size=3"], timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        for i in range(7):
            a = (one / f"{i:06d}.png").read_bytes()
            assert a == (two / f"{i:06d}.png").read_bytes(), (name, i)


def test_shell_scripts_ask_the_layout_module_for_paths(tmp_path):
    from core.layout import Layout, eb_doc
    L = Layout(str(tmp_path))
    for args, want in [(["ticket_file", "c10", "0.3", "magnitude", "7"],
                        L.ticket_file("c10", 0.3, "magnitude", 7)),
                       (["masks_dir", "c10"], L.masks_dir("c10")),
                       (["eb_doc", "c10", "0.3"], eb_doc("c10", 0.3))]:
        res = run_py(["earlybird_scripts/layout_path.py", "--exp", str(tmp_path)] + args)
        assert res.returncode == 0 and res.stdout.strip() == want, res.stderr
    res = run_py(["earlybird_scripts/layout_path.py", "rm_rf", "x"])
    assert res.returncode == 2 and "not a layout path" in res.stderr
    for script in ("prune_commands.sh", "finetune_commands.sh", "sample_commands.sh",
                   "cal_fid.sh"):
        text = open(os.path.join(ROOT, script)).read()
        body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for folder in ("/logs/", "/pruned/", "/samples/", "/tickets/"):
            assert folder not in body, (script, folder)
