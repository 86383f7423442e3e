"""Leaving the laptop: checkpoint storage policy and disk projection, tickets on several
processes, Slurm submission, kernel-friendly ticket widths."""
import copy
import json
import os

import pytest
import torch

from conftest import TINY, write_config
from main import main
from core import ckpt_policy
from core.config import load_config
from core.layout import Layout
from utils.errors import UserError


def _train(cfg, exp, doc="run", extra=()):
    return main(["--config", cfg, "--exp", exp, "--doc", doc, "--ni", "--use_ema",
                 "--train_from_scratch", *extra])


def _state_bytes(sd):
    return sum(v.numel() * v.element_size() for v in sd.values())


def test_checkpoint_policy_files_sizes_and_projection(tmp_path):
    exp = str(tmp_path / "exp")
    full = write_config(tmp_path / "full.yml", training__n_epochs=1)
    assert _train(full, exp, "full") == 0
    policy = dict(training__n_epochs=5, training__epoch_ckpt="ema",
                  training__epoch_ckpt_until=2, training__snapshot_every=1,
                  training__keep_last=2)
    cfg = write_config(tmp_path / "ema.yml", **policy)
    assert _train(cfg, exp) == 0
    L = Layout(exp)
    assert sorted(L.epoch_checkpoints("run")) == [0, 1]      # the early-bird window only
    assert sorted(L.snapshots("run")) == [3, 4]              # every epoch after, newest 2
    assert os.path.isfile(L.latest_checkpoint("run"))

    ema_file = torch.load(L.epoch_checkpoint("run", 0), weights_only=True)
    full_file = torch.load(L.epoch_checkpoint("full", 0), weights_only=True)
    assert ema_file["model"] is None and ema_file["optimizer"] is None
    assert full_file["model"] is not None and full_file["ema"] is not None
    weights = _state_bytes(full_file["ema"])
    ratio = os.path.getsize(L.epoch_checkpoint("run", 0)) / \
        os.path.getsize(L.epoch_checkpoint("full", 0))
    assert 0.4 < ratio < 0.65, ratio                          # about half
    snap = torch.load(L.snapshot("run", 4), weights_only=True)
    assert snap["model"] is not None and snap["ema"] is not None and snap["epoch_index"] == 4

    # the projection: file counts and per-file bytes of this very run
    p = ckpt_policy.plan(load_config(cfg), weights, 0)
    assert (p.epoch_files, p.snapshots) == (2, 3)             # 2 kept + 1 while the oldest goes
    assert p.epoch_file_bytes == weights and p.snapshot_bytes == 2 * weights
    assert p.latest_bytes == 4 * weights                      # model, EMA, Adam's two moments
    for path, expect in ((L.epoch_checkpoint("run", 0), p.epoch_file_bytes),
                         (L.snapshot("run", 4), p.snapshot_bytes),
                         (L.latest_checkpoint("run"), p.latest_bytes)):
        size = os.path.getsize(path)
        assert expect <= size < 1.35 * expect + 64_000, (path, size, expect)
    log = open(L.run_log("run")).read()
    assert "checkpoints: 2 per-epoch files (ema)" in log and "projected" in log

    # a resume projects only what is left to write
    assert ckpt_policy.plan(load_config(cfg), weights, 4).epoch_files == 0
    # the seed's behaviour: a file every epoch, no snapshots
    seed = load_config(full, ["training.n_epochs=7", "training.snapshot_every=2"])
    assert ckpt_policy.plan(seed, weights, 0).epoch_files == 7
    assert not any(ckpt_policy.is_snapshot(seed, e) for e in range(7))


