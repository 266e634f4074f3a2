"""Training entry point: ``adaptive-ls [group=option ...] [key=value ...]`` (same as ``python -m adaptive_ls.train``).

Composes ``conf/``, builds the data module (which owns the label noise), the backbone, the smoothing policy and the
Lightning Trainer, trains, tests the final and the best-validation weights, and writes into the run's folder:
``results.json`` (flat metrics + settings), ``noisy_labels.npy``, ``noise_transition.csv``, ``reliability.json``
and ``checkpoints/``. ``main`` returns the validation metric a Hydra sweeper optimises.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.noise import label_hash

log = logging.getLogger(__name__)

RESULT_METRICS = ("test/acc", "test/nll", "test/ece", "test/ece_adaptive", "test/mce", "test/brier",
                  "test/temperature", "test/ts_acc", "test/ts_nll", "test/ts_ece", "test/ts_brier",
                  "val/acc", "val/nll", "val/acc_best", "train/loss", "train/acc")


class EpochHistory(pl.Callback):
    """Keeps every epoch's logged metrics (train, val, ε, diagnostics) for results.json and the sweep report."""

    def __init__(self):
        self.history: list[dict[str, float]] = []
        self._last_epoch = -1

    def _record(self, trainer: pl.Trainer, epoch: int) -> None:
        if epoch <= self._last_epoch or not trainer.callback_metrics:
            return
        row = {"epoch": epoch}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if not k.startswith("test/")})
        self.history.append(row)
        self._last_epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):  # the previous epoch's metrics are complete by now
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module):
        self._record(trainer, trainer.current_epoch if trainer.current_epoch < (trainer.max_epochs or 0)
                     else trainer.current_epoch - 1)


def _flatten(prefix: str, settings: dict) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in settings.items()}


def _to_float(value) -> float:
    return float(value.detach().cpu()) if isinstance(value, torch.Tensor) else float(value)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (a crash never leaves half a results.json)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def build_callbacks(cfg: DictConfig, output_dir: Path, has_val: bool) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar

    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        monitor="val/acc" if has_val else None,
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    callbacks = [checkpoint, EpochHistory()]
    if cfg.trainer.get("enable_progress_bar", True):  # redrawn every N steps, not every step: host time is step time
        callbacks.append(TQDMProgressBar(refresh_rate=int(cfg.get("progress_bar_refresh_rate", 20))))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and test once as ``cfg`` says; returns (and writes) the results dictionary."""
    start = time.time()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"status": "running", "seed": int(cfg.seed), "noise_seed": int(cfg.noise_seed),
                               "output_dir": str(output_dir)}

    # Cheap objects first: their constructors check the settings, so a typo fails before any data is loaded.
    policy = hydra.utils.instantiate(cfg.smoothing)
    datamodule = hydra.utils.instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise, resolve=True),
                                         noise_seed=cfg.noise_seed, seed=cfg.seed)
    results.update({"smoothing": policy.name, **_flatten("smoothing", policy.hparams()),
                    "noise": cfg.noise.kind, **_flatten("noise", OmegaConf.to_container(cfg.noise, resolve=True)),
                    "data": type(datamodule).__name__, "model": cfg.model._target_.rsplit(".", 1)[-1]})

    pl.seed_everything(cfg.seed, workers=True)
    datamodule.setup("fit")
    noisy = datamodule.noisy_labels.numpy()
    np.save(output_dir / "noisy_labels.npy", noisy)
    np.savetxt(output_dir / "noise_transition.csv", datamodule.transition_matrix(), delimiter=",", fmt="%.6f")
    results.update({"noise/realized_rate": datamodule.realized_noise_rate, "noise/labels_hash": label_hash(noisy),
                    "noise/num_noisy": int(datamodule.is_noisy.sum())})
    log.info("noise: %s rate %.3f realised %.4f (%d of %d labels), hash %s", cfg.noise.kind, cfg.noise.rate,
             results["noise/realized_rate"], results["noise/num_noisy"], len(noisy), results["noise/labels_hash"])

    net = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes, in_channels=datamodule.in_channels)
    module = _build_module(cfg, net, policy, datamodule.num_classes)
    has_val = datamodule.val_size > 0
    callbacks = build_callbacks(cfg, output_dir, has_val)
    loggers = build_loggers(cfg)
    for lg in loggers:
        lg.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **{k: v for k, v in results.items()
                                                                           if k.startswith("noise/")}})
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule)
    results.update({k: _to_float(v) for k, v in trainer.callback_metrics.items() if k in RESULT_METRICS})
    final = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    results.update({k: _to_float(v) for k, v in final.items()})
    if module.test_reliability is not None:
        write_json(output_dir / "reliability.json", {k: v.tolist() for k, v in module.test_reliability.items()})

    checkpoint = callbacks[0]
    best_path = checkpoint.best_model_path
    if cfg.get("test_best", True) and has_val and best_path:
        trainer.validate(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        best = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)[0]
        results["test/acc_at_best_val"] = _to_float(best["test/acc"])
        results["checkpoint/best"] = best_path
    else:
        results["test/acc_at_best_val"] = results.get("test/acc")
    results["checkpoint/last"] = checkpoint.last_model_path
    results["history"] = callbacks[1].history
    results["status"] = "completed"
    results["wall_time_s"] = time.time() - start
    write_json(output_dir / "results.json", results)
    log.info("results: test/acc %.4f  test/ece %.4f  test/nll %.4f  (%s)", results.get("test/acc", math.nan),
             results.get("test/ece", math.nan), results.get("test/nll", math.nan), output_dir / "results.json")
    return results


def _build_module(cfg: DictConfig, net, policy, num_classes: int):
    from adaptive_ls.module import LabelSmoothingClassifier

    optimizer = hydra.utils.instantiate(cfg.optimizer) if cfg.get("optimizer") else None
    scheduler = hydra.utils.instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return LabelSmoothingClassifier(net, policy, optimizer, scheduler, num_classes=num_classes,
                                    channels_last=cfg.get("channels_last", True), compile=cfg.get("compile", False))


# conf/ sits beside the package (editable install); absolute, so the console script finds it from any folder.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the run failed in its results.json (keeping what it had measured) so a sweep report can name it."""
    path = Path(cfg.paths.output_dir) / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update({"status": "failed", "error": f"{type(error).__name__}: {error}", "seed": int(cfg.seed),
                    "noise_seed": int(cfg.noise_seed)})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """Run once; in a multirun a failed job is recorded and the sweep goes on (the sweeper sees NaN)."""
    try:
        results = run(cfg)
    except Exception as error:
        record_failure(cfg, error)
        if not _is_multirun():
            raise
        log.exception("job failed; recorded in %s/results.json, the sweep goes on", cfg.paths.output_dir)
        return math.nan
    return results.get(cfg.get("optimized_metric", "val/acc_best"))


if __name__ == "__main__":
    main()
