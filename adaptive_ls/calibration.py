"""Post-hoc calibration: temperature scaling of a trained module, as one step after training.

The temperature is fitted on the validation split's logits of the module's current weights and applied to the test
split's, both from one evaluation pass (:func:`evaluation_logits`), so the result does not depend on which weights the
last validation epoch happened to evaluate.

Two temperatures are fitted. The plain one (``test/temperature``, ``test/ts_*``) maximises the likelihood of the
validation labels as they are, so on a noisy validation split it calibrates the model to the noise. The noise-aware
one (``test/nts_temperature``, ``test/nts_*``) maximises the likelihood of the noisy labels under
softmax(z / T) @ transition, the noise transition matrix of :func:`noise_transition`, so it calibrates to the true
labels.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from adaptive_ls.metrics import noise_aware_temperature_scaled_metrics, temperature_scaled_metrics

__all__ = ["calibrate", "calibration_metrics", "evaluation_logits", "noise_transition"]


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
    # [N, K] and [N]; a stack's [M, N, K] and [M, N]
    return [(torch.cat([logits for logits, _ in batches], dim=-2), torch.cat([targets for _, targets in batches], dim=-1))
            for batches in outputs]


def noise_transition(datamodule: pl.LightningDataModule) -> Optional[np.ndarray]:
    """The noise transition matrix T[i, j] = P(noisy = j | true = i) of the validation split's labels, or None where
    the data module does not know which training labels are noisy (no ``is_noisy``).

    It is the data module's empirical ``transition_matrix()`` over the whole training set, whose noisy labels the
    validation split is carved from. For the exact-count synthetic kinds (symmetric, pairflip, asymmetric) that is
    the realised noise itself; for instance noise it is the class-level average of per-sample flips; for a label file
    (real noise, CIFAR-10N) it is an estimate that needs the training set's clean labels, which real noisy data
    usually lacks: without them there is no T, and no noise-aware fit.
    """
    if getattr(datamodule, "is_noisy", None) is None or getattr(datamodule, "clean_labels", None) is None:
        return None
    return datamodule.transition_matrix()


def _noise_aware_metrics(datamodule: pl.LightningDataModule, plain: dict, val_logits: Tensor, val_targets: Tensor,
                         test_logits: Tensor, test_targets: Tensor, n_bins: int) -> dict:
    """``nts_*`` beside the plain fit's ``ts_*``: with ``clean_val`` the validation labels are the true ones and the
    plain fit already is the noise-aware one, so its values are repeated; {} where the noise is unknown."""
    if getattr(datamodule, "clean_val", False):
        return {"nts_temperature": plain["temperature"],
                **{f"nts_{name[3:]}": value for name, value in plain.items() if name.startswith("ts_")}}
    transition = noise_transition(datamodule)
    if transition is None:
        return {}
    return noise_aware_temperature_scaled_metrics(val_logits, val_targets, test_logits, test_targets, transition,
                                                  n_bins=n_bins)


def calibrate(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule) -> dict[str, float]:
    """Temperature scaling of the module's current weights: ``test/temperature`` fitted on the validation split and
    ``test/ts_{acc,nll,ece,ece_adaptive,mce,brier}`` of the test logits divided by it; beside them the noise-aware
    fit's ``test/nts_temperature`` and ``test/nts_*`` (equal to ``ts`` with ``clean_val``, absent where the data
    module has no ``is_noisy``); {} without a validation split.

    Values are float32-rounded, as ``trainer.test`` reports its metrics.
    """
    if datamodule.val_size == 0:
        return {}
    (val_logits, val_targets), (test_logits, test_targets) = evaluation_logits(trainer, module, datamodule)
    return calibration_metrics(datamodule, module.ece_bins, val_logits, val_targets, test_logits, test_targets)


def calibration_metrics(datamodule: pl.LightningDataModule, n_bins: int, val_logits: Tensor, val_targets: Tensor,
                        test_logits: Tensor, test_targets: Tensor) -> dict[str, float]:
    """:func:`calibrate`'s metrics from the evaluation logits of one job (a stack calibrates each member's)."""
    metrics = temperature_scaled_metrics(val_logits, val_targets, test_logits, test_targets, n_bins=n_bins)
    metrics.update(_noise_aware_metrics(datamodule, metrics, val_logits, val_targets, test_logits, test_targets,
                                        n_bins=n_bins))
    return {f"test/{name}": float(torch.as_tensor(value, dtype=torch.float32)) for name, value in metrics.items()}
