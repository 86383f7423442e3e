"""Shared fixtures: a tiny digits config and one small trained experiment reused by tests."""
import os
import subprocess
import sys

import pytest
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(2)

TINY = {
    "data": {"dataset": "DIGITS", "image_size": 8, "channels": 1, "random_flip": False,
             "num_workers": 0},
    "model": {"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4],
              "dropout": 0.0, "gn_groups": 8, "ema_rate": 0.9},
    "diffusion": {"num_diffusion_timesteps": 100},
    "training": {"batch_size": 32, "n_epochs": 2, "log_every": 2, "sample_every": 0,
                 "grid_samples": 4, "max_steps_per_epoch": 3},
    "sampling": {"batch_size": 16, "n_samples": 8, "timesteps": 5},
    "optim": {"lr": 0.002},
    "earlybird": {"enabled": False, "ratios": [0.3, 0.5], "window": 2, "threshold": 0.5},
    "taeb": {"regions": [{"range": [0, 40], "pruning_ratio": 0.3, "epoch": 1},
                         {"range": [40, 100], "pruning_ratio": 0.5, "epoch": 1}],
             "finetune_epochs": 1},
}


def write_config(path, cfg=None, **changes):
    import copy
    cfg = copy.deepcopy(cfg or TINY)
    for key, value in changes.items():
        section, k = key.split("__")
        cfg.setdefault(section, {})[k] = value
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return str(path)


def pipeline_config(path, n_epochs):
    """TINY with EB-discovered TA-EB regions (no fixed epochs), for whole-pipeline tests."""
    import copy
    cfg = copy.deepcopy(TINY)
    cfg["training"]["n_epochs"] = n_epochs
    cfg["taeb"]["regions"] = [{"range": [0, 40], "pruning_ratio": 0.3},
                              {"range": [40, 100], "pruning_ratio": 0.5}]
    cfg["earlybird"].update(ratios=[0.3, 0.5], window=2, threshold=0.5)
    return write_config(path, cfg)


def run_py(args, cwd=None, timeout=600, env=None):
    """Run a project script with the test interpreter; returns CompletedProcess."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    e.update(env or {})
    return subprocess.run([sys.executable] + args, cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture
def tiny_cfg(tmp_path):
    return write_config(tmp_path / "tiny.yml")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny dense run: 4 epochs with online masks (shared, treat as read-only)."""
    d = tmp_path_factory.mktemp("trained")
    cfg = write_config(d / "tiny.yml", earlybird__enabled=True,
                       training__n_epochs=4)
    exp = str(d / "exp")
    from main import main
    rc = main(["--config", cfg, "--exp", exp, "--doc", "tiny", "--ni", "--use_ema",
               "--train_from_scratch"])
    assert rc == 0
    return {"cfg": cfg, "exp": exp, "doc": "tiny", "dir": d,
            "log": os.path.join(exp, "logs", "tiny")}
