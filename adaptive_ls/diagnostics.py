"""Per-sample diagnostics under label noise: does the model memorise the corrupted labels, or correct them?

When the data module knows the true labels of its training set (synthetic noise, CIFAR-10N), :class:`NoiseDiagnostics`
logs per epoch, over the *training* split (``diag/`` in W&B, the CSV log and ``results.json``):

* ``diag/memorized``: fraction of corrupted samples predicted as their (wrong) given label: the model has fit the
  noise (Arpit et al. 2017; Liu et al. 2020's "memorisation" curve);
* ``diag/corrected``: fraction of corrupted samples predicted as their *true* label (this is also the accuracy on
  the corrupted subset w.r.t. the true label);
* ``diag/acc_clean_subset``: accuracy on the correctly labelled samples;
* ``diag/eps_noisy``, ``diag/eps_clean``: mean ε the smoothing policy used on corrupted vs clean samples: does an
  adaptive policy smooth the wrong labels more?
* ``diag/eps_auroc``: the AUROC of the per-sample ε as a detector of the corrupted samples, the one number that
  says whether a policy tells wrong labels from right ones: 0.5 is blind, 1.0 smooths every corrupted sample more
  than every clean one. A batch-wide ε (``none``, ``fixed``, ``annealed``) tells no sample apart and reads 0.5.
* ``diag/signal_auroc``: the same AUROC for the policy's raw signal (``SmoothingTarget.signal``: e.g. 1 − p[y] of
  the current prediction), where it has one. It reads high while the model can still tell the wrong labels and
  falls as it memorises them; ε's AUROC staying above it is what a memory buys.

Where the predictions come from (``mode``):

* ``train_outputs`` (default): the training step's own logits, on augmented inputs, from weights that move during
  the epoch. Free: counted on the device from what ``training_step`` returns, read once per epoch. Memorisation
  then reads slightly low early in an epoch and under strong augmentation, but its course over epochs, what one
  compares between policies, is the same.
* ``eval_pass``: one extra forward pass over the training split without augmentation and in eval mode at the end of
  the epoch (cost ≈ one evaluation epoch of the training set; thin it out with ``every_n_epochs``): the exact
  state of the end-of-epoch model, as the memorisation literature measures it.

ε always comes from the training steps (it is what the policy actually used). Its AUROC is exact (torchmetrics'
``BinaryAUROC`` without binning: it keeps each training sample's ε and label over the epoch, 0.4 MB for CIFAR-10's
45k, where binning would blur the narrow range an adaptive ε spans, e.g. [0, 0.4]).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torchmetrics.classification import BinaryAUROC

from adaptive_ls.callbacks import PeriodicMetrics
from adaptive_ls.data import KnownNoise
from adaptive_ls.errors import SettingError

if TYPE_CHECKING:
    from adaptive_ls.module import TrainingStepOutput

log = logging.getLogger(__name__)

DIAGNOSTIC_MODES = ("train_outputs", "eval_pass")

# Layout of the per-epoch count vectors (kept as one device tensor each: one reduction, one read per epoch).
PRED_FIELDS = ("n_noisy", "n_clean", "memorized", "corrected", "clean_correct")
EPS_FIELDS = ("n_noisy", "n_clean", "eps_noisy", "eps_clean")


def prediction_counts(pred: Tensor, index: Tensor, is_noisy: Tensor, clean: Tensor, noisy: Tensor) -> Tensor:
    """Counts [n_noisy, n_clean, memorised, corrected, clean correct] of a batch of predicted classes.

    ``index`` addresses the full-training-set tensors ``is_noisy``, ``clean`` (true) and ``noisy`` (given) labels.
    """
    corrupted = is_noisy[index]
    hits_true = pred == clean[index]
    hits_given = pred == noisy[index]
    counts = torch.stack([corrupted, ~corrupted, corrupted & hits_given, corrupted & hits_true, ~corrupted & hits_true])
    return counts.sum(dim=1, dtype=torch.float32)


def eps_sums(eps: Tensor, index: Tensor, is_noisy: Tensor) -> Tensor:
    """Sums [n_noisy, n_clean, Σε on corrupted, Σε on clean] of a batch's ε (a scalar ε is broadcast)."""
    corrupted = is_noisy[index].to(torch.float32)
    eps = torch.broadcast_to(eps.detach().to(torch.float32), corrupted.shape)
    return torch.stack([corrupted.sum(), (1 - corrupted).sum(), (eps * corrupted).sum(), (eps * (1 - corrupted)).sum()])


