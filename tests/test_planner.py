"""TA-EB plans from measured loss gaps: the interval DP against known answers and against brute
force, the sampler's visits, regions' training ranges, and plan_regions.py on a real run."""
import itertools
import os
import random
import shutil

import pytest
import yaml

from conftest import TINY, run_py, write_config
from runners.planner import Plan, bin_edges, plan_cost, plan_dp, visit_weights


def brute_force(gaps, weights, macs, budget, max_regions):
    """Every split into at most max_regions intervals and every ratio assignment."""
    B, ratios, best = len(weights), sorted(gaps), None
    for k in range(1, max_regions + 1):
        for cuts in itertools.combinations(range(1, B), k - 1):
            bounds = (0,) + cuts + (B,)
            for rs in itertools.product(ratios, repeat=k):
                if any(a == b for a, b in zip(rs, rs[1:])):
                    continue
                regs = tuple((bounds[i], bounds[i + 1], rs[i]) for i in range(k))
                cost = plan_cost(regs, weights, macs)
                if cost > budget + 1e-9:
                    continue
                gap = sum(weights[b] * gaps[r][b] for i, j, r in regs for b in range(i, j))
                if best is None or gap < best[0] - 1e-12:
                    best = (gap, regs, cost)
    return best


def test_known_answer_dense_where_it_matters_sparse_elsewhere():
    # 10 bins, equal visits. The sparse ticket (0.8) is as good as the others above bin 3 and
    # much worse below; the dense one (0.4) costs 4x the sparse one. Budget: the uniform 0.6.
    ratios_macs = {0.4: 4.0, 0.6: 2.0, 0.8: 1.0}
    gaps = {0.4: [0.0] * 10, 0.6: [5.0] * 3 + [0.1] * 7, 0.8: [10.0] * 3 + [0.1] * 7}
    weights = [0.1] * 10
    plan = plan_dp(gaps, weights, ratios_macs, budget=2.0, max_regions=3)
    assert plan.regions == ((0, 3, 0.4), (3, 10, 0.8))
    assert plan.macs == pytest.approx(0.3 * 4 + 0.7 * 1) and plan.macs <= 2.0
    assert plan.gap == pytest.approx(0.07)
    # one region only: the best single ratio within the budget is the uniform 0.6
    one = plan_dp(gaps, weights, ratios_macs, budget=2.0, max_regions=1)
    assert one.regions == ((0, 10, 0.6),)
    # a budget below the sparsest ticket: no plan
    assert plan_dp(gaps, weights, ratios_macs, budget=0.5, max_regions=3) is None


def test_unvisited_bins_cost_nothing_and_join_a_region():
    # the sampler never visits the last 2 bins: they must not get a region of their own
    ratios_macs = {0.4: 4.0, 0.8: 1.0}
    weights = [0.25, 0.25, 0.25, 0.25, 0.0, 0.0]
    gaps = {0.4: [0.0] * 6, 0.8: [3.0, 0.0, 0.0, 0.0, 9.0, 9.0]}
    plan = plan_dp(gaps, weights, ratios_macs, budget=2.0, max_regions=3)
    assert plan.regions == ((0, 1, 0.4), (1, 6, 0.8))
    assert plan.gap == pytest.approx(0.0) and plan.macs == pytest.approx(1.75)


@pytest.mark.parametrize("seed", range(12))
def test_dp_equals_brute_force(seed):
    rng = random.Random(seed)
    B = rng.randint(3, 7)
    ratios = sorted(rng.sample([0.3, 0.4, 0.5, 0.6, 0.8], 3))
    macs = {r: 10 * (1 - r) ** 2 for r in ratios}
    w = [rng.random() for _ in range(B)]
    weights = [x / sum(w) for x in w]
    gaps = {r: [rng.random() * 10 * r for _ in range(B)] for r in ratios}
    budget = macs[ratios[1]] * rng.uniform(0.8, 1.3)
    K = rng.randint(1, 3)
    plan, best = plan_dp(gaps, weights, macs, budget, K), brute_force(gaps, weights, macs,
                                                                       budget, K)
    if best is None:
        assert plan is None
        return
    assert plan.gap == pytest.approx(best[0], abs=1e-9)
    assert plan.macs <= budget + 1e-9
    assert plan_cost(plan.regions, weights, macs) == pytest.approx(plan.macs)
    assert plan.regions[0][0] == 0 and plan.regions[-1][1] == B
    assert all(a[1] == b[0] for a, b in zip(plan.regions, plan.regions[1:]))