def test_disk_refusal_changes_nothing(tmp_path, monkeypatch):
    exp = str(tmp_path / "exp")
    cfg = write_config(tmp_path / "c.yml", training__n_epochs=1)
    assert _train(cfg, exp) == 0
    L = Layout(exp)
    before = {f: os.path.getmtime(os.path.join(L.run_dir("run"), f))
              for f in os.listdir(L.run_dir("run"))}
    # a run of 10,000 epochs on a disk with 50 MB free (the old run's files count as free)
    monkeypatch.setattr(ckpt_policy, "free_bytes", lambda path: 50_000_000)
    big = write_config(tmp_path / "big.yml", training__n_epochs=10_000)
    with pytest.raises(UserError, match=r"projected, .* free in .*not enough disk"):
        _train(big, exp)
    after = {f: os.path.getmtime(os.path.join(L.run_dir("run"), f))
             for f in os.listdir(L.run_dir("run"))}
    assert after == before
    # the same run keeping only the early-bird window fits
    small = write_config(tmp_path / "small.yml", training__n_epochs=10_000,
                         training__epoch_ckpt="none")
    c = load_config(small)
    line = ckpt_policy.check_disk(c, ckpt_policy.plan(c, 500_000, 0), layout=L, doc="run",
                                  fresh=True)
    assert "0 per-epoch files" in line


def test_epoch_ckpt_none_saves_early_bird_tickets_online(tmp_path):
    """Without per-epoch files, the online detector prunes each ticket when it finds it; the
    TA-EB tickets then resolve without any ckpt_epE.pth."""
    from core.options import Experiment
    from runners.tickets import resolve_tickets
    exp = str(tmp_path / "exp")
    d = copy.deepcopy(TINY)
    d["training"].update(n_epochs=4, epoch_ckpt="none")
    d["earlybird"].update(enabled=True, ratios=[0.3, 0.5], window=2, threshold=0.5)
    d["taeb"]["regions"] = [{"range": [0, 40], "pruning_ratio": 0.3},
                            {"range": [40, 100], "pruning_ratio": 0.5}]
    cfg = write_config(tmp_path / "none.yml", d)
    assert _train(cfg, exp) == 0
    L = Layout(exp)
    assert L.epoch_checkpoints("run") == {} and L.snapshots("run") == {}
    xp = Experiment.load(cfg, exp, "run")
    for job in resolve_tickets(xp, xp.cfg.taeb.regions):
        r = job.region
        assert job.epoch is not None
        assert job.ticket_file == L.ticket_file("run", r.pruning_ratio, "magnitude", job.epoch)
        t = torch.load(job.ticket_file, weights_only=True)
        assert t["pruning"]["ratio"] == r.pruning_ratio and t["pruning"]["epoch"] == job.epoch


def test_epoch_ckpt_ema_needs_ema_weights(tmp_path):
    bad = write_config(tmp_path / "bad.yml", training__epoch_ckpt="ema", pruning__use_ema=False)
    with pytest.raises(UserError, match="epoch_ckpt: ema"):
        load_config(bad)


# --- tickets on several processes and on Slurm ------------------------------------------------

def _copy_dense_run(trained, tmp_path):
    """A private experiment holding the shared tiny dense run (tickets write beside it)."""
    import shutil
    exp = str(tmp_path / "exp")
    shutil.copytree(os.path.join(trained["exp"], "logs", "tiny"),
                    os.path.join(exp, "logs", "tiny"))
    return exp


@pytest.mark.slow
def test_two_tickets_with_two_gloo_processes_each(trained, tmp_path):
    import yaml
    from conftest import run_py
    exp = _copy_dense_run(trained, tmp_path)
    res = run_py(["earlybird_scripts/train_tickets.py", "--config", trained["cfg"], "--exp", exp,
                  "--doc", "tiny", "--gpus_per_ticket", "2", "--no_progress"])
    assert res.returncode == 0, res.stderr[-2000:]
    L = Layout(exp)
    for rng in ([0, 40], [40, 100]):
        doc = f"tiny_taeb_{rng[0]}_{rng[1]}"
        costs = [json.loads(line) for line in open(L.costs(doc))]
        assert [c["world_size"] for c in costs] == [2]
        assert "torch.distributed.run" in open(L.region_log("tiny", rng)).read()
        c = torch.load(L.latest_checkpoint(doc), weights_only=True)
        # taeb.visited_only: the 5-step quad sampler never goes above t = 80 of 100
        assert c["ts_range"] == [rng[0], min(rng[1], 81)] and c["epochs_done"] == 1
    man = yaml.safe_load(open(L.manifest("tiny")))
    assert "2 DDP processes per ticket" in man["schedule"]
    assert [t["range"] for t in man["tickets"]] == [[0, 40], [40, 100]]


