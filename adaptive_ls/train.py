"""Training entry point: ``adaptive-ls [group=option ...] [key=value ...]`` (same as ``python -m adaptive_ls.train``).

The composed config is the run's object graph: the data module (which owns the label noise), the LightningModule
(net, policy, optimizer, schedule), the callbacks, the loggers and the Trainer are each built from their group in
``conf/``. :func:`run` builds them, trains, tests the final and the best checkpoint's weights, calibrates post hoc
and writes ``results.json`` (flat metrics and settings), ``noisy_labels.npy``, ``noise_transition.csv`` and
``reliability.json`` into the run's folder. ``main`` returns the validation metric a Hydra sweeper optimises.

Faults: settings are checked before any data loads (adaptive_ls.config); a folder holding an interrupted run
continues it (adaptive_ls.resume); a loss that turns NaN/inf stops the run; a failed run is recorded in its
results.json and a sweep goes on.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.calibration import calibrate
from adaptive_ls.callbacks import EpochHistory, NonFiniteLossError
from adaptive_ls.config import (
    ConfigError,
    OutputDirError,
    RunCompleted,
    build_run,
    choice_name,
    config_errors,
    group_settings,
    instantiate_group,
)
from adaptive_ls.jsonio import update_json, write_json
from adaptive_ls.loggers import finishing
from adaptive_ls.noise import label_hash
from adaptive_ls.resume import RunState, check_resumed_labels, keep_previous_logs, plan_resume
from adaptive_ls.sweeps import is_global_zero, is_multirun, sweeper_marks_failures

log = logging.getLogger(__name__)

# The history's keys that results.json also holds flat, at their last measured value (and every diag/ key).
RESULT_METRICS = ("val/acc", "val/nll", "val/acc_best", "train/loss", "train/acc")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test once as ``cfg`` says; returns (and writes) the results dictionary."""
    from contextlib import nullcontext

    from adaptive_ls.run_lock import run_lock

    start = time.time()
    datamodule, module = build_run(cfg)  # every check that needs no data: fails in the first second
    output_dir, writes = Path(cfg.paths.output_dir), is_global_zero()
    with run_lock(output_dir) if writes else nullcontext():  # one live process per folder: a second is refused
        plan = plan_resume(cfg)  # None: a fresh run; refuses a folder that holds another run
        results: dict[str, Any] = {
            "status": "running", "seed": cfg.seed, "noise_seed": cfg.noise_seed, "output_dir": str(output_dir),
            "smoothing": choice_name(cfg, "smoothing"), **group_settings(cfg, "smoothing"),
            "noise": choice_name(cfg, "noise"), **group_settings(cfg, "noise"),
            "data": type(datamodule).__name__, "model": cfg.model._target_.rsplit(".", 1)[-1]}
        callbacks = instantiate_callbacks(cfg)
        loggers = list(instantiate_group(cfg, "logger").values())  # a W&B run starts here: later failures show up
        if plan is not None and writes:
            keep_previous_logs(loggers, plan.epoch)
        with finishing(loggers, results, output_dir / "results.json"):
            for logger in loggers:
                logger.log_hyperparams(job_config(cfg))
            with config_errors("data", cfg):  # the checks that need the data: present, intact, label file, splits
                datamodule.setup("fit")
            results.update(noise_summary(datamodule))
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
    """The history of every epoch, each result metric's last measured value, and the last checkpoint."""
    history = next((cb.history for cb in trainer.callbacks if isinstance(cb, EpochHistory)), [])
    latest = {k: v for row in history for k, v in row.items()}
    results = {k: v for k, v in latest.items() if k in RESULT_METRICS or k.startswith("diag/")}
    last = [cb for cb in trainer.checkpoint_callbacks if cb.monitor is None]  # with no monitor, "best" is the latest
    results.update({"history": history, "world_size": trainer.world_size,
                    "checkpoint/last": last[0].best_model_path if last else ""})
    return results


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


