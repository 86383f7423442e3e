"""Config loading: YAML -> validated, typed, frozen ``Settings``, with command-line overrides.

Every key a config may hold is a field of its section's dataclass below, with its default; its
type is the default's type. Unknown keys, wrong types and values out of range are errors naming
the file and the key. Defaults that depend on other values (SpeeD's tau, the tickets'
fine-tuning epochs) are resolved here, once; nothing downstream re-defaults a setting.
``Settings.as_dict()`` is plain values, saved in checkpoints and written back as YAML that
loads to the same Settings.
"""
import copy
import os
import re
from dataclasses import dataclass, fields

import yaml

from models.pruner_names import PRUNERS
from utils.errors import UserError
from utils.io import load_yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

REQUIRED = object()  # marks a key without a sensible default


# One frozen dataclass per section: its fields are the keys a config may hold, their defaults
# the defaults (a field's type is its default's type; lists are tuples here, lists in YAML).
@dataclass(frozen=True)
class DataSettings:
    dataset: str = REQUIRED         # CIFAR10 | CELEBA | LSUN | FOLDER | DIGITS | MNIST5K |
                                    # FASHION_MNIST
    image_size: int = REQUIRED
    channels: int = REQUIRED
    path: str = "data"              # data root (torchvision sets) or the image folder (FOLDER)
    category: str = "church_outdoor"  # LSUN category
    download: bool = True           # let torchvision download where it can
    random_flip: bool = True
    num_workers: int = 2
    on_device: bool = True          # hold the whole set on the device as uint8 when it fits
    max_on_device_mb: int = 2048    # ... up to this size
    skip_bad_images: bool = False   # FOLDER: skip unreadable images (one warning) instead of
                                    # stopping


@dataclass(frozen=True)
class ModelSettings:
    type: str = "simple"            # simple (the DDIM UNet) | dit (a diffusion transformer)
    ch: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    gn_groups: int = 32             # GroupNorm groups of the dense network
    # type: dit (models/dit.py; ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
    # resamp_with_conv and gn_groups are the UNet's and unused)
    patch_size: int = 2             # tokens are patch_size x patch_size patches
    hidden_size: int = 128          # token width
    depth: int = 4                  # transformer blocks
    num_heads: int = 4              # attention heads per block (hidden_size / heads wide)
    mlp_ratio: float = 4.0          # MLP hidden width / hidden_size
    ema: bool = True
    ema_rate: float = 0.9999
    ema_warmup: bool = True         # min(rate, (1+n)/(10+n)): fine-tuned tickets need it


@dataclass(frozen=True)
class DiffusionSettings:
    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_diffusion_timesteps: int = 1000


@dataclass(frozen=True)
class TrainingSettings:
    batch_size: int = 128           # global batch: split across DDP processes
    n_epochs: int = 100
    seed: int = 1234
    log_every: int = 50             # steps between scalar logs (each log syncs with the device)
    sample_every: int = 10          # epochs between sample grids (0: never)
    grid_samples: int = 64
    max_steps_per_epoch: int = 0    # 0: the whole data set each epoch (a cap for smoke runs)
    timestep_sampler: str = "antithetic"  # antithetic (the DDIM codebase's) | uniform | speed
    grad_accum: int = 1             # micro-batches per optimizer step (batch_size stays the
                                    # batch of one step; each pass holds batch_size/grad_accum)
    # what stays on disk (core/ckpt_policy.py); ckpt.pth is written every epoch anyway
    epoch_ckpt: str = "full"        # per-epoch ckpt_epE.pth: full (model + EMA, the seed's) |
                                    # ema (the weights masks and tickets read, half the size) |
                                    # none (online early-bird masks and tickets only)
    epoch_ckpt_until: int = 0       # per-epoch files for epochs < E only (0: every epoch)
    snapshot_every: int = 0         # after that, snapshot_epE.pth every N epochs (0: none)
    keep_last: int = 0              # snapshots kept, newest first (0: all)
    dist_timeout_s: int = 600       # torchrun: a collective waiting longer fails (a dead peer)
    on_nonfinite: str = "stop"      # a non-finite loss or gradient norm: stop (one line, no
                                    # weights written after it) | skip (that step changes
                                    # nothing; counted in the epoch line and costs.jsonl)


