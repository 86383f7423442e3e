"""Config loading: YAML -> validated plain dicts, with command-line overrides.

Every key a config may hold is listed in ``DEFAULTS`` with its default; its type is the
default's type. Unknown keys and wrong types are errors naming the file and the key. The
resolved config is a dict of dicts of plain values, so it can be saved in checkpoints and
written back as YAML that loads again.
"""
import copy
import os

import yaml

from utils.errors import UserError
from utils.io import load_yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

REQUIRED = object()  # marks a key without a sensible default

DEFAULTS = {
    "data": {
        "dataset": REQUIRED,        # CIFAR10 | CELEBA | LSUN | FOLDER | DIGITS | FASHION_MNIST
        "image_size": REQUIRED,
        "channels": REQUIRED,
        "path": "data",             # data root (torchvision sets) or the image folder (FOLDER)
        "category": "church_outdoor",  # LSUN category
        "download": True,           # let torchvision download where it can
        "random_flip": True,
        "num_workers": 2,
        "on_device": True,          # hold the whole set on the device as uint8 when it fits
        "max_on_device_mb": 2048,   # ... up to this size
        "skip_bad_images": False,   # FOLDER: skip unreadable images (one warning) instead of
                                    # stopping
    },
    "model": {
        "type": "simple",
        "ch": 128,
        "ch_mult": [1, 2, 2, 2],
        "num_res_blocks": 2,
        "attn_resolutions": [16],
        "dropout": 0.1,
        "resamp_with_conv": True,
        "gn_groups": 32,            # GroupNorm groups of the dense network
        "ema": True,
        "ema_rate": 0.9999,
        "ema_warmup": True,         # min(rate, (1+n)/(10+n)): fine-tuned tickets need it
    },
    "diffusion": {
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "num_diffusion_timesteps": 1000,
    },
    "training": {
        "batch_size": 128,          # global batch: split across DDP processes
        "n_epochs": 100,
        "seed": 1234,
        "log_every": 50,            # steps between scalar logs (each log syncs with the device)
        "sample_every": 10,         # epochs between sample grids (0: never)
        "grid_samples": 64,
        "max_steps_per_epoch": 0,   # 0: the whole data set each epoch (a cap for smoke runs)
        "timestep_sampler": "antithetic",  # antithetic (the DDIM codebase's) | uniform | speed
        "grad_accum": 1,            # micro-batches per optimizer step (batch_size stays the
                                    # batch of one step; each pass holds batch_size/grad_accum)
        # what stays on disk (runners/ckpt_policy.py); ckpt.pth is written every epoch anyway
        "epoch_ckpt": "full",       # per-epoch ckpt_epE.pth: full (model + EMA, the seed's) |
                                    # ema (the weights masks and tickets read, half the size) |
                                    # none (online early-bird masks and tickets only)
        "epoch_ckpt_until": 0,      # per-epoch files for epochs < E only (0: every epoch)
        "snapshot_every": 0,        # after that, snapshot_epE.pth every N epochs (0: none)
        "keep_last": 0,             # snapshots kept, newest first (0: all)
    },
    "sampling": {
        "batch_size": 64,
        "n_samples": 1000,
        "timesteps": 100,
        "skip_type": "quad",
        "sample_type": "generalized",
        "eta": 0.0,
        "seed": 0,
    },
    "speed": {                      # SpeeD (arXiv 2405.17403), training.timestep_sampler: speed
        "k": 5.0,                   # t < tau is drawn k times as often as t >= tau
        "lam": 0.6,                 # loss weights of t < tau span [1 - lam, lam]
        "tau": 0,                   # where the accelerated range ends; 0: 70% of the schedule
                                    # (SpeeD's 700 of 1000 steps)
    },
    "optim": {
        "optimizer": "Adam",
        "lr": 0.0002,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "amsgrad": False,
        "eps": 1.0e-8,
        "grad_clip": 1.0,
        "warmup": 0,                # steps of linear warm-up from 0 to lr (0: none, the seed's)
        "schedule": "constant",     # constant (the seed's) | cosine | linear decay to min_lr
        "min_lr": 0.0,              # where cosine / linear decay ends, at the last step
    },
    "fast": {
        "amp": "auto",              # auto (bf16 on CUDA, off on CPU) | bf16 | off
        "channels_last": "auto",    # auto (on CUDA) | on | off
        "fused_optimizer": True,    # fused Adam on CUDA, foreach on CPU
        "foreach_ema": True,
        "compile": False,
    },
    "pruning": {
        "taylor_batch_size": 64,
        "taylor_steps": 16,         # timesteps whose loss gradients Taylor importance sums
        "thr": 0.05,                # Diff-Pruning: stop when loss < thr * max loss
        "diff_stride": 1,           # Diff-Pruning visits t = 0, stride, 2 * stride, ...
        "use_ema": True,            # masks and tickets come from the EMA weights
        "round_to": 0,              # keep a multiple of lcm(round_to, GroupNorm group size)
                                    # channels per group (0: only the GroupNorm group size)
    },
    "earlybird": {
        "enabled": False,           # compute masks after each epoch during training
        "ratios": [0.3, 0.5, 0.7],
        "pruner": "magnitude",      # the importance of every mask and ticket of a run
        "window": 5,
        "threshold": 0.1,
        "stop": False,              # stop dense training once every ratio has its EB epoch
    },
    "taeb": {
        "regions": [],
        "finetune_epochs": 0,       # 0: training.n_epochs
    },
}

