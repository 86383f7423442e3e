"""The report on partial experiments, and a shortened run of the whole pipeline."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, pipeline_config, run_py
from evaluation.report import report_config, write_report


@pytest.mark.slow
def test_report_marks_missing_stages(trained, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(trained["log"], exp / "logs" / "tiny")
    path, rows, notes = write_report(str(exp), "tiny", report_config(str(exp), "tiny"))
    assert [r.name for r in rows] == ["Dense"]
    text = open(path).read()
    assert "| Dense |" in text and "Missing or incomplete" in text
    assert any("TA-EB tickets: missing" in n for n in notes)
    assert any("EB ticket: missing" in n for n in notes)
    assert os.path.isfile(exp / "report" / "tiny" / "loss_curves.png")
    # results as data beside the table: same rows, same columns, full precision
    import csv
    import json
    data = json.load(open(exp / "report" / "tiny" / "results.json"))
    assert [r["method"] for r in data["rows"]] == ["Dense"]
    assert data["rows"][0]["params"] == rows[0].params and "vs_tpf_flops" in data["columns"]
    with open(exp / "report" / "tiny" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == data["columns"] and table[0]["method"] == "Dense"
    res = run_py(["earlybird_scripts/report.py", "--exp", str(tmp_path / "nothing"), "--doc",
                  "x"])
    assert res.returncode == 2 and "no dense training run" in res.stderr


def _kill_when(args, path, timeout=600):
    """Start a command in its own process group; kill -9 the whole group once ``path``
    exists."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.Popen([sys.executable] + args, cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not os.path.exists(path) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()


@pytest.mark.slow
def test_whole_pipeline_shortened(tmp_path):
    """Killed in the middle of its TA-EB tickets, the pipeline reruns: finished stages and the
    finished ticket are reused, the rest is done; then the whole result is checked."""
    path = pipeline_config(tmp_path / "pipe.yml", 4)
    exp = str(tmp_path / "runs")
    args = ["earlybird_scripts/run_pipeline.py", "--config", path, "--exp", exp, "--doc",
            "pipe", "--pruning_ratio", "0.5", "--finetune_epochs", "1", "--n_samples", "12"]
    first_ticket = os.path.join(exp, "logs", "pipe_taeb_0_40")
    _kill_when(args, os.path.join(first_ticket, "DONE"))
    assert not os.path.exists(os.path.join(exp, "tickets", "pipe", "tickets.yml"))
    ticket_mtime = os.path.getmtime(os.path.join(first_ticket, "ckpt.pth"))
    res = run_py(args, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "taking over the lock" in res.stdout  # the killed pipeline's
    assert os.path.getmtime(os.path.join(first_ticket, "ckpt.pth")) == ticket_mtime
    stages = [line for line in res.stdout.splitlines() if line.startswith("=== ")]
    assert stages[0] == "=== TA-EB tickets", stages  # dense, EB and baseline were reused
    for rel in ["logs/pipe/ckpt_ep3.pth", "logs/pipe/earlybird.json",
                "pruned/pipe/masks/pipe_pruned-0.5-magnitude-3.npy",
                "pruned/pipe/masks/overlap-0.5-magnitude.png",
                "logs/pipe_eb_0.5/ckpt.pth", "logs/pipe_tpf_0.5/ckpt.pth",
                "tickets/pipe/tickets.yml", "samples/pipe_taeb/000011.png",
                "samples/pipe_taeb.metric.json", "samples/pipe.metric.json",
                "report/pipe/results.md", "report/pipe/distances-magnitude.png"]:
        assert os.path.isfile(os.path.join(exp, rel)), rel
    table = open(os.path.join(exp, "report", "pipe", "results.md")).read()
    for row in ("| Dense |", "| Train-prune-finetune (p=0.5) |", "| EB ticket (p=0.5) |",
                "| TA-EB ([0,40):0.3, [40,100):0.5) |"):
        assert row in table
    assert "Missing" not in table
    assert "| Dense |" in res.stdout  # the table is printed at the end
    # a second run reuses every finished stage
    dense = os.path.join(exp, "logs", "pipe", "ckpt.pth")
    mtime = os.path.getmtime(dense)
    res = run_py(args, timeout=900)
    assert res.returncode == 0
    assert os.path.getmtime(dense) == mtime
    stages = [line for line in res.stdout.splitlines() if line.startswith("=== ")]
    assert stages == ["=== report"], stages


@pytest.mark.slow
def test_pipeline_equal_flops_control(tmp_path):
    """--equal_flops: a uniform EB ticket at the ratio of TA-EB's sampling-averaged MACs,
    fine-tuned for the TA-EB tickets' fine-tuning FLOPs, sampled and reported beside them."""
    path = pipeline_config(tmp_path / "pipe.yml", 4)
    exp = str(tmp_path / "runs")
    res = run_py(["earlybird_scripts/run_pipeline.py", "--config", path, "--exp", exp, "--doc",
                  "pipe", "--finetune_epochs", "1", "--n_samples", "8", "--skip_tpf",
                  "--equal_flops"], timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "gets the TA-EB tickets' fine-tuning FLOPs" in res.stdout
    table = open(os.path.join(exp, "report", "pipe", "results.md")).read()
    row = next(line for line in table.splitlines()
               if line.startswith("| Uniform EB ticket, TA-EB's fine-tuning FLOPs (p="))
    assert row.split("|")[-3].strip() != "–"   # its samples were scored
    assert not any(line.startswith("| Train-prune-finetune") for line in table.splitlines())
