"""The whole EB-Diff-Train pipeline in one command (the README's first command):

dense training with per-epoch checkpoints and online masks -> EB epochs -> EB ticket
fine-tune -> train-prune-finetune baseline -> TA-EB tickets in parallel -> sampling (stitched
for TA-EB) -> quality metric -> results table. Each stage runs the same command a user would
type (printed as it runs) and is skipped or resumed when its results already exist. The stages
are pipeline/stages.py's; they all read the resolved config {exp}/pipeline/{doc}.yml.

  python earlybird_scripts/run_pipeline.py --config digits.yml --exp runs --doc digits
"""
import argparse
import time

import _common  # noqa: F401

from core.config import add_override_flag, flatten_overrides
from core.options import check_name, flag_overrides
from utils.errors import run_cli

# flags that name a config value: given, they override it (defaults and ranges are the
# config's: core/config.py, sections pipeline, taeb and sampling)
CONFIG_FLAGS = {"pruning_ratio": "pipeline.pruning_ratio",
                "finetune_epochs": "taeb.finetune_epochs", "n_samples": "sampling.n_samples",
                "fid_ref": "pipeline.fid_ref", "inception_weights": "pipeline.inception_weights",
                "max_parallel": "pipeline.max_parallel", "eval_every": "pipeline.eval_every",
                "eval_samples": "pipeline.eval_samples",
                "eval_timesteps": "pipeline.eval_timesteps", "tpf": "pipeline.tpf",
                "final_samples": "pipeline.final_samples", "plan": "pipeline.plan",
                "equal_flops": "pipeline.equal_flops"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="digits.yml",
                   help="configs/NAME or a YAML path (default: %(default)s)")
    p.add_argument("--exp", default="runs", help="experiment root (default: %(default)s)")
    p.add_argument("--doc", default="digits", help="the dense run's name (default: %(default)s)")
    p.add_argument("--pruning_ratio", type=float,
                   help="ratio of the EB ticket and the train-prune-finetune baseline "
                        "(default: pipeline.pruning_ratio)")
    p.add_argument("--finetune_epochs", type=int,
                   help="fine-tuning epochs (default: taeb.finetune_epochs, else half of "
                        "training.n_epochs; to a target: target.max_epochs)")
    p.add_argument("--n_samples", type=int,
                   help="samples per method (default: sampling.n_samples)")
    p.add_argument("--fid_ref", help="non-digits data: real images folder or .npz for FID "
                                     "(default: pipeline.fid_ref)")
    p.add_argument("--inception_weights",
                   help="local pt_inception-2015-12-05 weights for FID (default: download)")
    p.add_argument("--max_parallel", type=int,
                   help="TA-EB tickets trained at once (default: see train_tickets.py)")
    p.add_argument("--eval_every", type=int,
                   help="quality along training: score every K-th epoch of every run "
                        "(default: pipeline.eval_every; 0: only the final samples)")
    p.add_argument("--eval_samples", type=int,
                   help="images per quality evaluation along training "
                        "(default: pipeline.eval_samples)")
    p.add_argument("--eval_timesteps", type=int,
                   help="sampling steps per quality evaluation (default: "
                        "pipeline.eval_timesteps)")
    p.add_argument("--skip_tpf", dest="tpf", action="store_const", const=False,
                   help="leave out the train-prune-finetune baseline (default: off; pipeline.tpf: false)")
    p.add_argument("--no_final_samples", dest="final_samples", action="store_const",
                   const=False, help="skip the final sample folders and their metric, e.g. "
                                     "when the quality curves are the measure "
                                     "(default: off; pipeline.final_samples: false)")
    p.add_argument("--plan", action="store_const", const=True,
                   help="also TA-EB with regions planned from measured loss gaps "
                        "(plan_regions.py at the EB epoch; ticket set {doc}_plan); "
                        "taeb.regions: auto plans without a hand-set one (default: off; "
                        "pipeline.plan)")
    p.add_argument("--equal_flops", action="store_const", const=True,
                   help="also fine-tune a uniform EB ticket, at the ratio of TA-EB's "
                        "sampling-averaged MACs, with the TA-EB tickets' fine-tuning FLOPs "
                        "(default: off; pipeline.equal_flops)")
    add_override_flag(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    check_name(a.doc, "--doc")
    from core.layout import Layout
    from core.lock import RunLock
    from pipeline.stages import Pipeline
    t0 = time.perf_counter()
    with RunLock(Layout(a.exp).pipeline_lock(a.doc), f"the pipeline of {a.doc} in {a.exp}"):
        Pipeline(a.config, a.exp, a.doc,
                 flatten_overrides(a.override) + flag_overrides(a, CONFIG_FLAGS)).run_all()
    print(f"\npipeline finished in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    run_cli(main)
