"""Training entry point: ``adaptive-ls [group=option ...] [key=value ...]`` (same as ``python -m adaptive_ls.train``).

Composes ``conf/``, builds the data module (which owns the label noise), the backbone, the smoothing policy and the
Lightning Trainer, trains, tests the final and the best-validation weights, and writes into the run's folder:
``results.json`` (flat metrics + settings), ``noisy_labels.npy``, ``noise_transition.csv``, ``reliability.json``
and ``checkpoints/``. ``main`` returns the validation metric a Hydra sweeper optimises.

Faults: the settings are checked before anything heavy runs (adaptive_ls.config); a folder holding an interrupted run
continues it from ``checkpoints/last.ckpt`` (saved every epoch, with the config, label hash and RNG states); a loss
that turns NaN/inf stops the run; a failed run is recorded in its results.json and a sweep goes on.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.config import (
    CHECKPOINT_KEY,
    LAST_CHECKPOINT,
    ConfigError,
    OutputDirError,
    RunCompleted,
    check_resumed_labels,
    config_errors,
    module_options,
    plan_resume,
    validate_config,
)
from adaptive_ls.diagnostics import NoiseDiagnostics
from adaptive_ls import wandb_logging
from adaptive_ls.noise import label_hash
from adaptive_ls.sweeps import is_global_zero, is_multirun, sweeper_marks_failures

log = logging.getLogger(__name__)

RESULT_METRICS = ("test/acc", "test/nll", "test/ece", "test/ece_adaptive", "test/mce", "test/brier",
                  "test/temperature", "test/ts_acc", "test/ts_nll", "test/ts_ece", "test/ts_brier",
                  "val/acc", "val/nll", "val/acc_best", "train/loss", "train/acc")


class EpochHistory(pl.Callback):
    """Keeps every epoch's logged metrics (train, val, ε, diagnostics) for results.json and the sweep report.

    Recorded at the end of each training epoch (validation has run, the epoch's aggregates are computed) and before
    that epoch's checkpoint is written, so a resumed run carries its whole history. Lightning's callback_metrics keep
    a key's last value across epochs; a row holds only what was measured in its epoch: ``val/`` keys when validation
    ran, and the keys of a callback that measures every few epochs (``metric_prefix``, ``last_logged_epoch``, e.g.
    the noise diagnostics) when it measured.
    """

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self._validated_epoch = -1

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._validated_epoch = trainer.current_epoch

    def _stale_prefixes(self, trainer) -> tuple[str, ...]:
        stale = [] if self._validated_epoch == trainer.current_epoch else ["val/"]
        stale += [cb.metric_prefix for cb in trainer.callbacks
                  if hasattr(cb, "metric_prefix") and getattr(cb, "last_logged_epoch", None) != trainer.current_epoch]
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


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run cannot recover by itself."""


class NonFiniteLossGuard(pl.Callback):
    """Stops a run whose training loss became NaN/inf, with an error that says when and what to try.

    Each step updates a flag on the device (the first non-finite batch of the epoch; no host sync). The flag is read
    once per epoch, in ``on_train_epoch_end`` before the epoch's checkpoint is written, so ``last.ckpt`` keeps the
    last finite weights. The price of the once-per-epoch check: the rest of a diverged epoch (and its validation)
    runs in vain. Under DDP the flags are combined over all processes, so all of them stop together.
    """

    NONE = torch.iinfo(torch.long).max  # no non-finite batch yet: the identity of the "min" that combines processes

    def __init__(self):
        self._first_bad: Optional[torch.Tensor] = None

    def on_train_epoch_start(self, trainer, pl_module):
        self._first_bad = torch.full((), self.NONE, dtype=torch.long, device=pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self._first_bad is None or not isinstance(loss, torch.Tensor):
            return
        bad = ~torch.isfinite(loss.detach()).all()
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


class RunState(pl.Callback):
    """What a checkpoint needs beyond Lightning's own to continue a run exactly, and to refuse a wrong one.

    Saves the resolved config and the noisy labels' hash (checked by ``config.plan_resume`` before anything is
    loaded) and the RNG states (so layers that draw from the global generator, e.g. dropout, continue the same
    stream; data order and augmentation are seeded per epoch by the data module).
    """

    def __init__(self, config: dict, labels_hash: str):
        self.config, self.labels_hash = config, labels_hash
        self.labels_hash_per_rank = [labels_hash]

    def on_fit_start(self, trainer, pl_module):
        """Under DDP, check that every process made the same noisy labels (they are drawn from noise_seed alone)."""
        if trainer.world_size > 1:
            import torch.distributed as dist

            self.labels_hash_per_rank = [None] * trainer.world_size
            dist.all_gather_object(self.labels_hash_per_rank, self.labels_hash)
            if len(set(self.labels_hash_per_rank)) > 1:
                raise RuntimeError(f"the processes made different noisy labels (hashes by rank: "
                                   f"{self.labels_hash_per_rank}); they must all use the same noise settings and data")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        name, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: weights_only loading accepts them
        rng = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
               "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint[CHECKPOINT_KEY] = {"config": self.config, "labels_hash": self.labels_hash, "rng": rng}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        rng = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")
        if rng is None or trainer.state.fn != "fit":
            return
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _flatten(prefix: str, settings: dict) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in settings.items()}


