"""What a command asks for beyond the config: the run's name and where its weights come from.

Flags that name a config value (``--seed``, ``--timesteps``, ``--eta``, ``--thr`` ...) are not
kept here: ``flag_overrides`` turns them into ``section.key=value`` overrides when the
arguments are parsed, so the resolved config is the only source of every setting.
"""
import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from core.interop import is_diffusers_folder
from utils.errors import UserError


@dataclass(frozen=True)
class RunOptions:
    exp: str
    doc: str
    ni: bool = False                      # start over: earlier results of this run are replaced
    resume: bool = False                  # continue from {exp}/logs/{doc}/ckpt.pth
    restore_from: Optional[str] = None    # start from (or sample) this checkpoint
    load_pruned_model: Optional[str] = None  # fine-tune this pruned ticket
    use_ema: bool = False                 # take the EMA weights of restore_from / for sampling
    device: Optional[str] = None
    ts_range: Optional[Tuple[int, int]] = None  # train only on timesteps in [lo, hi)
    until_epoch: Optional[int] = None     # pause (resumable, not DONE) once this many epochs
                                          # are done
    image_folder: Optional[str] = None
    tickets: Optional[str] = None         # tickets.yml: stitched TA-EB sampling
    comment: str = ""                     # written into log.txt
    verbosity: str = "info"               # quiet | info | debug (core/runlog.py)
    command: Optional[str] = None         # the command line, for the "resume with" hint

    def __post_init__(self):
        check_name(self.doc, "--doc")
        for flag, path in (("--restore_from", self.restore_from),
                           ("--load_pruned_model", self.load_pruned_model),
                           ("--tickets", self.tickets)):
            if path and not os.path.isfile(path) and not (flag == "--restore_from" and
                                                          is_diffusers_folder(path)):
                raise UserError(f"{flag} {path}: file not found")


@dataclass(frozen=True)
class Experiment:
    """What a pipeline stage works on: the resolved settings, the layout of the experiment
    root, the dense run's name, and the config (file or configs/ name) with the overrides that
    give those settings, for the subprocesses a stage starts."""
    cfg: Any                              # core.config.Settings
    layout: Any                           # core.layout.Layout
    doc: str
    config: str
    overrides: Tuple[str, ...] = ()
    ticket_set: str = ""                  # the TA-EB ticket set's name (default: doc); a
                                          # second set (e.g. planned regions) of the same dense
                                          # run gets a name of its own

    @classmethod
    def load(cls, config, exp, doc, overrides=(), ticket_set=""):
        from core.config import load_config
        from core.layout import Layout
        check_name(doc, "--doc")
        if ticket_set:
            check_name(ticket_set, "--ticket_set")
        return cls(load_config(config, list(overrides)), Layout(exp), doc, config,
                   tuple(overrides), ticket_set)

    @property
    def tset(self):
        """The name the TA-EB tickets' folder, runs and manifest go by."""
        return self.ticket_set or self.doc

    @property
    def exp(self):
        return self.layout.exp


def check_name(name, flag):
    """A run name becomes a folder and part of file names: no path separators."""
    if not name or name in (".", "..") or "/" in name or os.sep in name or \
            (os.altsep and os.altsep in name):
        raise UserError(f"{flag} {name!r}: a run name, not a path (no '/')")
    return name


def flag_overrides(args, mapping):
    """``{flag attribute: 'section.key'}`` -> overrides for the flags that were given."""
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    return out


def add_run_args(parser, doc_help):
    """--config, --exp and --doc of the scripts that work on one dense run (main.py's
    defaults), with the override flag."""
    from core.config import add_override_flag
    parser.add_argument("--config", required=True, help="configs/NAME or a path to a YAML file")
    parser.add_argument("--exp", default="exp", help="experiment root (default: %(default)s)")
    parser.add_argument("--doc", default="run", help=f"{doc_help} (default: %(default)s)")
    add_override_flag(parser)


def add_series_args(parser, *, several_ratios=False):
    """The flags that select mask series (find_earlybird, calculate_overlap, plot_overlap);
    defaults are the config's (core.config.EarlyBirdSettings)."""
    from core.config import EarlyBirdSettings
    parser.add_argument("--mask_dir", required=True, help="folder of *_pruned-*.npy masks")
    parser.add_argument("--pruning_ratio", type=float, required=True,
                        nargs="+" if several_ratios else None,
                        help=f"ratio{'s' if several_ratios else ''} of the series "
                             f"(default: required)")
    parser.add_argument("--pruner", default=EarlyBirdSettings.pruner,
                        help="importance of the series; 'ours' = diff-pruning "
                             "(default: %(default)s)")
    parser.add_argument("--doc", default=None,
                        help="only masks of this run, when a folder mixes runs "
                             "(default: all)")
    parser.add_argument("--start_epoch", type=int, default=0,
                        help="first epoch read (default: %(default)s)")
    parser.add_argument("--end_epoch", type=int, default=None,
                        help="last epoch read (default: the last there is)")


def add_rule_args(parser):
    """--window and --threshold of the early-bird rule, defaulting to the config's."""
    from core.config import EarlyBirdSettings
    parser.add_argument("--window", type=int, default=EarlyBirdSettings.window,
                        help="masks in the FIFO, at least 2 (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=EarlyBirdSettings.threshold,
                        help="largest accepted distance, in (0, 1) (default: %(default)s)")
