"""The early-bird test run during dense training (DESIGN.md step 3, "beyond the paper").

After each epoch the masks of the configured ratios are computed from the same weights the
offline pruner would read (EMA or raw, ``pruning.use_ema``), saved where
``earlybird_scripts/prune.py`` saves them, fed to one FIFO detector per ratio, and logged to
TensorBoard and ``{exp}/logs/{doc}/earlybird.json``.
"""
import json
import os

import numpy as np

from models.earlybird import EarlyBirdDetector
from models.pruning import MaskExtractor, canonical_pruner
from runners.checkpoint import atomic_write_text
from runners.masks import compute_masks, mask_stem, save_mask, taylor_batch


class OnlineEarlyBird:
    def __init__(self, cfg, model_args, dirs, doc, diffusion, dataset, device):
        e = cfg["earlybird"]
        self.cfg, self.dirs, self.doc = cfg, dirs, doc
        self.ratios = [float(r) for r in e["ratios"]]
        self.pruner = canonical_pruner(e["pruner"])
        self.window, self.threshold = e["window"], e["threshold"]
        self.extractor = MaskExtractor(model_args, device="cpu")
        self.diffusion = diffusion
        self.data = None
        if self.pruner in ("taylor", "diff-pruning"):
            from models.diffusion import Diffusion
            self.diffusion = Diffusion(cfg["diffusion"], "cpu")
            self.data = taylor_batch(dataset, cfg["pruning"]["taylor_batch_size"])
        self.detectors = {r: EarlyBirdDetector(self.window, self.threshold) for r in self.ratios}
        self.path = os.path.join(dirs["log"], "earlybird.json")

    def restore(self, start_epoch):
        """On resume: replay the saved masks of epochs before ``start_epoch``."""
        for r in self.ratios:
            for epoch in range(start_epoch):
                f = os.path.join(self.dirs["masks"],
                                 mask_stem(self.doc, r, self.pruner, epoch) + ".npy")
                if os.path.isfile(f):
                    self.detectors[r].push(epoch, np.load(f))

    def update(self, epoch, model, log):
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        masks = compute_masks(self.extractor, sd, self.pruner, self.ratios, cfg=self.cfg,
                              diffusion=self.diffusion, data=self.data)
        for r, mask in masks.items():
            stem = mask_stem(self.doc, r, self.pruner, epoch)
            save_mask(self.dirs["masks"], stem, mask, {
                "ratio": r, "pruner": self.pruner, "epoch": epoch, "source": "online",
                "use_ema": self.cfg["pruning"]["use_ema"],
                "group_sizes": [c for _, c, _ in self.extractor.layout]})
            det = self.detectors[r]
            was_found = det.found
            dists = det.push(epoch, mask)
            if dists:
                log.scalars({f"earlybird/max_distance_{r:g}": max(dists)}, epoch)
            if det.found and not was_found:
                log.info(f"early-bird ticket at ratio {r:g}: epoch {det.eb_epoch}")
        self._write()
        return all(d.found for d in self.detectors.values())

    def _write(self):
        out = {"pruner": self.pruner, "window": self.window, "threshold": self.threshold,
               "ratios": {}}
        for r, d in self.detectors.items():
            out["ratios"][f"{r:g}"] = {
                "eb_epoch": d.eb_epoch,
                "max_distance": {str(e): m for e, m, _ in d.history},
            }
        atomic_write_text(self.path, json.dumps(out, indent=1))