def _to_float(value) -> float:
    return float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a crash never leaves half a results.json)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def update_json(path: Path, updates: dict) -> None:
    """Merge ``updates`` into the JSON file at ``path``, keeping its other keys (a missing or unreadable file starts
    empty)."""
    try:
        payload = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        payload = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {**payload, **updates})


def build_callbacks(cfg: DictConfig, output_dir: Path, has_val: bool, labels_hash: str,
                    datamodule=None) -> dict[str, pl.Callback]:
    """The run's callbacks by name: checkpoints (``last`` every epoch, ``best`` by val/acc), noise diagnostics,
    history, NaN guard, resume state, and any extra ones the config names under ``callbacks`` (name: {_target_: ...}).
    Order matters: hooks run in this order, so diagnostics are logged before the history records the epoch."""
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    # Saved at the end of each training epoch: after validation and EpochHistory, so a checkpoint carries both.
    every_epoch = dict(dirpath=output_dir / "checkpoints", every_n_epochs=1, save_on_train_epoch_end=True)
    callbacks: dict[str, pl.Callback] = {}
    if has_val:
        callbacks["best"] = ModelCheckpoint(filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
                                            monitor="val/acc", mode="max", save_top_k=1, **every_epoch)
    # Its own callback: since Lightning 2.6, save_last only writes when a top-k checkpoint was written at that step,
    # and a resumed run must find the latest epoch. A killed run loses at most the epoch it was in.
    callbacks["last"] = ModelCheckpoint(filename=LAST_CHECKPOINT.stem, monitor=None, save_top_k=1,
                                        enable_version_counter=False, **every_epoch)
    if cfg.get("diagnostics") and NoiseDiagnostics.applies_to(datamodule):  # memorisation etc.: needs true labels
        callbacks["diagnostics"] = hydra.utils.instantiate(cfg.diagnostics)
    callbacks["history"] = EpochHistory()
    callbacks["nan_guard"] = NonFiniteLossGuard()
    callbacks["run_state"] = RunState(OmegaConf.to_container(cfg, resolve=True), labels_hash)
    if cfg.trainer.get("enable_progress_bar", True):  # redrawn every N steps, not every step: host time is step time
        callbacks["progress_bar"] = TQDMProgressBar(refresh_rate=int(cfg.get("progress_bar_refresh_rate", 20)))
    for name, extra in (cfg.get("callbacks") or {}).items():
        if extra is not None:
            callbacks[f"extra/{name}"] = hydra.utils.instantiate(extra)
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, c in (cfg.get("logger") or {}).items():
        if c is not None:  # W&B: the job's own run, started and finished by wandb_logging.wandb_job (see main)
            loggers.append(wandb_logging.lightning_logger(cfg) if name == "wandb" else hydra.utils.instantiate(c))
    return [lg for lg in loggers if lg is not None]


