"""Early-bird detection from pruning masks (docs/design.md, step 3).

Masks are 0/1 vectors (1 = pruned channel) of one architecture's pruning groups, in the
dependency graph's order. The early-bird (EB) epoch is the first epoch whose mask lies within
``threshold`` normalised Hamming distance of every other mask in a FIFO of the last ``window``
masks; a distance equal to the threshold is accepted (d <= threshold), as in the authors' release
and the 2020 Early-Bird Tickets code. The offline script and the online detector in training use this one class.
"""
from collections import deque

import numpy as np


class MaskMismatch(ValueError):
    pass


def hamming(a, b):
    """Normalised Hamming distance mean(a != b) of two equal-length 0/1 masks."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise MaskMismatch(f"masks of different lengths ({a.size} vs {b.size} entries): "
                           f"they come from different architectures")
    return float(np.mean(a != b))


class EarlyBirdDetector:
    """FIFO early-bird rule. push(epoch, mask) -> distances to the other masks in the window."""

    def __init__(self, window, threshold):
        if window < 2:
            raise ValueError("window must be at least 2")
        self.window, self.threshold = window, threshold
        self.queue = deque(maxlen=window)
        self.eb_epoch = None
        self.history = []  # (epoch, max distance to the window, distances)

    def push(self, epoch, mask):
        mask = np.asarray(mask)
        if self.queue and self.queue[0][1].shape != mask.shape:
            raise MaskMismatch(f"epoch {epoch}: mask has {mask.size} entries, earlier masks "
                               f"have {self.queue[0][1].size}")
        self.queue.append((epoch, mask))
        dists = [hamming(mask, m) for _, m in list(self.queue)[:-1]]
        max_d = max(dists) if dists else None
        self.history.append((epoch, max_d, dists))
        if (self.eb_epoch is None and len(self.queue) == self.window
                and max_d <= self.threshold):
            self.eb_epoch = epoch
        return dists

    @property
    def found(self):
        return self.eb_epoch is not None


def find_earlybird(masks, window, threshold):
    """masks: list of (epoch, mask) in epoch order -> (eb_epoch or None, detector)."""
    det = EarlyBirdDetector(window, threshold)
    for epoch, mask in masks:
        det.push(epoch, mask)
        if det.found:
            break
    return det.eb_epoch, det


def overlap_matrix(masks):
    """masks: list of equal-length masks -> [E, E] matrix of 1 - Hamming distance."""
    m = np.stack([np.asarray(x, dtype=np.uint8) for x in masks]) if masks else np.zeros((0, 0))
    if len(masks) and len({np.asarray(x).shape for x in masks}) != 1:
        raise MaskMismatch("masks of different lengths cannot be compared")
    n = len(masks)
    out = np.ones((n, n))
    for i in range(n):
        out[i] = 1.0 - np.mean(m[i][None, :] != m, axis=1)
    return out