CHOICES = {
    ("data", "dataset"): ["CIFAR10", "CELEBA", "LSUN", "FOLDER", "DIGITS", "FASHION_MNIST"],
    ("model", "type"): ["simple"],
    ("diffusion", "beta_schedule"): ["linear", "quad", "const", "jsd", "sigmoid", "cosine"],
    ("sampling", "skip_type"): ["uniform", "quad"],
    ("sampling", "sample_type"): ["generalized", "ddpm_noisy"],
    ("optim", "optimizer"): ["Adam", "AdamW", "SGD", "RMSProp"],
    ("optim", "schedule"): ["constant", "cosine", "linear"],
    ("training", "timestep_sampler"): ["antithetic", "uniform", "speed"],
    ("training", "epoch_ckpt"): ["full", "ema", "none"],
    ("fast", "amp"): ["auto", "bf16", "off"],
    ("fast", "channels_last"): ["auto", "on", "off"],
    ("earlybird", "pruner"): ["magnitude", "taylor", "random", "diff-pruning"],
}


def resolve_path(name):
    """A config name: a path as given, else relative to configs/."""
    if os.path.isfile(name):
        return name
    cand = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(cand):
        return cand
    hint = ""
    for ext in (".yml", ".yaml"):
        if os.path.isfile(os.path.join(CONFIG_DIR, name + ext)):
            hint = f"; did you mean {name + ext}?"
    raise UserError(f"config file not found: {name} (looked in . and {CONFIG_DIR}){hint}")


def _check_type(where, value, default):
    if default is REQUIRED or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return value
    return value


