"""Post-hoc calibration: temperature scaling of a trained module, as one step after training.

The temperature is fitted on the validation split's logits of the module's current weights and applied to the test
split's, both from one evaluation pass (:func:`evaluation_logits`), so the result does not depend on which weights the
last validation epoch happened to evaluate.
"""
from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor

from adaptive_ls.metrics import temperature_scaled_metrics

__all__ = ["calibrate", "evaluation_logits"]


class _PredictSplits(pl.LightningDataModule):
    """Serves splits of a data module to ``trainer.predict``, through that data module's batch hooks (device
    transfer, normalisation), since a plain list of loaders would skip them."""

    def __init__(self, datamodule: pl.LightningDataModule, splits: Sequence[str]):
        super().__init__()
        self.datamodule, self.splits = datamodule, tuple(splits)

    def prepare_data(self) -> None:
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer  # its loaders place batches on this trainer's device
        self.datamodule.setup(stage)

    def predict_dataloader(self):
        return [getattr(self.datamodule, f"{split}_dataloader")() for split in self.splits]

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.datamodule.on_before_batch_transfer(batch, dataloader_idx)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return self.datamodule.transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)


def evaluation_logits(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule,
                      splits: Sequence[str] = ("val", "test")) -> list[tuple[Tensor, Tensor]]:
    """(float32 logits [N, K], targets [N]) of each split, from one ``trainer.predict`` pass of the module's current
    weights (its ``predict_step``: eval mode, the trainer's precision, ``eval_tta``).

    Under DDP every process gets the whole splits, as the data module's evaluation loaders are not sharded (the
    project's DDP trainer sets ``use_distributed_sampler=False``).
    """
    outputs = trainer.predict(module, datamodule=_PredictSplits(datamodule, splits), return_predictions=True)
    if outputs is None:
        raise RuntimeError("trainer.predict returned no predictions (a process-spawning strategy?): post-hoc "
                           "calibration needs the logits back in this process")
    if len(splits) == 1:
        outputs = [outputs]
    return [(torch.cat([logits for logits, _ in batches]), torch.cat([targets for _, targets in batches]))
            for batches in outputs]


def calibrate(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, float]:
    """Temperature scaling of the module's current weights: ``test/temperature`` fitted on the validation split and
    ``test/ts_{acc,nll,ece,ece_adaptive,mce,brier}`` of the test logits divided by it; {} without a validation split.

    Values are float32-rounded, as ``trainer.test`` reports its metrics.
    """
    if datamodule.val_size == 0:
        return {}
    (val_logits, val_targets), (test_logits, test_targets) = evaluation_logits(trainer, module, datamodule)
    metrics = temperature_scaled_metrics(val_logits, val_targets, test_logits, test_targets, n_bins=module.ece_bins)
    return {f"test/{name}": float(torch.as_tensor(value, dtype=torch.float32)) for name, value in metrics.items()}