@dataclass(frozen=True)
class SamplingSettings:
    batch_size: int = 64
    n_samples: int = 1000
    timesteps: int = 100
    skip_type: str = "quad"
    sample_type: str = "generalized"
    eta: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class SpeedSettings:                # SpeeD (arXiv 2405.17403), training.timestep_sampler: speed
    k: float = 5.0                  # t < tau is drawn k times as often as t >= tau
    lam: float = 0.6                # loss weights of t < tau span [1 - lam, lam]
    tau: int = 0                    # where the accelerated range ends; 0 resolves to 70% of
                                    # the schedule (SpeeD's 700 of 1000 steps)


@dataclass(frozen=True)
class OptimSettings:
    optimizer: str = "Adam"
    lr: float = 0.0002
    weight_decay: float = 0.0
    beta1: float = 0.9
    amsgrad: bool = False
    eps: float = 1.0e-8
    grad_clip: float = 1.0
    warmup: int = 0                 # steps of linear warm-up from 0 to lr (0: none, the seed's)
    schedule: str = "constant"      # constant (the seed's) | cosine | linear decay to min_lr
    min_lr: float = 0.0             # where cosine / linear decay ends, at the last step


@dataclass(frozen=True)
class FastSettings:
    amp: str = "auto"               # auto (bf16 autocast on a GPU that runs bf16 natively,
                                    # else fp32) | bf16 (autocast) | bf16_weights (the network
                                    # computes in bf16, fp32 master weights in the optimizer:
                                    # no casts per step) | off
    channels_last: str = "auto"     # auto (on CUDA) | on | off
    fused_optimizer: bool = True    # fused Adam on CUDA, foreach on CPU
    foreach_ema: bool = True
    compile: bool = False
    cuda_graph: bool = False        # capture the whole training step once, replay it (a GPU;
                                    # runs the same graph-safe step eagerly on the CPU)


@dataclass(frozen=True)
class PruningSettings:
    taylor_batch_size: int = 64
    taylor_steps: int = 16          # timesteps whose loss gradients Taylor importance sums
    thr: float = 0.05               # Diff-Pruning: stop when loss < thr * max loss
    diff_stride: int = 1            # Diff-Pruning visits t = 0, stride, 2 * stride, ...
    use_ema: bool = True            # masks and tickets come from the EMA weights
    round_to: int = 0               # keep a multiple of lcm(round_to, GroupNorm group size)
                                    # channels per group (0: only the GroupNorm group size)
    depth_scale: float = 0.0        # a DiT: a mask at ratio p also removes round(depth_scale
                                    # * p * depth) whole blocks (0: width only)


@dataclass(frozen=True)
class EarlyBirdSettings:
    enabled: bool = False           # compute masks after each epoch during training
    ratios: tuple = (0.3, 0.5, 0.7)
    pruner: str = "magnitude"       # the importance of every mask and ticket of a run
    window: int = 5                 # masks in the FIFO (the paper's and the release's 5)
    threshold: float = 0.1          # largest Hamming distance inside the window (d <= eta)
    stop: bool = False              # stop dense training once every ratio has its EB epoch
    fallback: str = "error"         # a ratio whose masks never settle: error | last (its
                                    # ticket is drawn at the dense run's last epoch; the
                                    # pipeline's choice, said in a note)


@dataclass(frozen=True)
class TaebSettings:
    regions: tuple = ()             # core.regions.Region records, parsed from the YAML list;
                                    # 'regions: auto' sets auto (planned, see below)
    auto: bool = False              # plan the regions from measured loss gaps at the EB epoch
                                    # (earlybird_scripts/plan_regions.py; the pipeline plans)
    finetune_epochs: int = 0        # fine-tuning epochs of every ticket; 0 resolves to half of
                                    # training.n_epochs (at least 1)
    overlap: int = 0                # each ticket also trains this many timesteps past its
                                    # region's ends (the release's ~20); sampling still
                                    # switches at the region boundaries
    visited_only: bool = True       # train each ticket only where the configured sampler goes
                                    # (quad never visits t > 0.8 T); false trains whole
                                    # regions, with a warning for the unvisited part
    max_regions: int = 3            # the planner's most regions (tickets to train)
    plan_bins: int = 20             # the planner's timestep bins (boundaries fall between them)
    plan_images: int = 256          # training images per bin whose loss gap the planner measures


