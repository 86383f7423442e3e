"""Write the results table and figures for one experiment (whatever stages exist).

  python earlybird_scripts/report.py --exp checkpoints --doc cifar10
"""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli
from runners.report import table, write_report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True)
    p.add_argument("--doc", required=True)
    p.add_argument("--out_dir", default=None, help="default: {exp}/report/{doc}")
    p.add_argument("--timesteps", type=int, default=100, help="sampling steps (TA-EB MACs)")
    p.add_argument("--skip_type", default="quad", choices=["uniform", "quad"])
    a = p.parse_args(argv)
    path, rows, notes = write_report(a.exp, a.doc, a.out_dir, sampling_steps=a.timesteps,
                                     skip_type=a.skip_type)
    print(table(rows))
    for n in notes:
        print(f"missing: {n}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
