"""Faults that lose nothing: divergence, a run started twice, a full disk, a damaged checkpoint.
(A rank killed under torchrun: tests/test_training.py; a killed pipeline and its TA-EB tickets:
tests/test_pipeline_and_report.py.)"""
import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_py, write_config
from main import main
from utils.errors import UserError


def _train(cfg, exp, *extra, doc="f"):
    return run_py(["main.py", "--config", cfg, "--exp", exp, "--doc", doc] + list(extra))


def _all_finite(path):
    c = torch.load(path, weights_only=True)
    return all(torch.isfinite(v).all() for sd in (c["model"], c["ema"]) if sd
               for v in sd.values() if v.is_floating_point())


@pytest.mark.slow
def test_divergence_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=1)
    exp = str(tmp_path / "e")
    assert _train(cfg, exp, "--ni").returncode == 0
    ckpt = os.path.join(exp, "logs", "f", "ckpt.pth")
    before = open(ckpt, "rb").read()
    res = _train(cfg, exp, "--resume_training", "--override", "training.n_epochs=3",
                 "optim.lr=1e30")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "training diverged" in lines[0] and "epoch 1" in lines[0]
    assert "(after epoch 0, step 3) is what --resume_training reads" in lines[0]
    assert open(ckpt, "rb").read() == before and _all_finite(ckpt)
    assert not os.path.exists(os.path.join(exp, "logs", "f", "ckpt_ep1.pth"))
    assert not os.path.exists(os.path.join(exp, "logs", "f", "LOCK"))  # released on the way out


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=1,
                       training__on_nonfinite="skip", optim__lr=1e30)
    exp = str(tmp_path / "e")
    res = _train(cfg, exp, "--ni")
    assert res.returncode == 0, res.stderr[-2000:]
    run = os.path.join(exp, "logs", "f")
    costs = [json.loads(line) for line in open(os.path.join(run, "costs.jsonl"))]
    assert costs[0]["skipped_steps"] >= 1 and costs[0]["skipped_steps"] < costs[0]["steps"]
    assert "step(s) skipped (non-finite loss or gradient)" in res.stdout + res.stderr
    assert _all_finite(os.path.join(run, "ckpt.pth"))


@pytest.mark.slow
def test_a_second_run_in_the_same_directory_refuses_and_the_first_finishes(tmp_path):
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=4,
                       training__max_steps_per_epoch=0)
    exp = str(tmp_path / "e")
    run = os.path.join(exp, "logs", "f")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    first = subprocess.Popen([sys.executable, "main.py", "--config", cfg, "--exp", exp, "--doc",
                              "f", "--ni"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.isfile(os.path.join(run, "log.txt")) and time.time() < deadline:
        time.sleep(0.05)
    second = _train(cfg, exp, "--ni")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2
    assert f"is in use by process {first.pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    # the first run was not disturbed: its log was not archived, its checkpoints are whole
    assert [f for f in os.listdir(run) if f.startswith("log")] == ["log.txt"]
    assert torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)["epochs_done"] == 4
    assert not os.path.exists(os.path.join(run, "LOCK"))
    # a lock left by a process that died is taken over, with a line saying so
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(run, "LOCK"), "w") as f:
        json.dump({"pid": dead.pid, "host": os.uname().nodename, "start": "then"}, f)
    res = _train(cfg, exp, "--ni", "--override", "training.n_epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"taking over the lock of process {dead.pid}" in res.stdout


def test_sample_folder_and_ticket_set_hold_locks(trained, tmp_path):
    from core.layout import Layout, folder_lock
    from core.lock import RunLock
    folder = str(tmp_path / "samples")
    with RunLock(folder_lock(folder), "x"):
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            main(["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny",
                  "--sample", "--use_ema", "--restore_from",
                  os.path.join(trained["log"], "ckpt.pth"), "--image_folder", folder])
    layout = Layout(str(tmp_path / "e"))
    with RunLock(layout.tickets_lock("tiny"), "x"):
        res = run_py(["earlybird_scripts/train_tickets.py", "--config", trained["cfg"],
                      "--exp", str(tmp_path / "e"), "--doc", "tiny"])
    assert res.returncode == 2 and "is in use by process" in res.stderr


def test_a_full_disk_ends_the_run_in_one_line_and_resume_continues(tmp_path, monkeypatch):
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=3,
                       training__snapshot_every=1, training__epoch_ckpt_until=1,
                       training__keep_last=1)
    exp = str(tmp_path / "e")
    run = os.path.join(exp, "logs", "f")
    real_save = torch.save
    writes = {"n": 0}

    def save_until_the_disk_fills(obj, f, *a, **k):
        if os.path.basename(str(f)).startswith(".ckpt.pth."):
            writes["n"] += 1
            if writes["n"] == 2:  # epoch 1's ckpt.pth: half a file, then no space
                with open(f, "wb") as fh:
                    fh.write(b"PK\x03\x04 half a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(UserError) as e:
        main(["--config", cfg, "--exp", exp, "--doc", "f", "--ni"])
    msg = str(e.value)
    assert msg.startswith(f"no space left on the disk while writing {run}/ckpt.pth")
    assert "ckpt.pth (after epoch 0, step 3) is what --resume_training reads" in msg
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]  # no partial file
    assert not os.path.exists(os.path.join(run, "LOCK"))
    c = torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["--config", cfg, "--exp", exp, "--doc", "f", "--resume_training"]) == 0
    c = torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] == 3
    costs = [json.loads(line) for line in open(os.path.join(run, "costs.jsonl"))]
    assert [r["epoch"] for r in costs] == [0, 1, 2]  # epoch 1's record counted once