@dataclass(frozen=True)
class TargetSettings:
    """Fine-tuning to a quality target (the pipeline and the study): every ``every`` epochs the
    run is scored with the curve machinery; it stops at the first score <= the target, or at
    the cap. The dense reference can run until its curve plateaus."""
    enabled: bool = False           # fine-tune tickets to the target (default: fixed epochs)
    value: float = 0.0              # the quality to reach (digits-FD / FID); 0: the dense
                                    # reference's final quality (its plateau level)
    every: int = 2                  # epochs between evaluations
    max_epochs: int = 0             # cap per fine-tuning run; 0 resolves to training.n_epochs
    max_flops: float = 0.0          # cap on a method's fine-tuning FLOPs (0: see budget)
    budget: str = "dense"           # with max_flops 0: dense (a method may spend up to the
                                    # dense reference's cost to the target, its dense prefix
                                    # included; pipeline/schedule.py) | none (epochs only)
    plateau_patience: int = 0       # dense: stop once this many evaluations in a row improve
                                    # on the best before them by no more than plateau_delta
                                    # (0: dense trains training.n_epochs)
    plateau_delta: float = 2.0
    plateau_max_epochs: int = 0     # dense cap; 0 resolves to twice training.n_epochs
    axis: str = "digits_fd"         # the curve the plateau, the target and each crossing are
                                    # read from: digits_fd (sampled images) | heldout (the
                                    # held-out denoising loss: fixed images, steps and noise)
    evaluations: int = 0            # a fine-tune is scored every ``every`` epochs, or this
                                    # many times over its FLOPs budget if that is sparser (a
                                    # long budget is not scored every few epochs; 0: off)
    levels: tuple = ()              # further quality levels on that axis, fixed before the
                                    # runs: the study reads every method's cost to each off
                                    # its curve (easier than the target: crossed on the way)


@dataclass(frozen=True)
class PipelineSettings:
    """What earlybird_scripts/run_pipeline.py runs beyond the stages' own settings (its flags
    override these; every stage reads them from the resolved {exp}/pipeline/{doc}.yml)."""
    pruning_ratio: float = 0.5      # the EB ticket's and train-prune-finetune's ratio (and the
                                    # planner's budget: the uniform ticket of this ratio)
    tpf: bool = True                # train the train-prune-finetune baseline
    plan: bool = False              # also TA-EB on regions planned from measured loss gaps
    equal_flops: bool = False       # also a uniform EB ticket given TA-EB's fine-tuning FLOPs
    final_samples: bool = True      # sample sampling.n_samples images per method and score them
    eval_every: int = 0             # quality along training: every K-th epoch (0: final only)
    eval_samples: int = 300         # images per quality evaluation along training
    eval_timesteps: int = 25        # sampling steps per quality evaluation
    heldout_images: int = 128       # test images of the held-out loss beside every evaluation
    heldout_timesteps: int = 16     # at most this many of the sampler's visited timesteps
    max_parallel: int = 0           # TA-EB tickets trained at once (0: train_tickets' default)
    fid_ref: str = ""               # other data than digits: real images (folder / .npz) for FID
    inception_weights: str = ""     # local pt_inception-2015-12-05 weights ("": download)


