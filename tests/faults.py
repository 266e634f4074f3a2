"""Faults to inject into a run through its config: ``+callbacks.crash._target_=tests.faults.CrashAt ...``."""
from __future__ import annotations

import pytorch_lightning as pl


class Crash(RuntimeError):
    """Stands for whatever stops a job: a node failure, a pre-emption, a kill."""


class CrashAt(pl.Callback):
    """Raise at the start of training batch ``batch`` of epoch ``epoch``: the run stops mid-epoch, as a killed job
    does, with its last checkpoint from the end of the previous epoch."""

    def __init__(self, epoch: int, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Crash(f"injected crash at epoch {self.epoch}, batch {self.batch}")
