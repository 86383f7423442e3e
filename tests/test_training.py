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

from conftest import ROOT, write_config
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


def _rank_pid(parent, rank):
    """The pid of torchrun worker ``rank`` below process ``parent`` (from /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except (OSError, ValueError, IndexError):
            continue
        if env.get(b"RANK") == str(rank).encode():
            return int(pid)
    return None


def _torchrun_cmd(cfg, exp, doc, *extra):
    """main.py under torchrun: two gloo processes on the CPU."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "main.py", "--config", cfg, "--exp", exp, "--doc", doc, "--device", "cpu", *extra]


def _signal_rank1_after_epoch0(job, run, sig):
    """Send ``sig`` to rank 1 of torchrun ``job`` once ``run`` has finished epoch 0; returns
    the time it was sent."""
    deadline = time.time() + 240
    while not os.path.isfile(os.path.join(run, "ckpt_ep0.pth")) and time.time() < deadline:
        time.sleep(0.01)
    victim = _rank_pid(job.pid, 1)
    assert victim is not None and job.poll() is None
    os.kill(victim, sig)
    return time.time()


@pytest.mark.slow
def test_torchrun_two_processes_gloo_a_killed_rank_ends_the_job_and_resume_works(tmp_path):
    """kill -9 of rank 1 mid-run ends the whole job (no hang) with a non-zero exit; the
    resume under torchrun finishes it, with one cost record per epoch."""
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=3,
                       training__max_steps_per_epoch=0)
    exp = str(tmp_path / "e")
    run = os.path.join(exp, "logs", "ddp")
    cmd = _torchrun_cmd(cfg, exp, "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    job = subprocess.Popen(cmd + ["--ni"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    t0 = _signal_rank1_after_epoch0(job, run, signal.SIGKILL)
    rc = job.wait(timeout=180)
    assert rc != 0 and time.time() - t0 < 120
    c = torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] < 3
    res = subprocess.run(cmd + ["--resume_training"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    files = sorted(os.listdir(run))
    assert [f for f in files if f.startswith("ckpt")] == ["ckpt.pth", "ckpt_ep0.pth",
                                                          "ckpt_ep1.pth", "ckpt_ep2.pth"]
    costs = _costs(run)
    assert [r["epoch"] for r in costs] == [0, 1, 2] and costs[0]["world_size"] == 2
    assert not os.path.exists(os.path.join(run, "LOCK"))


def test_until_epoch_pauses_and_resume_is_bit_identical(tmp_path):
    """Training in pieces (--until_epoch, then --resume_training) is training in one go: the
    fine-tune-to-target loop relies on it."""
    import torch
    from main import main
    from core.checkpoint import load_checkpoint
    cfg = write_config(tmp_path / "c.yml", training__n_epochs=4)
    exp = str(tmp_path / "exp")
    base = ["--config", cfg, "--exp", exp, "--ni"]
    assert main(base + ["--doc", "whole"]) == 0
    assert main(base + ["--doc", "parts", "--until_epoch", "2"]) == 0
    parts = os.path.join(exp, "logs", "parts")
    assert not os.path.isfile(os.path.join(parts, "DONE"))
    assert load_checkpoint(os.path.join(parts, "ckpt.pth"))["epochs_done"] == 2
    assert "paused after epoch 1" in open(os.path.join(parts, "log.txt")).read()
    assert main(base + ["--doc", "parts", "--resume_training"]) == 0
    assert os.path.isfile(os.path.join(parts, "DONE"))
    a = load_checkpoint(os.path.join(exp, "logs", "whole", "ckpt.pth"))
    b = load_checkpoint(os.path.join(parts, "ckpt.pth"))
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    costs = [json.loads(x) for x in open(os.path.join(parts, "costs.jsonl"))]
    assert [c["epoch"] for c in costs] == [0, 1, 2, 3]


def _torchrun(cfg, exp, doc, *extra, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(_torchrun_cmd(cfg, exp, doc, *extra), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_resume_continues_every_rank_exactly(tmp_path):
    """Two gloo ranks, 3 epochs in one go against 2 epochs, then --resume_training: every
    weight and EMA tensor equal (each rank restores its own RNG streams; before, every rank
    restored rank 0's and the runs parted)."""
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=3,
                       training__max_steps_per_epoch=3)
    exp = str(tmp_path / "e")
    assert _torchrun(cfg, exp, "whole", "--ni").returncode == 0
    res = _torchrun(cfg, exp, "parts", "--ni", "--until_epoch", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    part = torch.load(os.path.join(exp, "logs", "parts", "ckpt.pth"), weights_only=True)
    assert len(part["rng_ranks"]) == 2 and \
        not torch.equal(part["rng_ranks"][0]["cpu"], part["rng_ranks"][1]["cpu"])
    res = _torchrun(cfg, exp, "parts", "--resume_training")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = (torch.load(os.path.join(exp, "logs", d, "ckpt.pth"), weights_only=True)
            for d in ("whole", "parts"))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][m], sb[i][m]) for i in sa for m in ("exp_avg", "exp_avg_sq"))
    # the ranks draw different noise after the resume too
    assert not torch.equal(b["rng_ranks"][0]["cpu"], b["rng_ranks"][1]["cpu"])


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_the_whole_job_and_its_resume_is_exact(tmp_path):
    """SIGTERM to rank 1 alone, mid-epoch: both ranks leave at the same step, rank 0 saves a
    resumable checkpoint, the job ends in seconds instead of waiting on a collective, and the
    resume equals the uninterrupted run (weights, EMA, optimizer)."""
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=3,
                       training__max_steps_per_epoch=0, training__log_every=1)
    exp = str(tmp_path / "e")
    assert _torchrun(cfg, exp, "whole", "--ni").returncode == 0
    run = os.path.join(exp, "logs", "sig")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    job = subprocess.Popen(_torchrun_cmd(cfg, exp, "sig", "--ni"), cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = _signal_rank1_after_epoch0(job, run, signal.SIGTERM)
    out, err = job.communicate(timeout=120)
    assert time.time() - t0 < 30 and job.returncode != 0
    assert "saved a resumable checkpoint" in out + err
    c = torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] in (1, 2) and 0 < c["step_in_epoch"] and len(c["rng_ranks"]) == 2
    res = _torchrun(cfg, exp, "sig", "--resume_training")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = (torch.load(os.path.join(exp, "logs", d, "ckpt.pth"), weights_only=True)
            for d in ("whole", "sig"))
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][m], sb[i][m]) for i in sa for m in ("exp_avg", "exp_avg_sq"))