@dataclass(frozen=True)
class Settings:
    """A validated config: one frozen record per section, every derived default resolved."""
    data: DataSettings
    model: ModelSettings
    diffusion: DiffusionSettings
    training: TrainingSettings
    sampling: SamplingSettings
    speed: SpeedSettings
    optim: OptimSettings
    fast: FastSettings
    pruning: PruningSettings
    earlybird: EarlyBirdSettings
    taeb: TaebSettings
    target: TargetSettings = TargetSettings()
    pipeline: PipelineSettings = PipelineSettings()

    def as_dict(self):
        """Plain nested dict (lists, not tuples): checkpoints, config.yml, ``validate`` again."""
        return {section: {f.name: _plain(getattr(getattr(self, section), f.name))
                          for f in fields(getattr(self, section))} for section in SECTIONS}

    def model_kwargs(self):
        """The network's keyword arguments (models.networks.build_network; stored in every
        checkpoint): models.unet.UNet's, or models.dit.DiT's with arch 'dit'."""
        m, d = self.model, self.data
        if m.type == "dit":
            return dict(arch="dit", in_channels=d.channels, out_ch=d.channels,
                        resolution=d.image_size, patch_size=m.patch_size,
                        hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads,
                        mlp_ratio=m.mlp_ratio)
        return dict(in_channels=d.channels, out_ch=d.channels, ch=m.ch, ch_mult=list(m.ch_mult),
                    num_res_blocks=m.num_res_blocks,
                    attn_resolutions=list(m.attn_resolutions), dropout=m.dropout,
                    resolution=d.image_size, resamp_with_conv=m.resamp_with_conv,
                    gn_groups=m.gn_groups)

    def pruning_ratios(self):
        """Every ratio a pipeline of these settings prunes at: earlybird.ratios, the EB
        ticket's (pipeline.pruning_ratio) and each hand-set region's."""
        return tuple(sorted(set(self.earlybird.ratios) | {self.pipeline.pruning_ratio} |
                            {r.pruning_ratio for r in self.taeb.regions}))

    def with_overrides(self, overrides, source="config"):
        """A new Settings with 'section.key=value' overrides applied and checked."""
        return validate(apply_overrides(self.as_dict(), overrides), source)


SECTIONS = {f.name: f.type for f in fields(Settings)}
DEFAULTS = {name: {f.name: f.default for f in fields(cls)} for name, cls in SECTIONS.items()}


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


