"""TA-EB tickets: stitched routing, region fine-tuning, parallel ticket training, manifests."""
import os

import pytest
import torch
import torch.nn as nn
import yaml

from conftest import TINY, run_py, write_config
from main import main
from models.diffusion import Diffusion, sample_images, timestep_sequence
from models.stitched import StitchedTickets
from core.config import load_config
from utils.errors import UserError
from core.regions import Region, read_manifest, require_regions

DIFF = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
        "num_diffusion_timesteps": 1000}


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t):
        self.seen.extend(t.tolist())
        return torch.zeros_like(x)


def test_stitched_routing_sends_every_t_to_its_region():
    regions = [(0, 240), (240, 440), (440, 720), (720, 1000)]
    fakes = [Recorder() for _ in regions]
    model = StitchedTickets(fakes, regions, 1000)
    d = Diffusion(**DIFF)
    sample_images(model, d, torch.randn(2, 1, 4, 4), timesteps=100, skip_type="quad",
                  sample_type="generalized", eta=0.0)
    seq = timestep_sequence("quad", 100, 1000)
    for fake, (lo, hi) in zip(fakes, regions):
        assert all(lo <= t < hi for t in fake.seen)
        assert sorted(set(fake.seen)) == [t for t in seq if lo <= t < hi]
    # per-element routing of a mixed batch
    for f in fakes:
        f.seen.clear()
    model(torch.randn(4, 1, 4, 4), torch.tensor([5, 300, 999, 239]))
    assert fakes[0].seen == [5, 239] and fakes[1].seen == [300] and fakes[3].seen == [999]


def test_single_ticket_stitched_equals_plain_sampling_bit_for_bit(trained):
    from core.checkpoint import load_checkpoint, model_from_checkpoint
    path = os.path.join(trained["log"], "ckpt.pth")
    net = model_from_checkpoint(load_checkpoint(path), path, use_ema=True).eval()
    d = Diffusion(**{**DIFF, "num_diffusion_timesteps": 100})
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    for kind, eta in (("generalized", 0.0), ("ddpm_noisy", 1.0)):
        kw = dict(timesteps=10, skip_type="uniform", sample_type=kind, eta=eta)
        a = sample_images(net, d, noise, generator=torch.Generator().manual_seed(0), **kw)
        b = sample_images(StitchedTickets([net], [(0, 100)], 100), d, noise,
                          generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(a, b)


def test_regions_must_tile_the_schedule(tmp_path):
    for regions, needle in [
        ([{"range": [0, 40], "pruning_ratio": 0.3}, {"range": [50, 100], "pruning_ratio": 0.5}],
         "[40, 50) are not covered"),
        ([{"range": [0, 60], "pruning_ratio": 0.3}, {"range": [50, 100], "pruning_ratio": 0.5}],
         "overlaps"),
        ([{"range": [0, 90], "pruning_ratio": 0.3}], "expected 100"),
        ([{"range": [0, 100], "pruning_ratio": 1.5}], "pruning_ratio must be in (0, 1)"),
    ]:
        # a config whose regions do not tile [0, T) does not load, whatever command reads it
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)")):
            load_config(write_config(tmp_path / "r.yml", taeb__regions=regions))
    cfg = load_config(write_config(tmp_path / "ok.yml"))
    assert cfg.taeb.regions == (Region(0, 40, 0.3, epoch=1), Region(40, 100, 0.5, epoch=1))
    assert load_config(str(tmp_path / "ok.yml"), [f"taeb.regions={[r.as_dict() for r in cfg.taeb.regions]}"]) == cfg
    with pytest.raises(UserError, match="taeb.regions is empty"):
        require_regions(load_config(write_config(tmp_path / "none.yml", taeb__regions=[])))


@pytest.mark.slow
def test_region_finetune_and_bad_ts_range(trained, tmp_path):
    ticket = _ticket(trained, tmp_path)
    base = ["--config", trained["cfg"], "--exp", str(tmp_path), "--ni", "--load_pruned_model",
            ticket]
    with pytest.raises(UserError, match="--ts_range 50 200"):
        main(base + ["--doc", "bad", "--ts_range", "50", "200"])
    with pytest.raises(UserError, match="--ts_range 60 60"):
        main(base + ["--doc", "bad", "--ts_range", "60", "60"])
    assert main(base + ["--doc", "reg", "--ts_range", "40", "100", "--override",
                        "training.n_epochs=1"]) == 0
    c = torch.load(tmp_path / "logs" / "reg" / "ckpt.pth", weights_only=True)
    assert c["ts_range"] == [40, 100] and c["pruning"]["ratio"] == 0.5


def _ticket(trained, tmp_path):
    res = run_py(["earlybird_scripts/prune.py", "--config", trained["cfg"], "--exp",
                  str(tmp_path), "--doc", "tiny", "--use_ema", "--restore_from",
                  os.path.join(trained["log"], "ckpt_ep1.pth"), "--pruning_ratio", "0.5",
                  "--save_pruned_model", "--quiet"])
    assert res.returncode == 0, res.stderr
    return str(tmp_path / "pruned" / "tiny" / "models" / "tiny_pruned-0.5-magnitude-1.pth")