def noise_detector() -> BinaryAUROC:
    """An exact AUROC of the scores as they are: by default torchmetrics would squash each batch holding an ε
    outside [0, 1] (negative smoothing) by a sigmoid, and batches so squashed no longer rank against the others."""
    return BinaryAUROC(thresholds=None, normalization=None)


def detection_scores(eps: Tensor, corrupted: Tensor) -> Tensor:
    """Per-sample scores of a batch for :func:`noise_detector`: ε, or a tie for a batch-wide (0-dim) ε.

    A batch-wide ε ranks no sample above another; taken as it is, an annealed ε would rank the batches by when they
    came and read as a detector by chance.
    """
    if eps.dim() == 0:
        return torch.zeros(corrupted.shape, device=corrupted.device)
    return torch.broadcast_to(eps.detach().to(torch.float32), corrupted.shape)


def summarize(pred_counts: Tensor, eps_counts: Optional[Tensor]) -> dict[str, Tensor]:
    """Fractions from the count vectors (0-dim tensors on their device; NaN where a subset is empty)."""
    n_noisy, n_clean, memorized, corrected, clean_correct = pred_counts.unbind()
    out = {
        "diag/memorized": memorized / n_noisy,
        "diag/corrected": corrected / n_noisy,
        "diag/acc_clean_subset": clean_correct / n_clean,
    }
    if eps_counts is not None:
        e_noisy, e_clean, eps_noisy, eps_clean = eps_counts.unbind()
        out["diag/eps_noisy"] = eps_noisy / e_noisy
        out["diag/eps_clean"] = eps_clean / e_clean
    return out