CHOICES = {
    ("data", "dataset"): ["CIFAR10", "CELEBA", "LSUN", "FOLDER", "DIGITS", "MNIST5K",
                          "FASHION_MNIST"],
    ("model", "type"): ["simple", "dit"],
    ("diffusion", "beta_schedule"): ["linear", "quad", "const", "jsd", "sigmoid", "cosine"],
    ("sampling", "skip_type"): ["uniform", "quad"],
    ("sampling", "sample_type"): ["generalized", "ddpm_noisy"],
    ("optim", "optimizer"): ["Adam", "AdamW", "SGD", "RMSProp"],
    ("optim", "schedule"): ["constant", "cosine", "linear"],
    ("training", "timestep_sampler"): ["antithetic", "uniform", "speed"],
    ("training", "epoch_ckpt"): ["full", "ema", "none"],
    ("training", "on_nonfinite"): ["stop", "skip"],
    ("fast", "amp"): ["auto", "bf16", "bf16_weights", "off"],
    ("fast", "channels_last"): ["auto", "on", "off"],
    ("earlybird", "pruner"): list(PRUNERS),
    ("earlybird", "fallback"): ["error", "last"],
    ("target", "axis"): ["digits_fd", "heldout"],
    ("target", "budget"): ["dense", "none"],
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


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(where, value, kind):
    """``value`` as a ``kind`` (bool, int, float, str, tuple), or a UserError."""
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
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
            # taeb.regions: auto stands for a list the planner fills in
            cfg[section][key] = ("auto",) if (section, key) == ("taeb", "regions") and \
                value == "auto" else _check_type(f"{source}: {section}.{key}", value,
                                                 TYPES[section][key])
    for section, values in cfg.items():
        for key, value in values.items():
            if value is REQUIRED:
                raise UserError(f"{source}: missing required key '{section}.{key}'")
            choices = CHOICES.get((section, key))
            if choices and value not in choices:
                raise UserError(f"{source}: {section}.{key} must be one of {choices}, "
                                f"got {value!r}")
    _check_values(cfg, source)
    return _settings(cfg, source)


TYPES = {name: {f.name: f.type for f in fields(cls)} for name, cls in SECTIONS.items()}


def _settings(cfg, source):
    """The checked dict as Settings, with the derived defaults resolved."""
    from core.regions import parse_regions
    T = cfg["diffusion"]["num_diffusion_timesteps"]
    cfg["speed"]["tau"] = cfg["speed"]["tau"] or round(0.7 * T)
    cfg["taeb"]["finetune_epochs"] = cfg["taeb"]["finetune_epochs"] or \
        max(1, cfg["training"]["n_epochs"] // 2)
    cfg["earlybird"]["ratios"] = tuple(float(r) for r in cfg["earlybird"]["ratios"])
    cfg["target"]["levels"] = tuple(float(v) for v in cfg["target"]["levels"])
    if cfg["taeb"]["regions"] == ("auto",):
        cfg["taeb"]["regions"], cfg["taeb"]["auto"] = (), True
    cfg["taeb"]["regions"] = parse_regions(cfg["taeb"]["regions"], T, source)
    n = cfg["training"]["n_epochs"]
    cfg["target"]["max_epochs"] = cfg["target"]["max_epochs"] or n
    cfg["target"]["plateau_max_epochs"] = cfg["target"]["plateau_max_epochs"] or 2 * n
    return Settings(**{name: cls(**cfg[name]) for name, cls in SECTIONS.items()})


# Valid ranges of numeric values: (low, high, low_inclusive, high_inclusive); None = open end.
POSITIVE, NON_NEGATIVE, FRACTION = (0, None, False, False), (0, None, True, False), \
    (0, 1, False, False)
AT_LEAST_ONE = (1, None, True, False)
RANGES = {
    ("data", "image_size"): AT_LEAST_ONE, ("data", "channels"): AT_LEAST_ONE,
    ("data", "num_workers"): NON_NEGATIVE, ("data", "max_on_device_mb"): NON_NEGATIVE,
    ("model", "ch"): AT_LEAST_ONE, ("model", "num_res_blocks"): AT_LEAST_ONE,
    ("model", "dropout"): (0, 1, True, False), ("model", "gn_groups"): AT_LEAST_ONE,
    ("model", "patch_size"): AT_LEAST_ONE, ("model", "hidden_size"): AT_LEAST_ONE,
    ("model", "depth"): AT_LEAST_ONE, ("model", "num_heads"): AT_LEAST_ONE,
    ("model", "mlp_ratio"): POSITIVE,
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
    ("training", "keep_last"): NON_NEGATIVE, ("training", "dist_timeout_s"): AT_LEAST_ONE,
    ("pruning", "taylor_batch_size"): AT_LEAST_ONE, ("pruning", "taylor_steps"): AT_LEAST_ONE,
    ("pruning", "thr"): FRACTION, ("pruning", "diff_stride"): AT_LEAST_ONE,
    ("pruning", "round_to"): NON_NEGATIVE, ("pruning", "depth_scale"): (0, 1, True, True),
    ("earlybird", "window"): (2, None, True, False), ("earlybird", "threshold"): FRACTION,
    ("taeb", "finetune_epochs"): NON_NEGATIVE, ("taeb", "overlap"): NON_NEGATIVE,
    ("taeb", "max_regions"): AT_LEAST_ONE, ("taeb", "plan_bins"): (2, None, True, False),
    ("taeb", "plan_images"): AT_LEAST_ONE,
    ("target", "value"): NON_NEGATIVE, ("target", "every"): AT_LEAST_ONE,
    ("target", "max_epochs"): NON_NEGATIVE, ("target", "max_flops"): NON_NEGATIVE,
    ("target", "evaluations"): NON_NEGATIVE,
    ("target", "plateau_patience"): NON_NEGATIVE, ("target", "plateau_delta"): NON_NEGATIVE,
    ("target", "plateau_max_epochs"): NON_NEGATIVE,
    ("pipeline", "pruning_ratio"): FRACTION, ("pipeline", "eval_every"): NON_NEGATIVE,
    ("pipeline", "eval_samples"): AT_LEAST_ONE, ("pipeline", "eval_timesteps"): AT_LEAST_ONE,
    ("pipeline", "max_parallel"): NON_NEGATIVE, ("pipeline", "heldout_images"): AT_LEAST_ONE,
    ("pipeline", "heldout_timesteps"): AT_LEAST_ONE,
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


def check_setting(section, key, value, flag):
    """A script's flag that stands for ``section.key``, checked against that setting's range
    (scripts that take no config re-declare no rule of their own)."""
    spec = RANGES[(section, key)]
    if not in_range(value, *spec):
        raise UserError(f"{flag} {value!r}: must be {_range_text(*spec)} (as {section}.{key})")
    return value


def _check_values(cfg, source):
    for (section, key), spec in RANGES.items():
        v = cfg[section][key]
        if not in_range(v, *spec):
            raise UserError(f"{source}: {section}.{key} must be {_range_text(*spec)}, got {v!r}")
    d, m = cfg["data"], cfg["model"]
    if m["type"] == "dit":
        _check_dit(m, d, source)
    else:
        _check_unet(m, d, source)
        if cfg["pruning"]["depth_scale"]:
            raise UserError(f"{source}: pruning.depth_scale removes a DiT's blocks; this "
                            f"UNet (model.type: {m['type']}) prunes by width only (set it to 0)")
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
    for v in cfg["target"]["levels"]:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise UserError(f"{source}: target.levels must be positive numbers, got {v!r}")


def _check_unet(m, d, source):
    down = 2 ** (len(m["ch_mult"]) - 1)
    if d["image_size"] % down:
        raise UserError(f"{source}: data.image_size {d['image_size']} is not divisible by "
                        f"{down} (the UNet downsamples {len(m['ch_mult']) - 1} times)")
    if m["ch"] % m["gn_groups"]:
        raise UserError(f"{source}: model.ch {m['ch']} is not divisible by "
                        f"model.gn_groups {m['gn_groups']}")


def _check_dit(m, d, source):
    if d["image_size"] % m["patch_size"]:
        raise UserError(f"{source}: data.image_size {d['image_size']} is not divisible by "
                        f"model.patch_size {m['patch_size']}")
    if m["hidden_size"] % m["num_heads"]:
        raise UserError(f"{source}: model.hidden_size {m['hidden_size']} is not divisible by "
                        f"model.num_heads {m['num_heads']}")
    if m["hidden_size"] % 4:
        raise UserError(f"{source}: model.hidden_size {m['hidden_size']} must be a multiple "
                        f"of 4 (its 2-D sine-cosine position embedding)")


def parse_override(item):
    """'section.key=value' -> (section, key, value parsed as YAML, the value's text)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"bad --override '{item}': expected section.key=value")
    lhs, rhs = item.split("=", 1)
    section, key = lhs.split(".", 1)
    try:
        value = yaml.safe_load(rhs) if rhs != "" else ""
    except yaml.YAMLError:
        value = rhs
    return section.strip(), key.strip(), value, rhs


def apply_overrides(raw, overrides):
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        section, key, value, text = parse_override(item)
        if section not in DEFAULTS or key not in DEFAULTS[section]:
            raise UserError(f"bad --override '{item}': unknown key '{section}.{key}'")
        if TYPES[section][key] is str and not isinstance(value, str):
            value = text  # a text setting takes the text as typed: data.path=2024, =on, =~
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return raw


def load_config(name, overrides=None):
    """Load configs/NAME (or a path), apply 'section.key=value' overrides, validate."""
    path = resolve_path(name)
    raw = apply_overrides(load_raw(path), overrides)
    return validate(raw, source=path)


def load_raw(path, chain=()):
    """A config file's sections; with a top-level ``base: OTHER.yml`` (a path, or a name in
    configs/, relative to this file first), OTHER's sections with this file's keys laid over
    them key by key (a base may have a base)."""
    raw = load_yaml(path, "config file") or {}
    if not isinstance(raw, dict) or "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str):
        raise UserError(f"{path}: base must name a config file, got {base!r}")
    near = os.path.join(os.path.dirname(path), base)
    base_path = near if os.path.isfile(near) else resolve_path(base)
    if os.path.realpath(base_path) in chain + (os.path.realpath(path),):
        raise UserError(f"{path}: base {base!r} leads back to itself")
    merged = copy.deepcopy(load_raw(base_path, chain + (os.path.realpath(path),)))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


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
    """Write Settings as YAML that ``load_config`` reads back to the same Settings."""
    from utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(cfg.as_dict(), sort_keys=False))
