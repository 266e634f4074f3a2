"""A policy, a noise kind and a callback as a user would add them: one class each, nothing else in the package."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

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


class FailsInTestsOf(pl.Callback):
    """Fails the tests of the job in ``folder`` when the folder is named ``job`` (as a full disk would)."""

    per_member = True  # in a stack: one per member (each built from its own job's config)

    def __init__(self, folder: str, job: str):
        self.fails = Path(folder).name == str(job)

    def on_test_start(self, trainer, pl_module):
        if self.fails:
            raise RuntimeError("no memory left for the test")


class MemberEpochs(pl.Callback):
    """Logs ``toy/epochs``, the epochs seen so far plus ``offset``, and stops the job after ``stop_after`` epochs
    (none: never). It declares ``per_member``: in a stack each job has its own, seeing only its own job."""

    per_member = True

    def __init__(self, offset: int = 0, stop_after: Optional[int] = None):
        self.offset, self.stop_after, self.seen = offset, stop_after, 0

    def on_train_epoch_end(self, trainer, pl_module):
        self.seen += 1
        pl_module.log("toy/epochs", float(self.seen + self.offset))
        if self.stop_after is not None and self.seen >= self.stop_after:
            trainer.should_stop = True