def test_quad_sampler_never_visits_the_top_fifth():
    from core.config import load_config
    cfg = load_config("digits.yml")
    edges = bin_edges(1000, 20)
    w = visit_weights(cfg, edges)
    assert sum(w) == pytest.approx(1.0)
    assert all(x == 0 for x, lo in zip(w, edges) if lo > 800) and w[0] > w[10]


def test_training_range_overlap_and_visited_only():
    from core.config import load_config
    from core.regions import Region, training_range, visited_top
    cfg = load_config("digits.yml", ["taeb.overlap=20"])
    top = visited_top(cfg)
    assert top == 800  # quad, 50 steps, T = 1000: 0.8 T
    assert training_range(cfg, Region(0, 240, 0.4)) == (0, 260, None)
    assert training_range(cfg, Region(240, 440, 0.6)) == (220, 460, None)
    lo, hi, unvisited = training_range(cfg, Region(440, 1000, 0.8))
    assert (lo, hi) == (420, 821) and unvisited == (801, 821)   # only the overlap is unvisited
    full = load_config("digits.yml", ["taeb.visited_only=false", "taeb.overlap=0"])
    assert training_range(full, Region(440, 1000, 0.8)) == (440, 1000, (801, 1000))


def test_a_warning_only_for_training_beyond_the_overlap_margin(capsys):
    from types import SimpleNamespace
    from core.config import load_config
    from core.regions import Region
    from runners.tickets import warn_unvisited
    jobs = [SimpleNamespace(region=Region(*r), label=f"[{r[0]}, {r[1]})")
            for r in ((0, 240, 0.4), (240, 440, 0.6), (440, 1000, 0.8))]
    warn_unvisited(load_config("digits.yml", ["taeb.overlap=20"]), jobs)   # [801, 821): margin
    assert capsys.readouterr().err == ""
    warn_unvisited(load_config("digits.yml", ["taeb.visited_only=false"]), jobs)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "[440, 1000)" in err[0] and "[801, 1000)" in err[0]


def test_plan_regions_script_on_a_trained_run(trained, tmp_path):
    exp = str(tmp_path / "exp")
    shutil.copytree(trained["exp"], exp)
    out_cfg = str(tmp_path / "planned.yml")
    res = run_py(["earlybird_scripts/plan_regions.py", "--config", trained["cfg"], "--exp", exp,
                  "--doc", "tiny", "--pruning_ratio", "0.5", "--bins", "5", "--images", "16",
                  "--write", out_cfg])
    assert res.returncode == 0, res.stderr
    plan_yml = os.path.join(exp, "plans", "tiny", "plan.yml")
    rec = yaml.safe_load(open(plan_yml))
    assert os.path.isfile(os.path.join(exp, "plans", "tiny", "plan.png"))
    assert rec["plan_macs"] <= rec["budget_macs"]
    assert rec["plan_gap"] <= rec["uniform_gap"] + 1e-9    # the uniform ticket is a plan too
    assert set(rec["gaps"]) == {"0.3", "0.5"} and all(len(g) == 5 for g in rec["gaps"].values())
    ranges = [r["range"] for r in rec["regions"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 100
    from core.config import load_config
    planned = load_config(out_cfg)
    assert [r.range for r in planned.taeb.regions] == [tuple(r) for r in ranges]
    # the measurement is deterministic: a second run gives the same gaps
    res = run_py(["earlybird_scripts/plan_regions.py", "--config", trained["cfg"], "--exp", exp,
                  "--doc", "tiny", "--bins", "5", "--images", "16", "--out_dir",
                  str(tmp_path / "again")])
    assert res.returncode == 0, res.stderr
    again = yaml.safe_load(open(tmp_path / "again" / "plan.yml"))
    assert again["gaps"] == rec["gaps"] and again["regions"] == rec["regions"]


def test_auto_regions_must_be_planned_first(tmp_path):
    cfg = write_config(tmp_path / "auto.yml", taeb__regions="auto")
    from core.config import load_config
    assert load_config(cfg).taeb.auto
    res = run_py(["earlybird_scripts/train_tickets.py", "--config", cfg, "--exp",
                  str(tmp_path / "exp"), "--doc", "x"])
    assert res.returncode == 2 and "plan them first" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert TINY["taeb"]["regions"]  # the shared config is untouched
