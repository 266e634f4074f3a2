"""One training run, as the composed config describes it (``adaptive-ls ...`` or ``python -m adaptive_ls.train ...``).

The composed config is the run's object graph: the data module (which owns the label noise), the LightningModule
(net, policy, optimizer, schedule), the callbacks, the loggers and the Trainer are each built from their group in
``conf/``. :func:`run` builds them, trains, tests the final and the best checkpoint's weights, calibrates post hoc
and writes ``results.json`` (flat metrics and settings), ``noisy_labels.npy``, ``noise_transition.csv`` and
``reliability.json`` into the run's folder. The command line around it is :mod:`adaptive_ls.cli`.

Faults: settings are checked before any data loads (adaptive_ls.config); a folder holding an interrupted run
continues it (adaptive_ls.resume); a loss that turns NaN/inf stops the run; a failed run is recorded in its
results.json and a sweep goes on.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.calibration import calibrate
from adaptive_ls.callbacks import EpochHistory
from adaptive_ls.config import build_run, instantiate_group
from adaptive_ls.job import Job
from adaptive_ls.jsonio import write_json
from adaptive_ls.resume import RunState

log = logging.getLogger(__name__)

# The history's keys that results.json also holds flat, at their last measured value (and every diag/ key).
RESULT_METRICS = ("val/acc", "val/nll", "val/acc_best", "train/loss", "train/acc")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test once as ``cfg`` says; returns (and writes) the results dictionary. The entry point
    (:mod:`adaptive_ls.cli`) holds the folder's lock around it."""
    datamodule, module = build_run(cfg)  # every check that needs no data: fails in the first second
    callbacks = instantiate_callbacks(cfg)
    job = Job(cfg, datamodule)  # refuses a folder that holds another run; starts the loggers
    with job.ending_on_error():
        job.load()
        run_state = RunState(OmegaConf.to_container(cfg, resolve=True), job.results["noise/labels_hash"])
        # Under DDP every process evaluates the whole val/test set (identical metrics; torchmetrics states are
        # synced): Lightning's advice to sync epoch-level logs does not apply.
        warnings.filterwarnings("ignore", message=r".*self.log\(.*sync_dist=True\).*distributed setting")
        trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, run_state],
                                                      logger=job.loggers or False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=job.plan.checkpoint if job.plan else None)

        job.results.update(fit_results(trainer.callbacks, trainer.world_size, trainer.precision))
        if trainer.world_size > 1:
            job.results["ddp/labels_hash_per_rank"] = run_state.labels_hash_per_rank
        job.results.update(test_results(trainer, module, datamodule, cfg.get("test_best", True),
                                        job.output_dir if job.writes else None))
    return job.complete()


def instantiate_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``conf/callbacks`` built in order (hooks run in this order), the history after the others and Lightning's
    checkpoints after it. A progress bar is left out when ``trainer.enable_progress_bar=false``: Lightning refuses
    one it was told not to show."""
    from pytorch_lightning.callbacks import ProgressBar

    callbacks = list(instantiate_group(cfg, "callbacks").values())
    callbacks.sort(key=lambda cb: isinstance(cb, EpochHistory))  # last: it records what the others logged
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [cb for cb in callbacks if not isinstance(cb, ProgressBar)]
    return callbacks


def fit_results(callbacks: list[pl.Callback], world_size: int = 1, precision: str = "32-true") -> dict[str, Any]:
    """The history of every epoch, each result metric's last measured value, the precision the job trained in (a
    per-machine default: the report shows it where the rows differ), and the last checkpoint, from the job's
    callbacks."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    history = next((cb.history for cb in callbacks if isinstance(cb, EpochHistory)), [])
    last = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor is None]  # "best": the latest
    return {**history_results(history), "world_size": world_size, "precision": str(precision),
            "checkpoint/last": last[0].best_model_path if last else ""}


def history_results(history: list[dict[str, float]]) -> dict[str, Any]:
    """The history of every epoch and each result metric's (and every diag/ key's) last measured value."""
    latest = {k: v for row in history for k, v in row.items()}
    results = {k: v for k, v in latest.items() if k in RESULT_METRICS or k.startswith("diag/")}
    return {**results, "history": history}


def test_results(trainer: pl.Trainer, module, datamodule, test_best: bool,
                 output_dir: Optional[Path]) -> dict[str, Any]:
    """Test metrics of the final weights, with temperature scaling fitted on the validation split, and the test
    accuracy of the best checkpoint by the monitored metric; writes reliability.json into ``output_dir``."""
    tested = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    calibration, reliability = calibrate(trainer, module, datamodule), module.test_reliability
    best = best_checkpoint(trainer.callbacks) if test_best else None
    tested_best = None
    if best is not None:
        tested_best = trainer.test(module, datamodule=datamodule, ckpt_path=best.best_model_path, verbose=False)[0]
    return test_record(tested, calibration, reliability, best, tested_best, output_dir)


def best_checkpoint(callbacks: list[pl.Callback]):
    """The job's checkpoint callback with a monitor, once it has saved a best checkpoint (else None)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    best = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor is not None]
    return best[0] if best and best[0].best_model_path else None


def test_record(tested: dict, calibration: dict, reliability: Optional[dict], best, tested_best: Optional[dict],
                output_dir: Optional[Path]) -> dict[str, Any]:
    """What results.json holds of a job's tests (a single run's or a stack member's): the final weights' test
    metrics and calibration, the best checkpoint's test accuracy; reliability.json into ``output_dir``."""
    results = {k: float(v) for k, v in tested.items()}
    results.update(calibration)
    if reliability is not None and output_dir is not None:
        write_json(output_dir / "reliability.json", {k: v.tolist() for k, v in reliability.items()})
    results["test/acc_at_best_val"] = results["test/acc"]
    if tested_best is not None:
        results.update({"test/acc_at_best_val": float(tested_best["test/acc"]), "checkpoint/best": best.best_model_path,
                        "checkpoint/monitor": best.monitor})
    return results


if __name__ == "__main__":  # python -m adaptive_ls.train is the entry point too
    from adaptive_ls.cli import entry

    entry()