@pytest.mark.slow
def test_tickets_sharing_a_gpu_record_their_placement(trained, tmp_path):
    """--gpus 0 --tickets_per_gpu 2 runs both tickets at once on 'GPU 0' (the CPU stands in:
    CUDA_VISIBLE_DEVICES=0 finds no device); the manifest says where each ran, and the
    critical path is the slower of the two, which ran side by side."""
    import yaml
    from conftest import run_py
    exp = _copy_dense_run(trained, tmp_path)
    args = ["earlybird_scripts/train_tickets.py", "--config", trained["cfg"], "--exp", exp,
            "--doc", "tiny", "--no_progress"]
    res = run_py(args + ["--tickets_per_gpu", "2"])
    assert res.returncode == 2 and "on the CPU use --max_parallel" in res.stderr
    res = run_py(args + ["--gpus", "0", "--tickets_per_gpu", "2"])
    assert res.returncode == 0, res.stderr[-2000:]
    man = yaml.safe_load(open(Layout(exp).manifest("tiny")))
    assert "2 at a time, one GPU each, 2 tickets per GPU" in man["schedule"]
    assert sorted(t["placement"]["slot"] for t in man["tickets"]) == [0, 1]
    assert all(t["placement"]["gpus"] == [0] for t in man["tickets"])
    walls = [t["wall_s"] for t in man["tickets"]]
    assert man["critical_path_wall_s"] == round(max(walls), 3)


STAND_IN_SBATCH = """#!/bin/bash
# records its arguments, runs the script like a job would, prints a job id (--parsable)
echo "$@" >> "$SBATCH_RECORD"
script="${@: -1}"
bash "$script" >> "$SBATCH_RECORD.out" 2>&1
echo "$(( 1000 + $(wc -l < "$SBATCH_RECORD") ))"
"""


@pytest.mark.slow
def test_slurm_dry_run_submit_resubmit_and_collect(trained, tmp_path):
    import yaml
    from conftest import run_py
    exp = _copy_dense_run(trained, tmp_path)
    L = Layout(exp)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(STAND_IN_SBATCH)
    (bindir / "sbatch").chmod(0o755)
    record = tmp_path / "sbatch_calls.txt"
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SBATCH_RECORD": str(record)}
    base = ["earlybird_scripts/train_tickets.py", "--config", trained["cfg"], "--exp", exp,
            "--doc", "tiny", "--launcher", "slurm", "--partition", "gpu", "--time", "01:00:00"]
    scripts = [L.slurm_script("tiny", r) for r in ([0, 40], [40, 100])]

    res = run_py(base + ["--dry_run"], env=env)
    assert res.returncode == 0, res.stderr
    assert not record.exists()                                 # nothing submitted
    text = open(scripts[0]).read()
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=01:00:00" in text
    assert "--ts_range 0 40" in text and "RESUME=--resume_training" in text
    assert "would run: sbatch --parsable" in res.stdout

    res = run_py(base + ["--collect"], env=env)
    assert res.returncode == 1 and res.stderr.count("not finished: region") == 2
    assert not os.path.isfile(L.manifest("tiny"))

    res = run_py(base, env=env)
    assert res.returncode == 0, res.stderr
    calls = record.read_text().splitlines()
    assert calls == [f"--parsable {s}" for s in scripts]
    jobs = json.loads(open(L.slurm_jobs("tiny")).read())
    assert [j["job_id"] for j in jobs.values()] == ["1001", "1002"]
    for rng in ([0, 40], [40, 100]):
        assert os.path.isfile(L.done_marker(f"tiny_taeb_{rng[0]}_{rng[1]}"))

    # one ticket unfinished again: only it is resubmitted, and its job resumes
    os.remove(L.done_marker("tiny_taeb_40_100"))
    res = run_py(base, env=env)
    assert res.returncode == 0, res.stderr
    assert record.read_text().splitlines()[2:] == [f"--parsable {scripts[1]}"]
    assert "tiny_taeb_40_100/ckpt.pth" in (tmp_path / "sbatch_calls.txt.out").read_text().split(
        "resumed from")[-1]

    res = run_py(base + ["--collect"], env=env)
    assert res.returncode == 0, res.stderr
    man = yaml.safe_load(open(L.manifest("tiny")))
    assert man["schedule"].startswith("separate jobs")
    assert all(t["epochs"] == 1 for t in man["tickets"])


