"""A policy, a noise kind and a callback as a user would add them: one class each, nothing else in the package."""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl

from adaptive_ls.noise import NoiseKind
from adaptive_ls.smoothing import SmoothingPolicy, SmoothingTarget


class HalvedEps(SmoothingPolicy):
    """A constant ε of half the setting."""

    def __init__(self, eps: float = 0.2):
        super().__init__()
        self.eps = eps

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(eps=self.eps / 2)


class EveryNth(NoiseKind):
    """Every ``step``-th training label moves to the next class."""

    def __init__(self, step: int = 4):
        self.step = step

    def apply(self, clean, images, num_classes, seed):
        noisy = clean.copy()
        noisy[:: self.step] = (noisy[:: self.step] + 1) % num_classes
        return noisy.astype(np.int64), noisy != clean


class EpochCounter(pl.Callback):
    """Logs ``toy/epochs``, the epochs seen so far plus ``offset``."""

    def __init__(self, offset: int = 0):
        self.offset, self.seen = offset, 0

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen += 1
        pl_module.log("toy/epochs", float(self.seen + self.offset))
