"""TA-EB timestep regions (docs/design.md, step 5): the typed record a config's
``taeb.regions`` becomes, the check that regions tile [0, T), and the ticket manifest
(``tickets.yml``) that stitched sampling reads."""
import os
from dataclasses import dataclass
from typing import Optional

from models.tiling import check_regions
from utils.errors import UserError
from utils.io import load_yaml

REGION_KEYS = ("range", "pruning_ratio", "epoch", "ticket", "overrides")


@dataclass(frozen=True)
class Region:
    """Timesteps [lo, hi) served by one ticket of ratio ``pruning_ratio``, pruned at ``epoch``
    (None: the ratio's EB epoch) or taken from ``ticket`` (a pruned checkpoint)."""
    lo: int
    hi: int
    pruning_ratio: float
    epoch: Optional[int] = None
    ticket: Optional[str] = None
    overrides: tuple = ()           # extra 'section.key=value' for this ticket's fine-tuning

    @property
    def range(self):
        return (self.lo, self.hi)

    def as_dict(self):
        out = {"range": [self.lo, self.hi], "pruning_ratio": self.pruning_ratio}
        if self.epoch is not None:
            out["epoch"] = self.epoch
        if self.ticket:
            out["ticket"] = self.ticket
        if self.overrides:
            out["overrides"] = list(self.overrides)
        return out


def parse_range(rng, where):
    """[lo, hi] of a region (config or manifest) -> (lo, hi) ints, or a UserError."""
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2 and
            all(isinstance(v, int) and not isinstance(v, bool) for v in rng)):
        raise UserError(f"{where}: range must be [lo, hi], got {rng!r}")
    return int(rng[0]), int(rng[1])


def check_tiling(ranges, num_timesteps, where):
    try:
        check_regions([list(r) for r in ranges], num_timesteps, where=where)
    except ValueError as e:
        raise UserError(str(e))


def parse_regions(raw, num_timesteps, source="config"):
    """A config's taeb.regions list -> tuple of Region (empty when none are configured)."""
    if not raw:
        return ()
    out = []
    for i, r in enumerate(raw):
        where = f"{source}: taeb.regions[{i}]"
        if isinstance(r, Region):
            out.append(r)
            continue
        if not isinstance(r, dict) or "range" not in r or "pruning_ratio" not in r:
            raise UserError(f"{where} needs 'range' and 'pruning_ratio'")
        unknown = set(r) - set(REGION_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(REGION_KEYS))})")
        p = r["pruning_ratio"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise UserError(f"{where}.pruning_ratio must be in (0, 1)")
        epoch = r.get("epoch")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or
                                  epoch < 0):
            raise UserError(f"{where}.epoch must be an epoch index >= 0, got {epoch!r}")
        lo, hi = parse_range(r["range"], where)
        out.append(Region(lo, hi, float(p), epoch, r.get("ticket"),
                          tuple(r.get("overrides") or ())))
    check_tiling([r.range for r in out], num_timesteps, f"{source}: taeb.regions")
    return tuple(out)


def require_regions(cfg, source="config"):
    """The configured regions; none is an error for the commands that train TA-EB tickets."""
    if cfg.taeb.auto and not cfg.taeb.regions:
        raise UserError(f"{source}: taeb.regions is 'auto': plan them first "
                        f"(earlybird_scripts/plan_regions.py --write CONFIG, or the pipeline, "
                        f"which plans them at the EB epoch)")
    if not cfg.taeb.regions:
        raise UserError(f"{source}: taeb.regions is empty: describe the TA-EB tickets there")
    return cfg.taeb.regions


def visited_top(cfg):
    """The highest timestep the configured sampler visits (quad: about 0.8 T)."""
    from models.diffusion import timestep_sequence
    s = cfg.sampling
    return max(timestep_sequence(s.skip_type, s.timesteps,
                                 cfg.diffusion.num_diffusion_timesteps))


def training_range(cfg, region):
    """(lo, hi, unvisited): the timesteps a region's ticket trains on: the region widened by
    ``taeb.overlap`` on each side, and, with ``taeb.visited_only``, cut above the sampler's
    highest timestep (+ overlap); ``unvisited`` is the part of the result no sample visits."""
    T = cfg.diffusion.num_diffusion_timesteps
    ov, top = cfg.taeb.overlap, visited_top(cfg)
    lo, hi = max(0, region.lo - ov), min(T, region.hi + ov)
    if cfg.taeb.visited_only:
        hi = min(hi, max(lo + 1, top + 1 + ov))
    unvisited = (max(lo, top + 1), hi) if hi > top + 1 else None
    return lo, hi, unvisited


@dataclass(frozen=True)
class ManifestTicket:
    """One fine-tuned ticket of a manifest; ``checkpoint`` resolved to a path that exists."""
    range: tuple
    checkpoint: str
    pruning_ratio: Optional[float] = None
    eb_epoch: Optional[int] = None      # the dense epoch it was pruned at (None: a given file)
    params: int = 0
    macs: int = 0                       # per image (torch-pruning's count)
    epochs: int = 0
    wall_s: float = 0.0
    train_flops: float = 0
    slot: Optional[str] = None          # where it ran, when tickets shared a GPU group


@dataclass(frozen=True)
class Manifest:
    """tickets.yml, read once: the tickets of one TA-EB set in timestep order."""
    path: str
    tickets: tuple
    doc: str = ""
    ticket_set: str = ""
    num_timesteps: Optional[int] = None
    schedule: Optional[str] = None


def read_manifest(path, num_timesteps=None):
    """tickets.yml -> Manifest (every ticket's checkpoint found, the ranges tiling [0, T)):
    the one reader of the file, for stitched sampling, the report and the diagnostics."""
    man = load_yaml(path, "ticket manifest")
    if not isinstance(man, dict) or not isinstance(man.get("tickets"), list) or \
            not man["tickets"]:
        raise UserError(f"{path}: expected a mapping with a non-empty 'tickets' list")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for i, t in enumerate(man["tickets"]):
        if not isinstance(t, dict) or "range" not in t or "checkpoint" not in t:
            raise UserError(f"{path}: ticket {i} needs 'range' and 'checkpoint'")
        r = parse_range(t["range"], f"{path}: ticket {i}")
        cp = t["checkpoint"]
        cand = cp if os.path.isabs(cp) else os.path.join(base, cp)
        if not os.path.isfile(cand) and os.path.isfile(cp):
            cand = cp
        if not os.path.isfile(cand):
            raise UserError(f"{path}: ticket {i} [{r[0]}, {r[1]}): checkpoint {cp} not found")
        out.append(ManifestTicket(
            range=r, checkpoint=cand, pruning_ratio=t.get("pruning_ratio"),
            eb_epoch=t.get("eb_epoch"), params=t.get("params") or 0, macs=t.get("macs") or 0,
            epochs=t.get("epochs") or 0, wall_s=t.get("wall_s") or 0.0,
            train_flops=t.get("train_flops") or 0,
            slot=(t.get("placement") or {}).get("slot")))
    T = num_timesteps or man.get("num_timesteps")
    check_tiling([t.range for t in out], T, path)
    return Manifest(path, tuple(out), man.get("doc", ""), man.get("ticket_set") or
                    man.get("doc", ""), T, man.get("schedule"))