def validate(raw, source="config"):
    """Merge ``raw`` (a nested dict) over DEFAULTS and check every key, type and choice."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    cfg = copy.deepcopy(DEFAULTS)
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise UserError(f"{source}: unknown section '{section}' "
                            f"(known: {', '.join(DEFAULTS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section '{section}' must be a mapping")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise UserError(f"{source}: unknown key '{section}.{key}' "
                                f"(known: {', '.join(DEFAULTS[section])})")
            cfg[section][key] = _check_type(f"{source}: {section}.{key}", value,
                                            DEFAULTS[section][key])
    for section, values in cfg.items():
        for key, value in values.items():
            if value is REQUIRED:
                raise UserError(f"{source}: missing required key '{section}.{key}'")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise UserError(f"{source}: {section}.{key} must be one of {choices}, "
                                f"got {value!r}")
    _check_values(cfg, source)
    return cfg


# Valid ranges of numeric values: (low, high, low_inclusive, high_inclusive); None = open end.
POSITIVE, NON_NEGATIVE, FRACTION = (0, None, False, False), (0, None, True, False), \
    (0, 1, False, False)
AT_LEAST_ONE = (1, None, True, False)
RANGES = {
    ("data", "image_size"): AT_LEAST_ONE, ("data", "channels"): AT_LEAST_ONE,
    ("data", "num_workers"): NON_NEGATIVE, ("data", "max_on_device_mb"): NON_NEGATIVE,
    ("model", "ch"): AT_LEAST_ONE, ("model", "num_res_blocks"): AT_LEAST_ONE,
    ("model", "dropout"): (0, 1, True, False), ("model", "gn_groups"): AT_LEAST_ONE,
    ("model", "ema_rate"): FRACTION,
    ("diffusion", "beta_start"): POSITIVE, ("diffusion", "beta_end"): (0, 1, False, True),
    ("diffusion", "num_diffusion_timesteps"): (2, None, True, False),
    ("training", "batch_size"): AT_LEAST_ONE, ("training", "n_epochs"): AT_LEAST_ONE,
    ("training", "log_every"): AT_LEAST_ONE, ("training", "sample_every"): NON_NEGATIVE,
    ("training", "grid_samples"): AT_LEAST_ONE,
    ("training", "max_steps_per_epoch"): NON_NEGATIVE,
    ("sampling", "batch_size"): AT_LEAST_ONE, ("sampling", "n_samples"): AT_LEAST_ONE,
    ("sampling", "timesteps"): AT_LEAST_ONE, ("sampling", "eta"): NON_NEGATIVE,
    ("sampling", "seed"): NON_NEGATIVE,
    ("optim", "lr"): POSITIVE, ("optim", "weight_decay"): NON_NEGATIVE,
    ("optim", "beta1"): (0, 1, True, False), ("optim", "eps"): POSITIVE,
    ("optim", "grad_clip"): NON_NEGATIVE, ("optim", "warmup"): NON_NEGATIVE,
    ("optim", "min_lr"): NON_NEGATIVE, ("training", "grad_accum"): AT_LEAST_ONE,
    ("training", "epoch_ckpt_until"): NON_NEGATIVE, ("training", "snapshot_every"): NON_NEGATIVE,
    ("training", "keep_last"): NON_NEGATIVE,
    ("pruning", "taylor_batch_size"): AT_LEAST_ONE, ("pruning", "taylor_steps"): AT_LEAST_ONE,
    ("pruning", "thr"): FRACTION, ("pruning", "diff_stride"): AT_LEAST_ONE,
    ("pruning", "round_to"): NON_NEGATIVE,
    ("earlybird", "window"): (2, None, True, False), ("earlybird", "threshold"): FRACTION,
    ("taeb", "finetune_epochs"): NON_NEGATIVE,
    ("speed", "k"): POSITIVE, ("speed", "lam"): (0, 1, True, True), ("speed", "tau"): NON_NEGATIVE,
}


def _range_text(lo, hi, lo_in, hi_in):
    if hi is None:
        return f">= {lo}" if lo_in else f"> {lo}"
    return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def in_range(value, lo, hi, lo_in, hi_in):
    above = value >= lo if lo_in else value > lo
    below = hi is None or (value <= hi if hi_in else value < hi)
    return above and below


def _check_values(cfg, source):
    for (section, key), spec in RANGES.items():
        v = cfg[section][key]
        if not in_range(v, *spec):
            raise UserError(f"{source}: {section}.{key} must be {_range_text(*spec)}, got {v!r}")
    d, m = cfg["data"], cfg["model"]
    down = 2 ** (len(m["ch_mult"]) - 1)
    if d["image_size"] % down:
        raise UserError(f"{source}: data.image_size {d['image_size']} is not divisible by "
                        f"{down} (the UNet downsamples {len(m['ch_mult']) - 1} times)")
    if m["ch"] % m["gn_groups"]:
        raise UserError(f"{source}: model.ch {m['ch']} is not divisible by "
                        f"model.gn_groups {m['gn_groups']}")
    t = cfg["training"]
    if t["batch_size"] % t["grad_accum"]:
        raise UserError(f"{source}: training.batch_size {t['batch_size']} is not divisible by "
                        f"training.grad_accum {t['grad_accum']}")
    if t["epoch_ckpt"] == "ema" and not (m["ema"] and cfg["pruning"]["use_ema"]):
        raise UserError(f"{source}: training.epoch_ckpt: ema keeps only the EMA weights, which "
                        f"needs model.ema and pruning.use_ema true (or use epoch_ckpt: full)")
    if cfg["optim"]["min_lr"] > cfg["optim"]["lr"]:
        raise UserError(f"{source}: optim.min_lr {cfg['optim']['min_lr']} is above optim.lr "
                        f"{cfg['optim']['lr']}")
    dcfg = cfg["diffusion"]
    if dcfg["beta_start"] > dcfg["beta_end"]:
        raise UserError(f"{source}: diffusion.beta_start {dcfg['beta_start']} is above "
                        f"diffusion.beta_end {dcfg['beta_end']}")
    T = dcfg["num_diffusion_timesteps"]
    if cfg["speed"]["tau"] > T:
        raise UserError(f"{source}: speed.tau must be in 0..{T}, got {cfg['speed']['tau']}")
    if cfg["sampling"]["timesteps"] > T:
        raise UserError(f"{source}: sampling.timesteps must be in 1..{T}, "
                        f"got {cfg['sampling']['timesteps']}")
    for r in cfg["earlybird"]["ratios"]:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise UserError(f"{source}: earlybird.ratios must be numbers in (0, 1), got {r!r}")


def parse_override(item):
    """'section.key=value' -> (section, key, value parsed as YAML)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"bad --override '{item}': expected section.key=value")
    lhs, rhs = item.split("=", 1)
    section, key = lhs.split(".", 1)
    try:
        value = yaml.safe_load(rhs) if rhs != "" else ""
    except yaml.YAMLError:
        value = rhs
    return section.strip(), key.strip(), value


def apply_overrides(raw, overrides):
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        section, key, value = parse_override(item)
        if section not in DEFAULTS or key not in DEFAULTS[section]:
            raise UserError(f"bad --override '{item}': unknown key '{section}.{key}'")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return raw


def load_config(name, overrides=None):
    """Load configs/NAME (or a path), apply 'section.key=value' overrides, validate."""
    path = resolve_path(name)
    raw = load_yaml(path, "config file") or {}
    raw = apply_overrides(raw, overrides)
    return validate(raw, source=path)


def flatten_overrides(groups):
    """argparse gives a list of lists for a repeated nargs='+' flag."""
    out = []
    for g in groups or []:
        out.extend(g if isinstance(g, list) else [g])
    return out


def add_override_flag(parser):
    parser.add_argument("--override", nargs="+", action="append", default=[],
                        metavar="SECTION.KEY=VALUE",
                        help="override config values without editing the YAML, repeatable "
                             "(default: none)")


def dump_config(cfg, path):
    from utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