# adaptive_ls/conf: in a checkout a link to the top-level conf/, in a wheel a copy. Absolute, so the console
# script finds it from any folder.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the run failed in its results.json (keeping what it had measured) so a sweep report can name it; a run
    a signal stopped is marked ``interrupted`` (``preempted`` under submitit), with the signal and how to continue.

    Not for an OutputDirError: that folder belongs to another run, and its results.json stays as it is."""
    from hydra.core.hydra_config import HydraConfig

    from adaptive_ls.callbacks import JobInterrupted
    from adaptive_ls.sweeps import continue_command

    if isinstance(error, OutputDirError) or not is_global_zero():
        return
    record = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    if isinstance(error, JobInterrupted):  # resumable: say how
        how = ("submitit requeues it" if error.requeue is not None else
               f"run the same command again ({continue_command()})" if HydraConfig.initialized() else "run it again")
        record = {"status": error.status, "signal": error.signal.name,
                  "error": f"JobInterrupted: stopped by {error.signal.name}; {how} to continue from "
                           f"checkpoints/last.ckpt (the last finished epoch)"}
    update_json(Path(cfg.paths.output_dir) / "results.json",
                {**record, "seed": cfg.get("seed"), "noise_seed": cfg.get("noise_seed")})


# Failures with a message that says what to do: shown as one line (no traceback unless HYDRA_FULL_ERROR=1).
EXPECTED_FAILURES = {ConfigError: 2, NonFiniteLossError: 1}  # exception -> exit code


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """Run once and return the metric a sweeper optimises; a failure is handled by :func:`handle_failure` (a grid
    sweep goes on past it with NaN; an Optuna study sees a failed trial). A signal stops the job and the sweep."""
    import signal

    from adaptive_ls.callbacks import JobInterrupted

    try:
        results = run(cfg)
    except JobInterrupted as interrupted:
        return handle_failure(cfg, interrupted, multirun=is_multirun())
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading the data, say)
        return handle_failure(cfg, JobInterrupted(signal.SIGINT), multirun=is_multirun())
    except Exception as error:
        if is_multirun() and sweeper_marks_failures():  # Optuna: a raised error fails the trial, a NaN the study
            record_failure(cfg, error)
            raise
        return handle_failure(cfg, error, multirun=is_multirun())
    return results.get(cfg.get("optimized_metric", "val/acc_best"))


def handle_failure(cfg: DictConfig, error: BaseException, multirun: bool) -> float:
    """Record a failed job in its results.json; in a multirun log it and return NaN so the sweep goes on.

    A job a signal stopped (:class:`~adaptive_ls.callbacks.JobInterrupted`) exits with 128 + the signal (143, 130),
    a sweep with it, after one line naming the jobs done and the command that continues; under submitit, a job
    stopped by its requeue signal is handed back to submitit, which requeues it.

    A job whose folder holds a completed run (a sweep run again with the same hydra.sweep.dir to finish what is
    left) returns that run's metric. Outside a multirun: a bad setting exits with code 2 and one line
    ``error: ...`` on stderr, a diverged run with code 1 and one line, anything else raises (Hydra prints a trimmed
    traceback); ``HYDRA_FULL_ERROR=1`` shows the full traceback for all of them.
    """
    from adaptive_ls.callbacks import JobInterrupted
    from adaptive_ls.sweeps import stop_summary

    record_failure(cfg, error)
    if isinstance(error, JobInterrupted):
        line = (f"job preempted by {error.signal.name}: submitit requeues it, to continue from "
                f"{cfg.paths.output_dir}/checkpoints/last.ckpt" if error.requeue is not None
                else stop_summary(error.signal.name, error.status))
        if is_global_zero():
            log.warning(line)
            print(line, file=sys.stderr)
        if error.requeue is not None:
            try:
                error.requeue(int(error.signal), None)  # checkpoints the submission, requeues it, exits
            except Exception:  # submitit gave up on it (timed out too often): the job stays resumable by hand
                record_failure(cfg, JobInterrupted(error.signal))
                raise
        raise SystemExit(error.exit_code) from None
    expected = next((code for kind, code in EXPECTED_FAILURES.items() if isinstance(error, kind)), None)
    if multirun:
        if isinstance(error, RunCompleted):
            log.info("job already completed in %s: its results stand", cfg.paths.output_dir)
            return error.results.get(cfg.get("optimized_metric", "val/acc_best"), math.nan)
        where = "" if isinstance(error, OutputDirError) else f" (recorded in {cfg.paths.output_dir}/results.json)"
        if expected is None:
            log.error("job failed%s; the sweep goes on", where, exc_info=error)
        else:
            log.error("job failed%s: %s; the sweep goes on", where, error)
        return math.nan
    if expected is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(expected) from None


if __name__ == "__main__":
    main()