def keep_previous_logs(loggers: list, epoch: int) -> None:
    """Lightning's CSVLogger deletes the metrics.csv it finds; a resumed run keeps the interrupted attempt's as
    ``metrics.until-epoch<E>.csv`` beside the continuation's (results.json's history holds every epoch)."""
    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        metrics = Path(logger.log_dir) / "metrics.csv" if isinstance(logger, CSVLogger) else None
        if metrics is not None and metrics.is_file():
            metrics.replace(metrics.with_name(f"metrics.until-epoch{epoch:03d}.csv"))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test once as ``cfg`` says; returns (and writes) the results dictionary.

    Checks the settings first (ConfigError), then decides whether this continues an interrupted run in the output
    folder (``config.plan_resume``); only the global-zero process writes files.
    """
    start = time.time()
    policy, datamodule = validate_config(cfg)  # every check that needs no data: fails in the first second
    output_dir = Path(cfg.paths.output_dir)
    plan = plan_resume(cfg)  # None: a fresh run; refuses a folder that holds another run
    writes = is_global_zero()
    results: dict[str, Any] = {"status": "running", "seed": int(cfg.seed), "noise_seed": int(cfg.noise_seed),
                               "output_dir": str(output_dir)}

    results.update({"smoothing": policy.name, **_flatten("smoothing", policy.hparams()),
                    "noise": cfg.noise.kind, **_flatten("noise", OmegaConf.to_container(cfg.noise, resolve=True)),
                    "data": type(datamodule).__name__, "model": cfg.model._target_.rsplit(".", 1)[-1]})

    pl.seed_everything(cfg.seed, workers=True)
    with config_errors("data"):  # the checks that need the data: present, intact, label file, split sizes
        datamodule.setup("fit")
    noisy = datamodule.noisy_labels.numpy()
    labels_hash = label_hash(noisy)
    if plan is not None:
        check_resumed_labels(plan, labels_hash)
        results["resumed_from_epoch"] = plan.epoch
    results.update({"noise/realized_rate": datamodule.realized_noise_rate, "noise/labels_hash": labels_hash,
                    "noise/num_noisy": int(datamodule.is_noisy.sum())})
    log.info("noise: %s rate %s realised %.4f (%d of %d labels), hash %s", cfg.noise.kind, cfg.noise.get("rate"),
             results["noise/realized_rate"], results["noise/num_noisy"], len(noisy), labels_hash)
    if writes:
        write_noise_artifacts(output_dir, datamodule)
        write_json(output_dir / "results.json", results)  # status running: a killed job shows up as such

    net = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    module = _build_module(cfg, net, policy, datamodule.num_classes)
    has_val = datamodule.val_size > 0
    callbacks = build_callbacks(cfg, output_dir, has_val, labels_hash, datamodule)
    loggers = build_loggers(cfg)
    if plan is not None and writes:
        keep_previous_logs(loggers, plan.epoch)
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **{k: v for k, v in results.items()
                                                                           if k.startswith("noise/")}})
    # Under DDP every process evaluates the whole val/test set (identical metrics; torchmetrics states are synced):
    # Lightning's advice to sync epoch-level logs does not apply.
    warnings.filterwarnings("ignore", message=r".*self.log\(.*sync_dist=True\).*distributed setting")
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=list(callbacks.values()),
                                                  logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint if plan else None)
    history = callbacks["history"].history
    latest = {k: v for row in history for k, v in row.items()}  # each metric's last measured value
    results.update({k: v for k, v in latest.items() if k in RESULT_METRICS or k.startswith("diag/")})
    best_path = callbacks["best"].best_model_path if has_val and cfg.get("test_best", True) else ""
    results.update(test_final_and_best(trainer, module, datamodule, best_path, output_dir if writes else None))
    results["checkpoint/last"] = callbacks["last"].best_model_path  # with monitor=None, "best" is the latest
    results["history"] = history
    results["world_size"] = trainer.world_size
    if trainer.world_size > 1:
        results["ddp/labels_hash_per_rank"] = callbacks["run_state"].labels_hash_per_rank
    results["status"] = "completed"
    results["wall_time_s"] = time.time() - start  # this attempt's time (a resumed run counts from its restart)
    if writes:
        write_json(output_dir / "results.json", results)
    log.info("results: test/acc %.4f  test/ece %.4f  test/nll %.4f  (%s)", results.get("test/acc", math.nan),
             results.get("test/ece", math.nan), results.get("test/nll", math.nan), output_dir / "results.json")
    return results


def write_noise_artifacts(output_dir: Path, datamodule) -> None:
    """The noisy labels the run trains on, and their empirical transition matrix, beside its results."""
    output_dir.mkdir(parents=True, exist_ok=True)
    np.save(output_dir / "noisy_labels.npy", datamodule.noisy_labels.numpy())
    np.savetxt(output_dir / "noise_transition.csv", datamodule.transition_matrix(), delimiter=",", fmt="%.6f")


def test_final_and_best(trainer: pl.Trainer, module, datamodule, best_path: str,
                        output_dir: Optional[Path]) -> dict[str, Any]:
    """Test metrics of the final weights (with temperature scaling fitted on the validation split) and the test
    accuracy of the best-validation checkpoint; writes reliability.json into ``output_dir`` when given."""
    if datamodule.val_size > 0 and module.val_logits is None:  # no epoch left to train (a completed run reloaded):
        trainer.validate(module, datamodule=datamodule, verbose=False)  # temperature scaling needs val logits
    results = {k: _to_float(v) for k, v in trainer.test(module, datamodule=datamodule, verbose=False)[0].items()}
    if module.test_reliability is not None and output_dir is not None:
        write_json(output_dir / "reliability.json", {k: v.tolist() for k, v in module.test_reliability.items()})
    results["test/acc_at_best_val"] = results["test/acc"]
    if best_path:  # validate first: the temperature is fitted on the same weights' validation logits
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        best = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
        results.update({"test/acc_at_best_val": _to_float(best["test/acc"]), "checkpoint/best": best_path})
    return results


def _build_module(cfg: DictConfig, net, policy, num_classes: int):
    from adaptive_ls.module import LabelSmoothingClassifier

    optimizer = hydra.utils.instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return LabelSmoothingClassifier(net, policy, optimizer, scheduler, num_classes=num_classes, **module_options(cfg))


# adaptive_ls/conf: in a checkout a link to the top-level conf/, in a wheel a copy. Absolute, so the console
# script finds it from any folder.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the run failed in its results.json (keeping what it had measured) so a sweep report can name it.

    Not for an OutputDirError: that folder belongs to another run, and its results.json stays as it is."""
    if isinstance(error, OutputDirError) or not is_global_zero():
        return
    update_json(Path(cfg.paths.output_dir) / "results.json",
                {"status": "failed", "error": f"{type(error).__name__}: {error}", "seed": cfg.get("seed"),
                 "noise_seed": cfg.get("noise_seed")})


