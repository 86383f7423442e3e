"""The pipeline's resolved config: the user's config and overrides, plus what the pipeline
decides once before any stage runs. Written to {exp}/pipeline/{doc}.yml; every stage and every
command the pipeline starts reads that file, so no stage re-derives a setting."""
import os
from dataclasses import replace

from core.config import dump_config, load_config
from core.regions import require_regions
from datasets import DIGIT_SETS
from utils.errors import UserError


def resolve(base, source):
    """Settings ``base`` (config + overrides, from ``source``) as the pipeline runs them:
    online masks for every pipeline ratio (dense training never stops early for them), a ticket
    whose masks never settle drawn at the last epoch, fine-tunes of taeb.finetune_epochs (to a
    target: up to target.max_epochs), dense training up to target.plateau_max_epochs when it
    runs to a plateau, and taeb.regions: auto planned."""
    t = base.target
    if t.enabled and base.data.dataset not in DIGIT_SETS:
        raise UserError("target.enabled: the target is scored with the digits metric; "
                        "other data sets fine-tune for fixed epochs (target.enabled: false)")
    regions = () if base.taeb.auto and not base.taeb.regions else \
        require_regions(base, source)
    training = replace(base.training, n_epochs=t.plateau_max_epochs) \
        if t.enabled and t.plateau_patience else base.training
    cfg = replace(base, training=training,
                  taeb=replace(base.taeb, regions=regions, auto=False,
                               finetune_epochs=t.max_epochs if t.enabled else
                               base.taeb.finetune_epochs),
                  pipeline=replace(base.pipeline, plan=base.pipeline.plan or base.taeb.auto))
    return replace(cfg, earlybird=replace(cfg.earlybird, enabled=True, stop=False,
                                          fallback="last", ratios=cfg.pruning_ratios()))


def write_pipeline_config(config, overrides, path):
    """Resolve ``config`` with ``overrides`` and write it to ``path``; returns the Settings."""
    cfg = resolve(load_config(config, overrides), config)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    dump_config(cfg, path)
    return cfg
