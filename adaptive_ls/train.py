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
import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.calibration import calibrate
from adaptive_ls.callbacks import EpochHistory
from adaptive_ls.config import (
    build_run,
    choice_name,
    config_errors,
    group_settings,
    instantiate_group,
    noise_kind_name,
)
from adaptive_ls.jsonio import write_json
from adaptive_ls.loggers import finishing
from adaptive_ls.noise import label_hash
from adaptive_ls.resume import RunState, check_resumed_labels, keep_previous_logs, plan_resume
from adaptive_ls.sweeps import is_global_zero

log = logging.getLogger(__name__)

# The history's keys that results.json also holds flat, at their last measured value (and every diag/ key).
RESULT_METRICS = ("val/acc", "val/nll", "val/acc_best", "train/loss", "train/acc")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test once as ``cfg`` says; returns (and writes) the results dictionary. The entry point
    (:mod:`adaptive_ls.cli`) holds the folder's lock around it."""
    start = time.time()
    datamodule, module = build_run(cfg)  # every check that needs no data: fails in the first second
    output_dir, writes = Path(cfg.paths.output_dir), is_global_zero()
    plan = plan_resume(cfg)  # None: a fresh run; refuses a folder that holds another run
    results = initial_results(cfg, datamodule)
    callbacks = instantiate_callbacks(cfg)
    loggers = list(instantiate_group(cfg, "logger").values())  # a W&B run starts here: later failures show up
    if plan is not None and writes:
        keep_previous_logs(loggers, plan.epoch)
    with finishing(loggers, results, output_dir / "results.json"):
        for logger in loggers:
            logger.log_hyperparams(job_config(cfg))
        results.update(load_data(cfg, datamodule))
        if plan is not None:
            check_resumed_labels(plan, results["noise/labels_hash"])
            results.update({"resumed_from_epoch": plan.epoch, "checkpoint/resumed_from": str(plan.checkpoint)})
        if writes:
            write_noise_artifacts(output_dir, datamodule)
            write_json(output_dir / "results.json", results)  # status running: a killed job shows up as such

        run_state = RunState(OmegaConf.to_container(cfg, resolve=True), results["noise/labels_hash"])
        # Under DDP every process evaluates the whole val/test set (identical metrics; torchmetrics states are
        # synced): Lightning's advice to sync epoch-level logs does not apply.
        warnings.filterwarnings("ignore", message=r".*self.log\(.*sync_dist=True\).*distributed setting")
        trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[*callbacks, run_state],
                                                      logger=loggers or False)
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint if plan else None)

        results.update(fit_results(trainer))
        if trainer.world_size > 1:
            results["ddp/labels_hash_per_rank"] = run_state.labels_hash_per_rank
        results.update(test_results(trainer, module, datamodule, cfg.get("test_best", True),
                                    output_dir if writes else None))
        results.update(status="completed", wall_time_s=time.time() - start)  # this attempt's time
        if writes:
            write_json(output_dir / "results.json", results)
    log.info("results: test/acc %.4f  test/ece %.4f  test/nll %.4f  (%s)", results.get("test/acc", math.nan),
             results.get("test/ece", math.nan), results.get("test/nll", math.nan), output_dir / "results.json")
    return results


def initial_results(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """What results.json says of a job before it trains: its status (running), seeds, folder and settings."""
    return {
        "status": "running", "seed": cfg.seed, "noise_seed": cfg.noise_seed,
        "output_dir": str(Path(cfg.paths.output_dir)),
        "smoothing": choice_name(cfg, "smoothing"), **group_settings(cfg, "smoothing"),
        "noise": noise_kind_name(cfg), "noise_setting": choice_name(cfg, "noise"), **group_settings(cfg, "noise"),
        "data": type(datamodule).__name__, "model": cfg.model._target_.rsplit(".", 1)[-1]}


def load_data(cfg: DictConfig, datamodule) -> dict[str, Any]:
    """Load the job's data (the checks that need it: present, intact, label file, splits) and summarise its noise."""
    with config_errors("data", cfg):
        datamodule.setup("fit")
    return noise_summary(datamodule)


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


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved job config, plus Hydra's choices, overrides and job number (what a W&B filter wants)."""
    from hydra.core.hydra_config import HydraConfig

    config = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        config["hydra"] = {"choices": OmegaConf.to_container(hydra_cfg.runtime.choices),
                           "overrides": list(hydra_cfg.overrides.task), "job_num": hydra_cfg.job.get("num"),
                           "output_dir": hydra_cfg.runtime.output_dir}
    return config


def noise_summary(datamodule) -> dict[str, Any]:
    """What the noise did: the realised rate, how many labels, and a fingerprint of the noisy labels."""
    noisy = datamodule.noisy_labels.numpy()
    summary = {"noise/realized_rate": datamodule.realized_noise_rate, "noise/labels_hash": label_hash(noisy),
               "noise/num_noisy": int(datamodule.is_noisy.sum())}
    log.info("noise: realised rate %.4f (%d of %d labels), hash %s", summary["noise/realized_rate"],
             summary["noise/num_noisy"], len(noisy), summary["noise/labels_hash"])
    return summary


def write_noise_artifacts(output_dir: Path, datamodule) -> None:
    """The noisy labels the run trains on, and their empirical transition matrix, beside its results."""
    output_dir.mkdir(parents=True, exist_ok=True)
    np.save(output_dir / "noisy_labels.npy", datamodule.noisy_labels.numpy())
    np.savetxt(output_dir / "noise_transition.csv", datamodule.transition_matrix(), delimiter=",", fmt="%.6f")


def fit_results(trainer: pl.Trainer) -> dict[str, Any]:
    """The history of every epoch, each result metric's last measured value, the precision the job trained in (a
    per-machine default: the report shows it where the rows differ), and the last checkpoint."""
    history = next((cb.history for cb in trainer.callbacks if isinstance(cb, EpochHistory)), [])
    last = [cb for cb in trainer.checkpoint_callbacks if cb.monitor is None]  # with no monitor, "best" is the latest
    return {**history_results(history), "world_size": trainer.world_size, "precision": str(trainer.precision),
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
    results = {k: float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    results.update(calibrate(trainer, module, datamodule))
    if module.test_reliability is not None and output_dir is not None:
        write_json(output_dir / "reliability.json", {k: v.tolist() for k, v in module.test_reliability.items()})
    results["test/acc_at_best_val"] = results["test/acc"]
    best = [cb for cb in trainer.checkpoint_callbacks if cb.monitor is not None]
    if test_best and best and best[0].best_model_path:
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best[0].best_model_path, verbose=False)[0]
        results.update({"test/acc_at_best_val": float(tested["test/acc"]), "checkpoint/best": best[0].best_model_path,
                        "checkpoint/monitor": best[0].monitor})
    return results


if __name__ == "__main__":  # python -m adaptive_ls.train is the entry point too
    from adaptive_ls.cli import main

    main()