def _no_space(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_tensorboard_or_log_txt_on_a_full_disk_is_dropped_once_and_training_goes_on(
        tmp_path, monkeypatch, capsys):
    """Records of the run are not its state: a write TensorBoard or log.txt cannot make is said
    once and dropped; the run finishes with everything it saves whole."""
    from torch.utils.tensorboard import SummaryWriter
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=2)
    exp = str(tmp_path / "e")
    monkeypatch.setattr(SummaryWriter, "add_scalar", _no_space)
    assert main(["--config", cfg, "--exp", exp, "--doc", "f", "--ni"]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: TensorBoard events cannot be written (No space left on "
                     "device); the run goes on without it") == 1
    c = torch.load(os.path.join(exp, "logs", "f", "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] == 2

    from core.runlog import RunLog
    log = RunLog(str(tmp_path / "l" / "log.txt"), str(tmp_path / "l" / "tb"), True)
    log.log_file.write = _no_space
    log.info("a")
    log.info("b")
    assert capsys.readouterr().out.count("log.txt cannot be written") == 1
    log.close()


def test_images_and_figures_on_a_full_disk_leave_no_partial_file(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image
    from runners.sample import save_png
    from utils.io import DiskFull, save_figure

    def half_a_png(self, fp, *a, **k):  # the disk fills in the middle of the image
        open(fp, "wb").write(b"\x89PNG half")
        _no_space()
    monkeypatch.setattr(Image.Image, "save", half_a_png)
    with pytest.raises(DiskFull) as e:
        save_png(torch.rand(1, 8, 8), str(tmp_path / "000000.png"))
    assert e.value.filename == str(tmp_path / "000000.png")
    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda f, **k: (open(f, "wb").write(b"half"),
                                                        _no_space()))
    with pytest.raises(DiskFull):
        save_figure(fig, str(tmp_path / "plot.png"))
    plt.close(fig)
    assert os.listdir(tmp_path) == []  # a sample folder's resume would trust a partial PNG


def test_every_entry_point_turns_a_refused_write_into_one_line(capsys):
    from utils.errors import run_cli

    def write(err):
        def fn():
            raise OSError(err, os.strerror(err), "/data/report/results.md")
        return fn
    for err, why in ((errno.ENOSPC, "no space left on the disk"),
                     (errno.EDQUOT, "disk quota exceeded"),
                     (errno.EROFS, "read-only file system")):
        with pytest.raises(SystemExit) as e:
            run_cli(write(err))
        assert e.value.code == 2
        line = capsys.readouterr().err
        assert line.count("\n") == 1 and line.startswith(
            f"error: {why} while writing /data/report/results.md; nothing partial")
    with pytest.raises(OSError):  # any other error is a bug: its traceback stays
        run_cli(write(errno.EACCES))


def test_sampling_and_fid_statistics_project_their_disk_use_first(tiny_cfg, tmp_path,
                                                                   monkeypatch):
    from core.config import load_config
    from evaluation import fid
    from models.unet import UNet
    from runners.sample import sample_to_folder
    from utils import io
    cfg = load_config(tiny_cfg, ["sampling.n_samples=500"])
    monkeypatch.setattr(io, "free_bytes", lambda path: 100 * 4096)
    folder = str(tmp_path / "s")
    with pytest.raises(UserError, match=r"sampling 500 images needs about 2.0 MB under .*, "
                                         r"0.4 MB are free: free space or sample fewer"):
        sample_to_folder(UNet(**cfg.model_kwargs()), cfg, folder, device=torch.device("cpu"),
                         progress=False)
    assert [f for f in os.listdir(folder) if f.endswith(".png")] == []  # nothing sampled
    ref = tmp_path / "ref"
    ref.mkdir()
    from PIL import Image
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(ref / "a.png")
    monkeypatch.setattr(fid, "folder_statistics", lambda *a, **k: pytest.fail("computed"))
    with pytest.raises(UserError, match="the reference statistics' cache needs about 32.1 MB"):
        fid.reference_statistics(str(ref), None, dims=2048, device="cpu", batch_size=8)


def test_costs_append_on_a_full_disk_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    from core.runlog import append_jsonl
    from utils.io import DiskFull, read_jsonl
    path = str(tmp_path / "costs.jsonl")
    append_jsonl(path, {"epoch": 0})
    real_write = os.write

    def short_write(fd, data):  # the disk fills after 5 bytes
        return real_write(fd, data[:5])
    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(DiskFull):
        append_jsonl(path, {"epoch": 1, "wall_s": 1.0})

    def no_space(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(DiskFull):
        append_jsonl(path, {"epoch": 1, "wall_s": 1.0})
    monkeypatch.undo()
    assert read_jsonl(path) == [{"epoch": 0}]


@pytest.mark.slow
def test_a_damaged_ckpt_falls_back_to_the_last_good_file_saying_what_is_lost(tmp_path):
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=3)
    exp = str(tmp_path / "e")
    assert _train(cfg, exp, "--ni").returncode == 0
    run = os.path.join(exp, "logs", "f")
    with open(os.path.join(run, "ckpt.pth"), "r+b") as f:
        f.truncate(1000)
    with open(os.path.join(run, "ckpt_ep2.pth"), "r+b") as f:
        f.truncate(1000)  # the newest per-epoch file is damaged too
    # the job script's own command, rerun as it is, continues
    res = _train(cfg, exp, "--resume_training", "--override", "training.n_epochs=4")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "not a readable checkpoint" in res.stdout
    assert "ckpt_ep2.pth is unreadable too" in res.stdout
    assert f"resuming from {run}/ckpt_ep1.pth, after epoch 1: epochs 2 and later are " \
           f"trained again; lost: the optimizer's moments" in res.stdout
    c = torch.load(os.path.join(run, "ckpt.pth"), weights_only=True)
    assert c["epochs_done"] == 4 and c["step"] == 12
    costs = [json.loads(line) for line in open(os.path.join(run, "costs.jsonl"))]
    assert [r["epoch"] for r in costs] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_crash_before_the_first_ckpt_then_the_same_resume_equals_uninterrupted(tmp_path):
    """kill -9 after ckpt_ep0.pth and before ckpt.pth (written last): nothing whole was saved,
    so --resume_training starts over, and the run ends as an uninterrupted one."""
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=2)
    exp = str(tmp_path / "e")
    assert _train(cfg, exp, "--ni", doc="full").returncode == 0
    assert _train(cfg, exp, "--ni", "--override", "training.n_epochs=1",
                  doc="cut").returncode == 0
    run = os.path.join(exp, "logs", "cut")
    os.remove(os.path.join(run, "ckpt.pth"))
    os.remove(os.path.join(run, "DONE"))
    res = _train(cfg, exp, "--resume_training", doc="cut")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "starting it over, which gives the same result" in res.stdout
    a, b = (torch.load(os.path.join(exp, "logs", d, "ckpt.pth"), weights_only=True)
            for d in ("full", "cut"))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    costs = [json.loads(line) for line in open(os.path.join(run, "costs.jsonl"))]
    assert [r["epoch"] for r in costs] == [0, 1]


def test_an_atomic_write_is_flushed_before_and_after_its_rename(tmp_path, monkeypatch):
    """Durable, not only atomic: the new file's data reaches the disk before the rename names
    it, and the folder's entry after (a node crash leaves the old file or the new one)."""
    from utils import io
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", str(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "ckpt.json"
    io.atomic_write_json(str(target), {"epoch": 3})
    assert [e[0] for e in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".ckpt.json."))   # the temporary file
    assert events[2][1] == str(tmp_path)                             # the folder
    assert io.read_json(str(target)) == {"epoch": 3}


@pytest.mark.slow
def test_a_dead_owners_lock_is_taken_over_by_exactly_one_of_two_racing_50_times(tmp_path):
    """Two processes find the lock of a process that died, at the same moment, 50 times: one
    takes it over, the other refuses (before, both could remove the stale file and both hold
    the run)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "LOCK"
    stale = json.dumps({"pid": dead.pid, "host": os.uname().nodename, "start": "then"})
    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from core.lock import RunLock\nfrom utils.errors import UserError\n"
            "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
            "try:\n    lk = RunLock(sys.argv[2], 'run', log=lambda m: None).acquire()\n"
            "except UserError:\n    print('refused'); sys.exit(0)\n"
            "print('held', flush=True); time.sleep(0.3); lk.release()\n")
    for _ in range(50):
        lock.write_text(stale)
        start = time.time() + 0.4
        procs = [subprocess.Popen([sys.executable, "-c", code, ROOT, str(lock), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
        assert outs == ["held", "refused"], outs
        assert not lock.exists()  # released by its holder


class _Killed(BaseException):
    """A kill -9 stand-in: nothing after it runs in the process's code (not caught as an
    Exception)."""


@pytest.mark.slow
def test_a_kill_at_each_point_of_the_epoch_writes_then_the_same_resume_ends_the_same(
        tmp_path, monkeypatch):
    """Every file of an epoch's writes (the per-epoch file, ckpt.pth, masks, the cost record,
    the DONE marker, ...), killed just before and just after each: the same
    `--resume_training` command then finishes with the weights and cost records of an
    uninterrupted run, bit for bit."""
    from core import runlog
    from runners import epoch_end
    cfg = write_config(tmp_path / "t.yml", training__n_epochs=2)

    def run(exp, *flags):
        return main(["--config", cfg, "--exp", str(exp), "--doc", "f", *flags])
    assert run(tmp_path / "full", "--ni") == 0
    want = torch.load(tmp_path / "full" / "logs" / "f" / "ckpt.pth", weights_only=True)
    real_replace, real_append = os.replace, runlog.append_jsonl
    plan = {"at": None, "n": 0, "names": []}

    def point(name, when):
        plan["n"] += 1
        if plan["at"] is None:
            plan["names"].append((name, when))
        if plan["n"] == plan["at"]:
            raise _Killed(f"{when} {name}")

    def replace(src, dst):
        point(os.path.basename(dst), "before")
        real_replace(src, dst)
        point(os.path.basename(dst), "after")

    def append(path, record):
        point(os.path.basename(path), "before")
        real_append(path, record)
        point(os.path.basename(path), "after")
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(epoch_end, "append_jsonl", append)
    assert run(tmp_path / "count", "--ni") == 0
    names = plan["names"]
    assert {"ckpt_ep1.pth", "ckpt.pth", "costs.jsonl", "DONE"} <= {n for n, _ in names}
    # every point of the last epoch's writes, from the first epoch's ckpt.pth on (a kill
    # before it: test_a_crash_before_the_first_ckpt_...)
    first = names.index(("ckpt.pth", "after")) + 1
    for at in range(first + 1, len(names) + 1):
        exp = tmp_path / f"k{at}"
        plan.update(at=at, n=0)
        with pytest.raises(_Killed):
            run(exp, "--ni")
        plan.update(at=-1)
        assert run(exp, "--resume_training") == 0, at
        got = torch.load(exp / "logs" / "f" / "ckpt.pth", weights_only=True)
        for part in ("model", "ema"):
            assert all(torch.equal(want[part][k], got[part][k]) for k in want[part]), at
        costs = [json.loads(line) for line in open(exp / "logs" / "f" / "costs.jsonl")]
        assert [r["epoch"] for r in costs] == [0, 1], at


def test_a_process_whose_run_folder_was_removed_and_restarted_writes_nothing_there(tmp_path):
    """A run folder deleted while its process still ran, and a new run started there: the old
    process's next epoch-end (or signal) save would overwrite the new run's files. It checks
    its lock first and stops in one line."""
    import shutil

    from core.lock import RunLock
    path = tmp_path / "logs" / "f" / "LOCK"
    old = RunLock(str(path), "run f").acquire()
    old.check()  # still ours
    shutil.rmtree(tmp_path / "logs")
    new = RunLock(str(path), "run f").acquire()  # the dead folder's lock does not block it
    with pytest.raises(UserError, match="was removed or replaced while this process ran"):
        old.check()
    new.check()
    old.release()  # leaves the new run's lock alone
    assert path.exists()
    new.release()
