"""Print a path (or run name) of the experiment layout, for shell scripts: the one layout module
(core/layout.py) names every file, so the scripts ask it instead of spelling paths out.

  python earlybird_scripts/layout_path.py --exp checkpoints masks_dir cifar10
  python earlybird_scripts/layout_path.py --exp checkpoints ticket_file cifar10 0.3 magnitude 7
  python earlybird_scripts/layout_path.py eb_doc cifar10 0.3

WHAT is a method of core.layout.Layout (run_dir, latest_checkpoint, epoch_checkpoint,
masks_dir, ticket_file, manifest, samples_dir, metric_file, ...) or a run-name function
(eb_doc, tpf_doc, eqflops_doc, taeb_name).
"""
import argparse

import _common  # noqa: F401

from utils.errors import UserError, run_cli

NAMES = ("eb_doc", "tpf_doc", "eqflops_doc", "taeb_name")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", default="checkpoints", help="experiment root (default: %(default)s)")
    p.add_argument("what", help="a Layout method or a run-name function (see above)")
    p.add_argument("args", nargs="*", help="its arguments: run name, ratio, pruner, epoch ...")
    return p


def _value(text):
    """'7' -> 7, '0.3' -> 0.3, anything else stays text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None):
    a = build_parser().parse_args(argv)
    import core.layout as layout_module
    from core.layout import Layout
    if a.what in NAMES:
        fn = getattr(layout_module, a.what)
    elif not a.what.startswith("_") and callable(getattr(Layout, a.what, None)):
        fn = getattr(Layout(a.exp), a.what)
    else:
        raise UserError(f"{a.what}: not a layout path or run name (see --help)")
    args = [a.args[0]] + [_value(x) for x in a.args[1:]] if a.args else []
    try:
        print(fn(*args))
    except TypeError as e:
        raise UserError(f"{a.what}: wrong arguments {a.args} ({e})")
    return 0


if __name__ == "__main__":
    run_cli(main)