@pytest.mark.slow
def test_slurm_template_fields_are_checked(trained, tmp_path):
    from conftest import run_py
    tpl = tmp_path / "t.sbatch"
    tpl.write_text("#!/bin/bash\n#SBATCH --gres=gpu:{gpus}\n#SBATCH --qos={qos}\n{command}\n")
    res = run_py(["earlybird_scripts/train_tickets.py", "--config", trained["cfg"], "--exp",
                  _copy_dense_run(trained, tmp_path), "--doc", "tiny", "--launcher", "slurm",
                  "--dry_run", "--slurm_template", str(tpl)])
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].endswith(
        "unknown field(s) {qos} (known: {job_name}, {log}, {gpus}, {cwd}, {command})")


# --- kernel-friendly widths -------------------------------------------------------------------

def test_round_to_keeps_multiples_of_lcm_8_and_the_groupnorm_unit():
    from models.pruning import MaskExtractor, channel_unit, count_params_macs
    args = {"ch": 32, "out_ch": 1, "ch_mult": [1, 2], "num_res_blocks": 1,
            "attn_resolutions": [4], "dropout": 0.0, "in_channels": 1, "resolution": 8,
            "resamp_with_conv": True, "gn_groups": 8}
    assert channel_unit(32, 4, 8) == 8 and channel_unit(64, 8, 8) == 8
    assert channel_unit(48, 16, 8) == 16 and channel_unit(36, 4, 8) == 4   # lcm; no fit
    assert channel_unit(32, 4, 0) == 4
    torch.manual_seed(0)
    from models.unet import UNet
    sd = UNet(**args).state_dict()
    plain, rounded = MaskExtractor(args), MaskExtractor(args, round_to=8)
    assert [u for _, _, u in rounded.layout] == [8 if c % 8 == 0 else u for (_, c, u) in
                                                 plain.layout]
    last_macs = None
    for ratio in (0.3, 0.6, 0.8):
        widths = {}
        for name, ex in (("plain", plain), ("rounded", rounded)):
            ex.load_weights(sd)
            scores, _ = ex.scores("magnitude")
            model, _ = ex.prune(sd, ex.masks_from_scores(scores, ratio))
            widths[name] = [m.out_channels for m in model.modules()
                            if isinstance(m, torch.nn.Conv2d)][1:-1]   # not stem / output
            out = model(torch.randn(2, 1, 8, 8), torch.tensor([3, 50]))
            assert out.shape == (2, 1, 8, 8)
            for m in model.modules():
                if isinstance(m, torch.nn.GroupNorm):
                    assert m.num_channels % m.num_groups == 0
            if name == "rounded":
                macs = count_params_macs(model, args)[1]
                assert last_macs is None or macs < last_macs
                last_macs = macs
        assert all(w % 8 == 0 for w in widths["rounded"]), (ratio, widths["rounded"])
        if ratio == 0.6:   # 32 channels in units of 4 keep 12 without rounding
            assert any(w % 8 for w in widths["plain"])
