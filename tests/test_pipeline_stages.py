"""The pipeline's stages and its step loops, without training: the loops to a plateau and to a
target run on scripted curves; the stage list and its "done" tests on planted files."""
import os

import pytest

from conftest import pipeline_config
from pipeline.schedule import Runs, to_plateau, to_target


class Scripted:
    """Runs whose score after ``k`` evaluations is ``values[k - 1]``; records every advance."""

    def __init__(self, values, done=0, flops_per_epoch=0.0):
        self.values, self.done, self.advanced = values, done, []
        self.flops_per_epoch = flops_per_epoch

    def advance(self, end):
        self.advanced.append(end)
        self.done = end

    def score(self, ends):
        return [{"epoch": e - 1, "value": v, "metric": "digits-FD"}
                for e, v in zip(ends, self.values)]

    def runs(self):
        return Runs(epochs_done=lambda: self.done, finished=lambda: False,
                    advance=self.advance, score=self.score,
                    flops=lambda: self.done * self.flops_per_epoch)


def test_to_plateau_stops_once_patience_evaluations_do_not_improve():
    s = Scripted([100.0, 80.0, 70.0, 69.0, 71.0, 50.0])
    rec = to_plateau(s.runs(), every=2, cap=12, patience=2, delta=3.0)
    # 69 and 71 do not beat 70 by more than 3: plateau after the 5th evaluation (epoch 10)
    assert s.advanced == [2, 4, 6, 8, 10]
    assert rec["plateaued"] and rec["eval_epochs"] == [1, 3, 5, 7, 9]
    assert rec["level"] == (70.0 + 69.0 + 71.0) / 3


def test_to_plateau_runs_to_its_cap_and_says_so():
    s = Scripted([100.0, 90.0, 80.0])
    rec = to_plateau(s.runs(), every=4, cap=10, patience=2, delta=1.0)
    assert s.advanced == [4, 8, 10] and not rec["plateaued"] and rec["cap"] == 10


def test_to_plateau_trains_nothing_already_trained():
    s = Scripted([100.0, 99.0, 99.5], done=12)
    rec = to_plateau(s.runs(), every=4, cap=12, patience=2, delta=3.0)
    assert s.advanced == [] and rec["plateaued"]


def test_to_target_stops_at_the_first_evaluation_at_or_below_it():
    s = Scripted([120.0, 90.0, 79.5, 60.0])
    rec = to_target(s.runs(), target=80.0, every=3, cap_epochs=12)
    assert s.advanced == [3, 6, 9]
    assert rec["reached"] and rec["epoch"] == 8 and rec["values"] == [120.0, 90.0, 79.5]


def test_to_target_stops_at_its_flops_budget_not_reached():
    s = Scripted([120.0, 110.0, 100.0, 90.0], flops_per_epoch=1e9)
    rec = to_target(s.runs(), target=50.0, every=2, cap_epochs=20, cap_flops=4e9)
    assert s.advanced == [2, 4] and not rec["reached"] and rec["epoch"] is None
    assert rec["finetune_flops"] == 4e9 and rec["epochs"] == 4


def test_stages_their_order_and_done_tests(tmp_path):
    from core.config import load_config
    from pipeline.stages import Pipeline
    cfg_path = pipeline_config(tmp_path / "p.yml", 4)
    exp = str(tmp_path / "exp")
    pipe = Pipeline(cfg_path, exp, "pipe", ["pipeline.pruning_ratio=0.4"])
    assert [s.name for s in pipe.stages()] == ["dense", "earlybird", "eb", "tpf", "taeb",
                                               "samples", "report"]
    # the resolved config every stage reads: the pipeline's decisions are in it
    cfg = load_config(pipe.config_file)
    assert cfg.earlybird.enabled and cfg.earlybird.fallback == "last"
    assert cfg.earlybird.ratios == (0.3, 0.4, 0.5) and cfg.pipeline.pruning_ratio == 0.4
    dense = pipe.stages()[0]
    assert not dense.finished()
    os.makedirs(pipe.layout.run_dir("pipe"))
    open(pipe.layout.done_marker("pipe"), "w").write("done\n")
    assert dense.finished() and dense.outputs() == (pipe.layout.done_marker("pipe"),)
    # flags turned overrides switch stages off and on
    pipe = Pipeline(cfg_path, exp, "pipe", ["pipeline.tpf=false", "pipeline.eval_every=2",
                                            "pipeline.final_samples=false"])
    assert [s.name for s in pipe.stages()] == ["dense", "earlybird", "eb", "taeb", "curves",
                                               "report"]
    assert not pipe.stages()[-1].finished()   # the report is always rewritten


