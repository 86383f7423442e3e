"""Config loading: YAML -> validated plain dicts, with command-line overrides.

Every key a config may hold is listed in ``DEFAULTS`` with its default; its type is the
default's type. Unknown keys and wrong types are errors naming the file and the key. The
resolved config is a dict of dicts of plain values, so it can be saved in checkpoints and
written back as YAML that loads again.
"""
import copy
import os

import yaml

from runners.errors import UserError

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
        "var_type": "fixedlarge",
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
    "optim": {
        "optimizer": "Adam",
        "lr": 0.0002,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "amsgrad": False,
        "eps": 1.0e-8,
        "grad_clip": 1.0,
    },
    "fast": {
        "amp": "auto",              # auto (bf16 on CUDA, off on CPU) | bf16 | off
        "channels_last": "auto",    # auto (on CUDA) | on | off
        "fused_optimizer": True,    # fused Adam on CUDA, foreach on CPU
        "foreach_ema": True,
        "compile": False,
    },
    "pruning": {
        "pruner": "magnitude",
        "taylor_batch_size": 64,
        "taylor_steps": 16,         # timesteps whose loss gradients Taylor importance sums
        "thr": 0.05,                # Diff-Pruning: stop when loss < thr * max loss
        "use_ema": True,
    },
    "earlybird": {
        "enabled": False,           # compute masks after each epoch during training
        "ratios": [0.3, 0.5, 0.7],
        "pruner": "magnitude",
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
    ("fast", "amp"): ["auto", "bf16", "off"],
    ("fast", "channels_last"): ["auto", "on", "off"],
    ("pruning", "pruner"): ["magnitude", "taylor", "random", "diff-pruning"],
    ("earlybird", "pruner"): ["magnitude", "taylor", "random", "diff-pruning"],
}


def resolve_path(name):
    """A config name: a path as given, else relative to configs/."""
    if os.path.isfile(name):
        return name
    cand = os.path.join(CONFIG_DIR, name)
    if os.path.isfile(cand):
        return cand
    raise UserError(f"config file not found: {name} (looked in . and {CONFIG_DIR})")


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


def _check_values(cfg, source):
    d, m, t = cfg["data"], cfg["model"], cfg["training"]
    for key in ("image_size", "channels"):
        if d[key] <= 0:
            raise UserError(f"{source}: data.{key} must be positive, got {d[key]}")
    down = 2 ** (len(m["ch_mult"]) - 1)
    if d["image_size"] % down:
        raise UserError(f"{source}: data.image_size {d['image_size']} is not divisible by "
                        f"{down} (the UNet downsamples {len(m['ch_mult']) - 1} times)")
    if m["ch"] % m["gn_groups"]:
        raise UserError(f"{source}: model.ch {m['ch']} is not divisible by "
                        f"model.gn_groups {m['gn_groups']}")
    if t["batch_size"] <= 0 or cfg["sampling"]["batch_size"] <= 0:
        raise UserError(f"{source}: batch sizes must be positive")
    if t["n_epochs"] <= 0:
        raise UserError(f"{source}: training.n_epochs must be positive")
    if not 0.0 <= m["dropout"] < 1.0:
        raise UserError(f"{source}: model.dropout must be in [0, 1), got {m['dropout']}")
    if cfg["optim"]["lr"] <= 0:
        raise UserError(f"{source}: optim.lr must be positive, got {cfg['optim']['lr']}")
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    if T < 2:
        raise UserError(f"{source}: diffusion.num_diffusion_timesteps must be >= 2")
    if not 0 < cfg["sampling"]["timesteps"] <= T:
        raise UserError(f"{source}: sampling.timesteps must be in 1..{T}")
    for r in cfg["earlybird"]["ratios"]:
        if not isinstance(r, (int, float)) or not 0 < r < 1:
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
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})")
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
                        help="override config values without editing the YAML (repeatable)")


def dump_config(cfg, path):
    from runners.checkpoint import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
