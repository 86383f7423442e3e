"""Configs, overrides and every bad input of main.py: one clear line, exit != 0, nothing
on disk changed."""
import os

import pytest
import torch

from conftest import run_py, write_config
from main import main
from core.config import load_config
from utils.errors import UserError


def test_config_found_in_configs_dir_and_overrides_apply():
    cfg = load_config("cifar10.yml", ["training.n_epochs=3", "data.path=/data/imgs",
                                      "model.ch_mult=[1,2]"])
    assert cfg.training.n_epochs == 3 and cfg.data.path == "/data/imgs"
    assert cfg.model.ch_mult == (1, 2)
    assert cfg.model.ch == 128 and cfg.optim.lr == 0.0002
    # YAML 1.1 reads 1e-4 (no dot) as text: a number field takes it as the number it is
    assert load_config("cifar10.yml", ["optim.lr=1e-4"]).optim.lr == 1e-4
    with pytest.raises(UserError, match="optim.lr: expected a number, got 'fast'"):
        load_config("cifar10.yml", ["optim.lr=fast"])


@pytest.mark.parametrize("changes,needle", [
    ({"optim__lr": "fast"}, "optim.lr: expected a number"),
    ({"optim__lrr": 0.1}, "unknown key 'optim.lrr'"),
    ({"data__image_size": 9}, "not divisible"),
    ({"sampling__skip_type": "cubic"}, "skip_type must be one of"),
])
def test_bad_config_values(tmp_path, changes, needle):
    path = write_config(tmp_path / "bad.yml", **changes)
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        load_config("no_such.yml")


@pytest.mark.parametrize("item", ["training.n_epochs", "nosection=3", "training.nokey=1"])
def test_bad_override(item):
    with pytest.raises(UserError, match="bad --override"):
        load_config("digits.yml", [item])


def test_cli_error_is_one_line_and_nonzero(tmp_path):
    res = run_py(["main.py", "--config", "digits.yml", "--exp", str(tmp_path),
                  "--override", "optim.lr=fast"])
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "optim.lr" in lines[0] and "Traceback" not in res.stderr


def test_channels_not_matching_data(tmp_path):
    cfg = write_config(tmp_path / "c.yml", data__channels=3)
    with pytest.raises(UserError, match="data.channels is 3 but DIGITS images have 1"):
        main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "x", "--ni"])


def test_empty_and_unreadable_folder_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = write_config(tmp_path / "f.yml", data__dataset="FOLDER", data__path=str(empty))
    with pytest.raises(UserError, match="no images"):
        main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "x", "--ni"])
    (empty / "a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "x", "--ni"])


@pytest.mark.slow
def test_folder_dataset_trains(tmp_path):
    from PIL import Image
    import numpy as np
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.RandomState(0)
    for i in range(40):
        Image.fromarray(rng.randint(0, 255, (12, 10), dtype=np.uint8)).save(folder / f"{i}.png")
    cfg = write_config(tmp_path / "f.yml", data__dataset="FOLDER", data__path=str(folder),
                       training__n_epochs=1)
    assert main(["--config", cfg, "--exp", str(tmp_path / "e"), "--doc", "x", "--ni"]) == 0
    assert os.path.isfile(tmp_path / "e" / "logs" / "x" / "ckpt_ep0.pth")


def _snapshot(folder):
    return {f: os.path.getmtime(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_bad_checkpoints_leave_disk_untouched(trained, tmp_path):
    log = trained["log"]
    before = _snapshot(log)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(open(os.path.join(log, "ckpt_ep0.pth"), "rb").read()[:1000])
    junk = tmp_path / "junk.pth"
    torch.save({"hello": "world"}, junk)
    base = ["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny", "--ni",
            "--sample", "--image_folder", str(tmp_path / "s"), "--n_samples", "2"]
    for path, needle in [(tmp_path / "missing.pth", "file not found"),
                         (truncated, "not a readable checkpoint"),
                         (junk, "not a checkpoint of this project")]:
        with pytest.raises(UserError, match=needle):
            main(base + ["--restore_from", str(path)])
    # shapes that don't match the config: name the parameter
    other = write_config(tmp_path / "o.yml", model__ch=32)
    sd = torch.load(os.path.join(log, "ckpt_ep0.pth"), weights_only=True)["model"]
    bare = tmp_path / "bare.pth"
    torch.save(sd, bare)
    with pytest.raises(UserError, match="parameter 'temb.dense.0.weight' has shape"):
        main(["--config", other, "--exp", trained["exp"], "--doc", "tiny", "--sample",
              "--image_folder", str(tmp_path / "s"), "--restore_from", str(bare)])
    # training into a folder with checkpoints, without --ni or --resume_training
    with pytest.raises(UserError, match="already holds checkpoints"):
        main(["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny"])
    # --ni with a broken data set must not clear the earlier run first
    with pytest.raises(UserError, match="does not exist"):
        main(["--config", trained["cfg"], "--exp", trained["exp"], "--doc", "tiny", "--ni",
              "--override", "data.dataset=FOLDER", f"data.path={tmp_path / 'nowhere'}"])
    assert _snapshot(log) == before


def test_a_text_setting_given_as_an_override_keeps_its_text(tmp_path, monkeypatch):
    """YAML would read 2024 as a number, on as true and ~ as null: a text setting takes the
    override as typed, and the data loader looks for the folder "2024"."""
    from datasets import get_dataset
    cfg = load_config("digits.yml", ["data.dataset=FOLDER", "data.path=2024",
                                     "data.category=on", "pipeline.fid_ref=~"])
    assert (cfg.data.path, cfg.data.category, cfg.pipeline.fid_ref) == ("2024", "on", "~")
    os.makedirs(tmp_path / "2024" / "a")
    from PIL import Image
    Image.new("L", (16, 16), 128).save(tmp_path / "2024" / "a" / "x.png")
    monkeypatch.chdir(tmp_path)
    assert len(get_dataset(cfg, train=True)) == 1
    with pytest.raises(UserError, match="expected an integer"):  # numbers still checked
        load_config("digits.yml", ["training.n_epochs=abc"])


def test_a_key_given_twice_in_a_config_is_one_line_not_the_last_one_silently(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `sampling:` section once replaced the
    first without a word (eta 1 became eta 0)."""
    from core.config import load_config
    path = tmp_path / "dup.yml"
    path.write_text("sampling:\n  eta: 1.0\nsampling:\n  eta: 0.0\n")
    with pytest.raises(UserError, match=r"dup.yml: not valid YAML \('sampling' is given twice"):
        load_config(str(path))
    path.write_text("sampling:\n  eta: 1.0\n  eta: 0.5\n")
    with pytest.raises(UserError, match="'eta' is given twice"):
        load_config(str(path))