@pytest.mark.slow
def test_train_tickets_parallel_failure_and_rerun(trained, tmp_path):
    exp = trained["exp"]
    import copy
    cfg_dict = copy.deepcopy(TINY)
    cfg_dict["taeb"]["regions"][1]["overrides"] = ["optim.lr=-1"]  # this ticket must fail
    bad = write_config(tmp_path / "bad.yml", cfg_dict)
    args = ["earlybird_scripts/train_tickets.py", "--exp", exp, "--doc", "tiny",
            "--no_progress"]
    res = run_py(args + ["--config", bad])
    assert res.returncode == 1
    assert "region [40, 100)" in res.stderr and "region_40_100.log" in res.stderr
    good_ckpt = os.path.join(exp, "logs", "tiny_taeb_0_40", "ckpt.pth")
    assert os.path.isfile(good_ckpt) and os.path.isfile(os.path.join(exp, "logs",
                                                                     "tiny_taeb_0_40", "DONE"))
    mtime = os.path.getmtime(good_ckpt)
    manifest = os.path.join(exp, "tickets", "tiny", "tickets.yml")
    assert not os.path.isfile(manifest)
    res = run_py(args + ["--config", trained["cfg"]])
    assert res.returncode == 0, res.stderr
    assert os.path.getmtime(good_ckpt) == mtime  # the finished ticket was not retrained
    man = yaml.safe_load(open(manifest))
    # run_py starts it with OMP_NUM_THREADS=1: the tickets keep that limit, whatever the cores
    assert man["schedule"] == "one at a time, 1 thread each"
    assert "OMP_NUM_THREADS=1 " in open(os.path.join(
        exp, "tickets", "tiny", "logs", "region_0_40.log")).read()
    assert [t["range"] for t in man["tickets"]] == [[0, 40], [40, 100]]
    assert [t["pruning_ratio"] for t in man["tickets"]] == [0.3, 0.5]
    assert man["tickets"][0]["macs"] > man["tickets"][1]["macs"] > 0
    assert man["critical_path_wall_s"] == max(t["wall_s"] for t in man["tickets"])
    for t in man["tickets"]:
        c = torch.load(os.path.join(exp, "tickets", "tiny", t["checkpoint"]), weights_only=True)
        # the region, cut at the sampler's highest timestep (80 of 100) + 1: visited_only
        assert c["ts_range"] == [t["range"][0], min(t["range"][1], 81)]
        assert c["epochs_done"] == 1
    # stitched sampling from the manifest
    folder = tmp_path / "taeb"
    assert main(["--config", trained["cfg"], "--exp", exp, "--doc", "tiny", "--ni", "--sample",
                 "--fid", "--use_ema", "--skip_type", "quad", "--timesteps", "5", "--eta", "0",
                 "--tickets", manifest, "--image_folder", str(folder),
                 "--n_samples", "4"]) == 0
    assert len([f for f in os.listdir(folder) if f.endswith(".png")]) == 4


def test_bad_manifests(trained, tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_manifest(str(tmp_path / "none.yml"))
    (tmp_path / "m1.yml").write_text("tickets: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        read_manifest(str(tmp_path / "m1.yml"))
    (tmp_path / "m2.yml").write_text("tickets: 3\n")
    with pytest.raises(UserError, match="non-empty 'tickets' list"):
        read_manifest(str(tmp_path / "m2.yml"))
    ck = os.path.join(trained["log"], "ckpt.pth")
    (tmp_path / "m3.yml").write_text(yaml.safe_dump({"num_timesteps": 100, "tickets": [
        {"range": [0, 50], "checkpoint": ck}, {"range": [50, 100], "checkpoint": "nope.pth"}]}))
    with pytest.raises(UserError, match=r"ticket 1 \[50, 100\): checkpoint nope.pth not found"):
        read_manifest(str(tmp_path / "m3.yml"))
    (tmp_path / "m4.yml").write_text(yaml.safe_dump({"num_timesteps": 100, "tickets": [
        {"range": [0, 50], "checkpoint": ck}]}))
    with pytest.raises(UserError, match="regions end at 50, expected 100"):
        read_manifest(str(tmp_path / "m4.yml"))


@pytest.mark.slow
def test_ticket_whose_architecture_does_not_match_its_weights(trained, tmp_path):
    ticket = _ticket(trained, tmp_path)
    c = torch.load(ticket, weights_only=True)
    c["pruning"]["history"] = c["pruning"]["history"][:-3]  # a different architecture
    bad = tmp_path / "bad_ticket.pth"
    torch.save(c, bad)
    with pytest.raises(UserError, match="parameter '.*' has shape"):
        main(["--config", trained["cfg"], "--exp", str(tmp_path), "--doc", "x", "--ni",
              "--load_pruned_model", str(bad)])


def test_ticket_processes_keep_the_callers_thread_limit(monkeypatch):
    """Three 2-thread tickets on 2 cores (a study run three seeds side by side) trained 20x
    slower per epoch than with one thread each: an OMP_NUM_THREADS the caller set bounds the
    threads handed to ticket processes; without one, the cores this process may run on."""
    from core.device import cpu_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads() == 3
    for unset in ("", "x", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert cpu_threads() == len(os.sched_getaffinity(0))