# Failures with a message that says what to do: shown as one line (no traceback unless HYDRA_FULL_ERROR=1).
EXPECTED_FAILURES = {ConfigError: 2, NonFiniteLossError: 1}  # exception -> exit code


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """Run once and return the metric a sweeper optimises; a failure is handled by :func:`handle_failure` (a grid
    sweep goes on past it with NaN; an Optuna study sees a failed trial)."""
    try:
        with wandb_logging.wandb_job(cfg):  # one W&B run per job, finished even if the job fails (logger=wandb)
            results = run(cfg)
    except Exception as error:
        if is_multirun() and sweeper_marks_failures():  # Optuna: a raised error fails the trial, a NaN the study
            record_failure(cfg, error)
            raise
        return handle_failure(cfg, error, multirun=is_multirun())
    return results.get(cfg.get("optimized_metric", "val/acc_best"))


def handle_failure(cfg: DictConfig, error: Exception, multirun: bool) -> float:
    """Record a failed job in its results.json; in a multirun log it and return NaN so the sweep goes on.

    A job whose folder holds a completed run (a sweep run again with the same hydra.sweep.dir to finish what is
    left) returns that run's metric. Outside a multirun: a bad setting exits with code 2 and one line
    ``error: ...`` on stderr, a diverged run with code 1 and one line, anything else raises (Hydra prints a trimmed
    traceback); ``HYDRA_FULL_ERROR=1`` shows the full traceback for all of them.
    """
    record_failure(cfg, error)
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