def test_a_crossing_past_the_flops_budget_does_not_count():
    # 3 epochs per step at 1e9 FLOPs per epoch: 3e9, 6e9; the budget 5e9 is passed at the
    # second evaluation, which is the first at the target
    s = Scripted([100.0, 40.0], flops_per_epoch=1e9)
    rec = to_target(s.runs(), target=50.0, every=3, cap_epochs=30, cap_flops=5e9)
    assert s.advanced == [3, 6] and not rec["reached"] and rec["finetune_flops"] == 6e9


def test_the_finetuning_budget_is_dense_cost_to_target_less_what_a_method_carries():
    from pipeline.schedule import finetune_budget
    # dense reached the target at 10 TFLOPs; the EB ticket carries 2 of dense training
    assert finetune_budget(10e12, 2e12, 2e12) == 8e12
    # TA-EB carries 3 (its latest ticket was pruned later): 7 left on its critical path
    assert finetune_budget(10e12, 3e12, 2e12) == 7e12
    # train-prune-finetune carries the whole dense run (14): the EB ticket's spend, 8
    assert finetune_budget(10e12, 14e12, 2e12) == 8e12
    assert finetune_budget(None, 1e12, 1e12) == 0.0   # dense never got there: no cap


def test_a_finished_run_made_with_other_settings_is_refused_not_reused(tmp_path):
    import pytest

    from core.config import dump_config
    from pipeline.stages import Pipeline
    from utils.errors import UserError
    cfg_path = pipeline_config(tmp_path / "p.yml", 4)
    exp = str(tmp_path / "exp")
    pipe = Pipeline(cfg_path, exp, "pipe")
    os.makedirs(pipe.layout.run_dir("pipe"))
    open(pipe.layout.done_marker("pipe"), "w").write("done\n")
    dump_config(pipe.cfg, pipe.layout.run_config("pipe"))     # what it was trained with
    assert pipe.stages()[0].finished()
    # the same command with another learning rate: the dense run is not reused silently
    pipe = Pipeline(cfg_path, exp, "pipe", ["optim.lr=0.004"])
    with pytest.raises(UserError, match=r"optim\.lr: 0\.002 -> 0\.004"):
        pipe.stages()[0].finished()
    # settings that do not change the weights (how often to log, the report's samples) may
    pipe = Pipeline(cfg_path, exp, "pipe", ["training.log_every=7", "sampling.n_samples=3"])
    assert pipe.stages()[0].finished()


@pytest.mark.slow
def test_the_pipeline_killed_at_each_stage_boundary_reruns_only_what_is_unfinished(tmp_path):
    """Each invocation runs one unfinished stage and dies before the next: the rerun finds
    exactly the stages run so far finished (their products reused, not remade), and the last
    one writes the whole report."""
    from pipeline.stages import Pipeline
    path = pipeline_config(tmp_path / "p.yml", 3)
    exp = str(tmp_path / "exp")
    overrides = ["pipeline.pruning_ratio=0.5", "taeb.finetune_epochs=1",
                 "sampling.n_samples=8", "pipeline.eval_every=2"]
    ran, dense_ckpt = [], None
    for _ in range(12):
        pipe = Pipeline(path, exp, "b", overrides)
        stages = pipe.stages()
        finished = [s.name for s in stages if s.finished()]
        # what ran before is finished; the stages that always run (curves, report) are not
        assert finished == [n for n in ran if n not in ("curves", "report")], (finished, ran)
        nxt = next(s for s in stages if not s.finished() and s.name not in ran)
        nxt.run()
        ran.append(nxt.name)
        if dense_ckpt is None:
            dense_ckpt = os.path.getmtime(pipe.layout.latest_checkpoint("b"))
        if nxt.name == "report":
            break
    assert ran == ["dense", "earlybird", "eb", "tpf", "taeb", "samples", "curves", "report"]
    assert os.path.getmtime(pipe.layout.latest_checkpoint("b")) == dense_ckpt  # reused
    table = open(pipe.layout.report_file("b")).read()
    assert "| TA-EB (" in table and "Missing" not in table
