"""Print config values for shell scripts (lists space-separated), after overrides.

  python earlybird_scripts/config_value.py --config cifar10.yml earlybird.ratios
"""
import argparse

import _common  # noqa: F401

from utils.errors import UserError, run_cli


def build_parser():
    from core.config import add_override_flag
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    p.add_argument("keys", nargs="+", help="section.key names; one line each")
    add_override_flag(p)
    return p


def main(argv=None):
    a = build_parser().parse_args(argv)
    from core.config import flatten_overrides, load_config
    cfg = load_config(a.config, flatten_overrides(a.override)).as_dict()
    for key in a.keys:
        section, _, name = key.partition(".")
        if section not in cfg or name not in cfg[section]:
            raise UserError(f"{key}: no such config key")
        value = cfg[section][name]
        print(" ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
              if isinstance(value, list) else value)
    return 0


if __name__ == "__main__":
    run_cli(main)