class NoiseDiagnostics(PeriodicMetrics):
    """Logs memorisation, correction, clean-subset accuracy and ε on noisy vs clean training samples per epoch.

    Needs the data module's ``is_noisy``, ``clean_labels`` and ``noisy_labels`` and training steps that return
    a ``TrainingStepOutput`` (as :class:`~adaptive_ls.module.LabelSmoothingClassifier` does). It does
    nothing when the training labels are all clean (see :meth:`applies_to`). Counting runs on the device with no
    host sync in the step; under DDP the per-rank counts are summed once per epoch and the ε AUROC is computed over
    the samples of all ranks (torchmetrics gathers its states on ``compute``).

    Args:
        mode: ``train_outputs`` (free, from the training steps) or ``eval_pass`` (one un-augmented pass over the
            training split at the end of the epoch); see the module docstring.
        every_n_epochs: log every n-th epoch (and always the last one).
    """

    per_member = True  # in a stack (mode train_outputs), each member measured on its own outputs

    def __init__(self, mode: str = "train_outputs", every_n_epochs: int = 1):
        super().__init__()
        if mode not in DIAGNOSTIC_MODES:
            raise SettingError(f"mode={mode!r}: allowed are {', '.join(DIAGNOSTIC_MODES)}")
        if isinstance(every_n_epochs, bool) or int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise SettingError(f"every_n_epochs={every_n_epochs}: allowed is an integer >= 1")
        self.mode, self.every_n_epochs = mode, int(every_n_epochs)
        self._masks: Optional[tuple[Tensor, Tensor, Tensor]] = None
        self._pred: Optional[Tensor] = None
        self._eps: Optional[Tensor] = None
        self._eps_auroc: Optional[BinaryAUROC] = None
        self._signal_auroc: Optional[BinaryAUROC] = None
        self._signal_seen = False  # whether this epoch's steps returned a signal (a Python flag: no host sync)
        self._this_epoch = False

    metric_prefix = "diag/"

    @staticmethod
    def applies_to(datamodule) -> bool:
        """True when the data module knows which training labels are corrupted and at least one is."""
        return isinstance(datamodule, KnownNoise) and datamodule.is_noisy is not None and bool(datamodule.is_noisy.any())

    # -- hooks --------------------------------------------------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        if not self.applies_to(datamodule):
            log.info("diagnostics: no corrupted training labels known; memorisation is not tracked")
            self._masks = None
            return
        device = pl_module.device
        self._masks = (datamodule.is_noisy.to(device), datamodule.clean_labels.to(device),
                       datamodule.noisy_labels.to(device))
        self._eps_auroc = noise_detector().to(device)
        self._signal_auroc = noise_detector().to(device)

    def _logging_epoch(self, trainer) -> bool:
        epoch, max_epochs = trainer.current_epoch, trainer.max_epochs or -1
        return (epoch + 1) % self.every_n_epochs == 0 or epoch + 1 == max_epochs

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._this_epoch = self._masks is not None and self._logging_epoch(trainer)
        if self._this_epoch:
            self._pred = torch.zeros(len(PRED_FIELDS), device=pl_module.device)
            self._eps = torch.zeros(len(EPS_FIELDS), device=pl_module.device)
            self._eps_auroc.reset()
            self._signal_auroc.reset()
            self._signal_seen = False

    def on_train_batch_end(self, trainer, pl_module, outputs: Optional["TrainingStepOutput"], batch,
                           batch_idx: int) -> None:
        if not self._this_epoch or outputs is None:
            return
        is_noisy, clean, noisy = self._masks
        index = outputs["index"]
        self._eps += eps_sums(outputs["eps"], index, is_noisy)
        corrupted = is_noisy[index]
        self._eps_auroc.update(detection_scores(outputs["eps"], corrupted), corrupted.to(torch.int))
        if outputs.get("signal") is not None:
            self._signal_auroc.update(outputs["signal"], corrupted.to(torch.int))
            self._signal_seen = True
        if self.mode == "train_outputs":
            self._pred += prediction_counts(outputs["logits"].argmax(dim=-1), index, is_noisy, clean, noisy)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._this_epoch:
            return
        eps = trainer.strategy.reduce(self._eps, reduce_op="sum")
        if self.mode == "eval_pass":
            pred = self._eval_pass(trainer, pl_module)  # every rank sees the whole split: no reduction
        else:
            pred = trainer.strategy.reduce(self._pred, reduce_op="sum")
        values = summarize(pred, eps)
        values["diag/eps_auroc"] = self._eps_auroc.compute()
        self._eps_auroc.reset()
        if self._signal_seen:
            values["diag/signal_auroc"] = self._signal_auroc.compute()
            self._signal_auroc.reset()
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True)
        self.last_logged_epoch = trainer.current_epoch
        self._this_epoch = False

    @torch.no_grad()
    def _eval_pass(self, trainer, pl_module) -> Tensor:
        """Counts from an un-augmented, eval-mode pass over the training split (the end-of-epoch model)."""
        datamodule, (is_noisy, clean, noisy) = trainer.datamodule, self._masks
        counts = torch.zeros(len(PRED_FIELDS), device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            for batch in datamodule.train_eval_dataloader():
                batch = pl.utilities.move_data_to_device(batch, pl_module.device)
                images, _, index = datamodule.prepare_batch(batch, augment=False)
                with trainer.strategy.precision_plugin.forward_context():
                    pred = pl_module(images).argmax(dim=-1)
                counts += prediction_counts(pred, index, is_noisy, clean, noisy)
        finally:
            pl_module.train(was_training)
        return counts
