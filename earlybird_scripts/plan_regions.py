"""Plan TA-EB regions from measurements (docs/pruning.md, "Planned regions").

At each candidate ratio's early-bird epoch, its ticket (pruned, not fine-tuned) and the dense
network of that epoch are scored per timestep bin on the same images, timesteps and noise; the
loss gap, weighted by how often the configured sampler visits each bin, is minimised over plans
of at most taeb.max_regions contiguous regions (one ratio each) whose sampling-averaged MACs stay
within the uniform ticket's. Writes plan.yml (regions, budget, gaps) and plan.png.

  python earlybird_scripts/plan_regions.py --config digits.yml --exp runs --doc digits
  python earlybird_scripts/plan_regions.py ... --write planned.yml   # a config with the plan
"""
import argparse
import os
import time

import _common  # noqa: F401

from core.config import flatten_overrides
from core.options import add_run_args
from utils.errors import UserError, run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(p, "the dense run with per-epoch checkpoints and masks")
    p.add_argument("--pruning_ratio", type=float, default=None,
                   help="the uniform ticket whose MACs are the budget (default: "
                        "pipeline.pruning_ratio)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="candidate ratios (default: earlybird.ratios)")
    p.add_argument("--budget_macs", type=float, default=None,
                   help="the budget in MACs per image instead (default: the uniform ticket's)")
    p.add_argument("--bins", type=int, default=None,
                   help="timestep bins (default: taeb.plan_bins)")
    p.add_argument("--images", type=int, default=None,
                   help="images per bin (default: taeb.plan_images)")
    p.add_argument("--max_regions", type=int, default=None,
                   help="most regions (default: taeb.max_regions)")
    p.add_argument("--out_dir", default=None,
                   help="where plan.yml and plan.png go (default: {exp}/plans/{doc})")
    p.add_argument("--write", default=None, metavar="CONFIG",
                   help="also write the config with taeb.regions set to the plan "
                        "(default: none)")
    return p


# flags that name a config value: given, they override it (its range check is the config's)
CONFIG_FLAGS = {"pruning_ratio": "pipeline.pruning_ratio", "bins": "taeb.plan_bins",
                "images": "taeb.plan_images", "max_regions": "taeb.max_regions"}


def main(argv=None):
    a = build_parser().parse_args(argv)
    import yaml

    from core.config import check_setting, dump_config
    from core.options import Experiment, flag_overrides
    from core.regions import parse_regions
    from evaluation.plots import plot_plan
    from runners.planner import make_plan
    from utils.io import atomic_write_text
    t0 = time.perf_counter()
    xp = Experiment.load(a.config, a.exp, a.doc, flatten_overrides(a.override) +
                         flag_overrides(a, CONFIG_FLAGS))
    tb, ratio = xp.cfg.taeb, xp.cfg.pipeline.pruning_ratio
    for r in a.ratios or []:
        check_setting("pipeline", "pruning_ratio", r, "--ratios")
    if not os.path.isfile(xp.layout.latest_checkpoint(a.doc)):
        raise UserError(f"no dense run {a.doc} in {a.exp} (train it first)")
    rec = make_plan(xp, budget_ratio=ratio, ratios=a.ratios or xp.cfg.earlybird.ratios,
                    bins=tb.plan_bins, n_images=tb.plan_images, max_regions=tb.max_regions,
                    budget_macs=a.budget_macs)
    out_dir = a.out_dir or xp.layout.plan_dir(a.doc)
    os.makedirs(out_dir, exist_ok=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(os.path.join(out_dir, "plan.yml"), yaml.safe_dump(rec, sort_keys=False))
    plot_plan(rec, os.path.join(out_dir, "plan.png"))
    regions = parse_regions(rec["regions"], xp.cfg.diffusion.num_diffusion_timesteps, "plan")
    print("plan: " + ", ".join(f"[{r.lo}, {r.hi}): p={r.pruning_ratio:g}" for r in regions))
    print(f"sampling-averaged MACs {rec['plan_macs'] / 1e6:.2f}M (budget "
          f"{rec['budget_macs'] / 1e6:.2f}M); weighted loss gap {rec['plan_gap']:.3f} (uniform "
          f"p={ratio:g}: {rec['uniform_gap']:.3f}); {out_dir}/plan.yml, plan.png "
          f"({rec['seconds']:.0f}s)")
    if a.write:
        from dataclasses import replace
        cfg = replace(xp.cfg, taeb=replace(tb, regions=regions, auto=False))
        dump_config(cfg, a.write)
        print(f"config with the plan: {a.write}")
    return 0


if __name__ == "__main__":
    run_cli(main)
