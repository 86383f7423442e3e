"""The early-bird test run during dense training (docs/design.md, step 3, beyond the paper).

After each epoch the masks of the configured ratios are computed from the same weights the
offline pruner reads (EMA or raw, ``pruning.use_ema``), saved where
``earlybird_scripts/prune.py`` saves them, fed to one FIFO detector per ratio, and logged to
TensorBoard and ``{exp}/logs/{doc}/earlybird.json``.
"""
import os

import numpy as np

from models.earlybird import EarlyBirdDetector
from core.layout import ratio_key
from models.pruner_names import needs_gradients
from models.pruning import MaskExtractor
from runners.masks import compute_masks, mask_meta, pruning_inputs, save_mask
from runners.pruning import save_ticket
from utils.io import atomic_write_json


class OnlineEarlyBird:
    def __init__(self, cfg, model_args, *, layout, doc, dataset, device="cpu"):
        e = cfg.earlybird
        self.cfg, self.layout, self.doc = cfg, layout, doc
        self.ratios = list(e.ratios)
        self.pruner = e.pruner
        self.window, self.threshold = e.window, e.threshold
        # gradient-based importance runs forward + backward passes, on the training device: one
        # pass of the CIFAR-10 UNet at batch 128 took 8.4 s on an H200 box's CPU, against a 30 s
        # epoch on its GPU. Magnitude reads weights only and stays on the CPU.
        where = device if needs_gradients(self.pruner) else "cpu"
        self.extractor = MaskExtractor(model_args, device=where,
                                       round_to=cfg.pruning.round_to,
                                       depth_scale=cfg.pruning.depth_scale)
        self.diffusion, self.data = pruning_inputs(cfg, self.pruner, dataset, where)
        self.detectors = {r: EarlyBirdDetector(self.window, self.threshold) for r in self.ratios}

    def restore(self, start_epoch):
        """On resume: replay the saved masks of epochs before ``start_epoch``."""
        for r in self.ratios:
            for epoch in range(start_epoch):
                f = self.layout.mask_file(self.doc, r, self.pruner, epoch)
                if os.path.isfile(f):
                    self.detectors[r].push(epoch, np.load(f))

    def update(self, epoch, model, log, save_tickets=False):
        """Masks of ``epoch``; with ``save_tickets`` (its weights are not kept on disk), the
        ticket of every ratio whose early bird is this epoch is pruned and saved now."""
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        masks, info = compute_masks(self.extractor, sd, self.pruner, self.ratios,
                                    pruning=self.cfg.pruning, diffusion=self.diffusion,
                                    data=self.data)
        for r, mask in masks.items():
            meta = mask_meta(self.extractor, mask, ratio=r, pruner=self.pruner, epoch=epoch,
                             source="online", use_ema=self.cfg.pruning.use_ema, info=info)
            save_mask(self.layout.mask_file(self.doc, r, self.pruner, epoch), mask, meta)
            det = self.detectors[r]
            was_found = det.found
            dists = det.push(epoch, mask)
            if dists:
                log.scalars({f"earlybird/max_distance_{ratio_key(r)}": max(dists)}, epoch)
            if det.found and not was_found:
                log.info(f"early-bird ticket at ratio {r:g}: epoch {det.eb_epoch}")
                if save_tickets:
                    save_ticket(self.extractor, sd, mask, model_args=self.extractor.model_args,
                                cfg=self.cfg, meta=meta,
                                out_path=self.layout.ticket_file(self.doc, r, self.pruner,
                                                                 epoch),
                                log=log.info)
        self._write()
        return all(d.found for d in self.detectors.values())

    def last_distances(self):
        """{ratio: max distance of the newest mask to its window} (None while it fills)."""
        return {r: (d.history[-1][1] if d.history else None) for r, d in self.detectors.items()}

    def _write(self):
        out = {"pruner": self.pruner, "window": self.window, "threshold": self.threshold,
               "ratios": {}}
        for r, d in self.detectors.items():
            out["ratios"][ratio_key(r)] = {
                "eb_epoch": d.eb_epoch,
                "max_distance": {str(e): m for e, m, _ in d.history},
            }
        atomic_write_json(self.layout.earlybird_record(self.doc), out)
