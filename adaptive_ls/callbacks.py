"""The run's Lightning callbacks besides checkpoints and diagnostics: per-epoch history, the NaN guard, the stop on
SIGTERM/SIGINT, W&B media.

Each is built from ``conf/callbacks/<name>.yaml``. They talk to the module and to each other through types:
:class:`PeriodicMetrics` for a callback that measures only in some epochs, the module's ``TrainingStepOutput`` for
what a training step hands them. A callback whose class sets ``per_member = True`` runs per member in a stack of jobs
(``hydra/launcher=stacked``), seeing that member's view of the trainer and module (adaptive_ls.stacked_run).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from adaptive_ls.data import KnownNoise
from adaptive_ls.errors import JobInterrupted, NonFiniteLossError  # noqa: F401 (raised here)

log = logging.getLogger(__name__)


class PeriodicMetrics(pl.Callback):
    """A callback that logs metrics named ``<metric_prefix>...`` in some epochs only (``last_logged_epoch`` says
    which was the latest): :class:`EpochHistory` records them only in the epochs they were measured."""

    metric_prefix: str = ""

    def __init__(self):
        super().__init__()
        self.last_logged_epoch = -1


class EpochHistory(pl.Callback):
    """Keeps every epoch's logged metrics (train, val, ε, diagnostics) for results.json and the sweep report.

    Recorded at the end of each training epoch (validation has run, the epoch's aggregates are computed) and before
    that epoch's checkpoint is written, so a resumed run carries its whole history. Lightning's callback_metrics keep
    a key's last value across epochs; a row holds only what was measured in its epoch: ``val/`` keys when validation
    ran, and a :class:`PeriodicMetrics` callback's keys when it measured.
    """

    per_member = True  # in a stack, one per member (adaptive_ls.stacked_run.PerMember)

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self._validated_epoch = -1

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validated_epoch = trainer.current_epoch

    def _stale_prefixes(self, trainer) -> tuple[str, ...]:
        stale = [] if self._validated_epoch == trainer.current_epoch else ["val/"]
        stale += [cb.metric_prefix for cb in trainer.callbacks
                  if isinstance(cb, PeriodicMetrics) and cb.last_logged_epoch != trainer.current_epoch]
        return ("test/", *stale)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or (self.history and self.history[-1]["epoch"] >= trainer.current_epoch):
            return
        stale = self._stale_prefixes(trainer)
        row = {"epoch": trainer.current_epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith(stale)})
        self.history.append(row)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict["history"])


class NonFiniteLossGuard(pl.Callback):
    """Stops a run whose training loss became NaN/inf, with an error that says when and what to try.

    Each step updates a flag on the device (the first non-finite batch of the epoch; no host sync). The flag is read
    once per epoch, in ``on_train_epoch_end`` before the epoch's checkpoint is written, so ``last.ckpt`` keeps the
    last finite weights. The price of the once-per-epoch check: the rest of a diverged epoch (and its validation)
    runs in vain. Under DDP the flags are combined over all processes, so all of them stop together.
    """

    per_member = True  # in a stack a member whose loss turns NaN/inf fails alone
    NONE = torch.iinfo(torch.long).max  # no non-finite batch yet: the identity of the "min" that combines processes

    def __init__(self):
        self._first_bad: Optional[torch.Tensor] = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._first_bad = torch.full((), self.NONE, dtype=torch.long, device=pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._first_bad is None or outputs is None:
            return
        bad = ~torch.isfinite(outputs["loss"].detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad == self.NONE), batch_idx, self._first_bad)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._first_bad is None:
            return
        # the earliest bad batch of any process (one device: the flag itself); the one host sync, once per epoch
        batch = int(trainer.strategy.reduce(self._first_bad, reduce_op="min"))
        if batch != self.NONE:
            peak = sorted({g.get("initial_lr", g["lr"]) for opt in trainer.optimizers for g in opt.param_groups})
            kept = "; checkpoints/last.ckpt holds the last finite epoch" if trainer.current_epoch > 0 else ""
            raise NonFiniteLossError(
                f"non-finite training loss (NaN/inf) at epoch {trainer.current_epoch}, batch {batch}: training "
                f"diverged. Lower the learning rate (optimizer.lr={', '.join(f'{lr:g}' for lr in peak)}) or check "
                f"the smoothing settings (a large negative eps makes the loss unbounded below){kept}")


def requeue_signal() -> Optional[signal.Signals]:
    """The signal submitit checkpoints and requeues a job on (USR2 unless ``SUBMITIT_PREEMPT_SIGNAL`` says
    otherwise) when this process is a submitit job; None otherwise."""
    if not os.environ.get("SUBMITIT_FOLDER"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


class StopOnSignal(pl.Callback):
    """Turns SIGTERM (SLURM's preemption and time limit, ``kill``) and SIGINT (Ctrl-C) into a clean stop at the next
    training step: :class:`JobInterrupted` is raised there, the job records it and exits with 128 + the signal.

    No checkpoint is written on the way out: ``checkpoints/last.ckpt`` from the end of the last finished epoch is
    what the job continues from when run again (a mid-epoch checkpoint would not resume exactly with the package's
    loaders). The continuation redoes the interrupted epoch, and since data order and augmentation are seeded per
    epoch, it ends with exactly the numbers of an uninterrupted run. A second signal stops at once.

    The handlers live for the fit only, in the main thread: installed in ``on_train_start`` (after Lightning's own
    SIGTERM handler, which would end the job with status 0) and the previous ones put back when the fit ends. The
    flag is a host-side value, read at each step without a device sync; under DDP it is combined over the processes
    once per epoch, at its start, so that all of them stop together. Under submitit, SIGTERM is left to submitit
    (it ignores it and requeues on its own signal, USR2): that signal stops the job as ``preempted`` and hands it to
    submitit, which requeues it.
    """

    def __init__(self):
        self._previous: dict[signal.Signals, Any] = {}
        self._received: Optional[int] = None
        self._distributed = False

    def _signals(self) -> tuple[signal.Signals, ...]:
        requeue = requeue_signal()
        return (signal.SIGINT, requeue) if requeue is not None else (signal.SIGTERM, signal.SIGINT)

    def on_fit_start(self, trainer, pl_module):
        # before Lightning registers its handlers: these are the ones to put back
        self._received, self._distributed = None, trainer.world_size > 1
        self._previous = {s: signal.getsignal(s) for s in {*self._signals(), signal.SIGTERM}}

    def on_train_start(self, trainer, pl_module):
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self._signals():
            signal.signal(signum, self._on_signal)
        if requeue_signal() is not None and self._previous.get(signal.SIGTERM) is not None:
            signal.signal(signal.SIGTERM, self._previous[signal.SIGTERM])  # submitit's, not Lightning's

    def _on_signal(self, signum, frame) -> None:
        if self._received is not None:
            raise self._interrupted()
        self._received = signum
        log.warning("received %s: stopping at the next training step (the last finished epoch's checkpoint is "
                    "kept); send it again to stop now", signal.Signals(signum).name)

    def _interrupted(self) -> JobInterrupted:
        requeue = self._previous.get(self._received) if self._received == requeue_signal() else None
        return JobInterrupted(self._received, requeue if callable(requeue) else None)

    def _check(self) -> None:
        if self._received is not None and not self._distributed:
            raise self._interrupted()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._check()

    def on_train_epoch_start(self, trainer, pl_module):
        if self._distributed:  # any process signalled stops all of them; one host sync per epoch
            flag = torch.tensor(self._received or 0, device=pl_module.device)
            received = int(trainer.strategy.reduce(flag, reduce_op="max"))
            if received:
                self._received = received
                raise self._interrupted()

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                if handler is not None:
                    signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer, pl_module, exception):
        self._restore()

    def on_fit_end(self, trainer, pl_module):
        if self._received is not None:
            log.warning("%s came after the last training step: the job finishes as usual",
                        signal.Signals(self._received).name)
        self._restore()


class WandbMedia(pl.Callback):
    """Logs the noisy labels' transition matrix (a table and a heatmap) and the test reliability diagram of the final
    weights to the trainer's W&B loggers, from the data module and the module in memory; also saves both as PNGs in
    ``save_dir`` (the job's folder). Does nothing without a W&B logger."""

    per_member = True  # in a stack, each member's media to its own W&B run

    def __init__(self, save_dir: Optional[str] = None):
        self.save_dir = Path(save_dir) if save_dir else None
        self._logged = False

    def on_test_end(self, trainer, pl_module):
        from pytorch_lightning.loggers import WandbLogger

        runs = [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger) and trainer.is_global_zero]
        data, bins = trainer.datamodule, getattr(pl_module, "test_reliability", None)
        if self._logged or not runs or bins is None or not isinstance(data, KnownNoise):
            return  # once: the final weights are tested first
        import wandb

        from adaptive_ls.plots import class_labels, reliability_diagram, save_figure, transition_figure

        matrix = data.transition_matrix()
        names = class_labels(getattr(data, "class_names", None), matrix.shape[0])
        figures = {"noise/transition_heatmap": (transition_figure(matrix, names), "noise_transition.png"),
                   "test/reliability_diagram": (reliability_diagram({k: v.cpu() for k, v in bins.items()},
                                                                    title="Test reliability"), "reliability.png")}
        media = {"noise/transition_matrix": wandb.Table(
            columns=["true label", *names], data=[[names[i], *map(float, row)] for i, row in enumerate(matrix)])}
        for key, (figure, filename) in figures.items():
            media[key] = wandb.Image(figure)
            if self.save_dir is not None:
                save_figure(figure, self.save_dir / filename)
        for run in runs:
            run.log(media)
        self._logged = True
