"""Training: per-epoch checkpoints, loss goes down, exact resume, weights_only, signals,
torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_py, write_config
from main import main


def _costs(log):
    with open(os.path.join(log, "costs.jsonl")) as f:
        return [json.loads(x) for x in f]


def test_one_checkpoint_per_epoch_and_loss_goes_down(trained):
    files = sorted(f for f in os.listdir(trained["log"]) if f.startswith("ckpt_ep"))
    assert files == [f"ckpt_ep{e}.pth" for e in range(4)]
    costs = _costs(trained["log"])
    assert [c["epoch"] for c in costs] == [0, 1, 2, 3]
    assert costs[-1]["loss"] < 0.8 * costs[0]["loss"]
    assert all(c["wall_s"] > 0 and c["process_s"] > 0 for c in costs)
    assert os.path.isdir(os.path.join(trained["exp"], "tensorboard", "tiny"))


def test_checkpoints_load_with_weights_only(trained):
    c = torch.load(os.path.join(trained["log"], "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] == 4 and c["epoch_index"] == 3 and c["step"] == 12 and c["optimizer"] is not None
    assert c["model_args"]["ch"] == 16 and c["config"]["model"]["ch"] == 16
    assert not any(k.startswith("module.") for k in c["model"])
    e = torch.load(os.path.join(trained["log"], "ckpt_ep1.pth"), weights_only=True)
    assert e["epochs_done"] == 2 and e["epoch_index"] == 1 and e["optimizer"] is None


@pytest.mark.slow
def test_resume_equals_uninterrupted(tmp_path):
    cfg = write_config(tmp_path / "r.yml", model__dropout=0.1)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    base = ["--config", cfg, "--doc", "r", "--ni"]
    assert main(base + ["--exp", a, "--override", "training.n_epochs=3"]) == 0
    assert main(base + ["--exp", b, "--override", "training.n_epochs=1"]) == 0
    assert main(base + ["--exp", b, "--resume_training", "--override",
                        "training.n_epochs=3"]) == 0
    ca = torch.load(os.path.join(a, "logs", "r", "ckpt.pth"), weights_only=True)
    cb = torch.load(os.path.join(b, "logs", "r", "ckpt.pth"), weights_only=True)
    assert ca["step"] == cb["step"] == 9
    for key in ("model", "ema"):
        for k in ca[key]:
            assert torch.allclose(ca[key][k], cb[key][k], atol=1e-6, rtol=0), (key, k)


@pytest.mark.slow
def test_sigterm_saves_resumable_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "s.yml", training__n_epochs=1000,
                       training__max_steps_per_epoch=0)
    exp = str(tmp_path / "e")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "main.py", "--config", cfg, "--exp", exp, "--doc", "s",
                          "--ni"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    first = os.path.join(exp, "logs", "s", "ckpt_ep0.pth")
    deadline = time.time() + 120
    while not os.path.isfile(first) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    assert rc == 128 + signal.SIGTERM
    c = torch.load(os.path.join(exp, "logs", "s", "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] >= 1 and c["step"] > 0
    assert not os.path.isfile(os.path.join(exp, "logs", "s", "DONE"))
    # the interrupted part of the epoch is paid for: resuming completes the epoch's record
    costs = os.path.join(exp, "logs", "s", "costs.jsonl")
    lines = [json.loads(line) for line in open(costs)]
    assert bool(c["step_in_epoch"]) == any(r.get("partial") for r in lines)
    done = c["epochs_done"]
    assert main(["--config", cfg, "--exp", exp, "--doc", "s", "--resume_training",
                 "--override", f"training.n_epochs={done + 1}"]) == 0
    records = [json.loads(line) for line in open(costs)]
    assert [r["epoch"] for r in records] == list(range(done + 1))
    assert not any(r.get("partial") for r in records)
    assert records[-1]["images"] == records[0]["images"] == 1437   # the whole data set
    assert records[-1]["train_flops"] == records[0]["train_flops"]


def test_sampling_writes_images_grid_and_resumes(trained, tmp_path):
    folder = tmp_path / "samples"
    base = ["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny",
            "--sample", "--fid", "--use_ema", "--skip_type", "quad", "--timesteps", "5",
            "--eta", "0", "--image_folder", str(folder), "--restore_from",
            os.path.join(trained["log"], "ckpt_ep3.pth")]
    assert main(base + ["--n_samples", "3"]) == 0
    first = open(folder / "000001.png", "rb").read()
    os.remove(folder / "000001.png")
    assert main(base + ["--n_samples", "5"]) == 0
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(5)] + ["sampling.json"]
    assert open(folder / "000001.png", "rb").read() == first  # one seed per image
    assert os.path.isfile(str(folder) + "_grid.png")
    assert main(base + ["--n_samples", "2", "--sample_type", "ddpm_noisy", "--skip_type",
                        "uniform", "--image_folder", str(tmp_path / "d")]) == 0


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path):
    cfg = write_config(tmp_path / "t.yml")
    exp = str(tmp_path / "e")
    res = run_py(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                  "main.py", "--config", cfg, "--exp", exp, "--doc", "ddp", "--ni",
                  "--device", "cpu"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    files = sorted(os.listdir(os.path.join(exp, "logs", "ddp")))
    assert [f for f in files if f.startswith("ckpt")] == ["ckpt.pth", "ckpt_ep0.pth",
                                                          "ckpt_ep1.pth"]
    costs = _costs(os.path.join(exp, "logs", "ddp"))
    assert len(costs) == 2 and costs[0]["world_size"] == 2
