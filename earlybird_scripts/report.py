"""Write the results table and figures for one experiment (whatever stages exist).

  python earlybird_scripts/report.py --exp checkpoints --doc cifar10
"""
import argparse

import _common  # noqa: F401

from utils.errors import run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", required=True, help="experiment root (default: required)")
    p.add_argument("--doc", required=True, help="the dense run's name (default: required)")
    p.add_argument("--out_dir", default=None, help="(default: {exp}/report/{doc})")
    p.add_argument("--config", default=None,
                   help="the settings the runs were made with: their ratios, regions and "
                        "sampler (default: {exp}/pipeline/{doc}.yml, else the dense run's "
                        "config.yml)")
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from evaluation.report import report_config, table, write_report
    path, rows, notes = write_report(a.exp, a.doc, report_config(a.exp, a.doc, a.config),
                                     a.out_dir)
    print(table(rows))
    for n in notes:
        print(f"missing: {n}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
