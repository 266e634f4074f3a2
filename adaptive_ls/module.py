"""The LightningModule: any backbone, any smoothing policy, calibration metrics next to accuracy.

Metrics accumulate on the device (torchmetrics, with their per-step host checks turned off) and are read once per
epoch, so the training step never waits on the host.
"""
from __future__ import annotations

import inspect
import math
from functools import partial
from typing import Callable, Mapping, NamedTuple, Optional, Sequence, TypedDict

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, Metric, MetricCollection, MinMetric
from torchmetrics.classification import MulticlassAccuracy

from adaptive_ls.metrics import ReliabilityBins, evaluation_metrics
from adaptive_ls.errors import SettingError
from adaptive_ls.smoothing import (NoSmoothing, Progress, SmoothingPolicy, SmoothingTarget,
                                   smoothed_cross_entropy)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.0,
                    final_lr_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step linear warm-up then cosine decay to ``final_lr_fraction`` of the base learning rate."""
    if not 0.0 <= warmup_fraction <= 1.0:  # > 1: the run would end still warming up, never reaching the peak lr
        raise SettingError(f"warmup_fraction={warmup_fraction}: allowed is 0 <= warmup_fraction <= 1")
    warmup = int(round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return final_lr_fraction + (1.0 - final_lr_fraction) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


EVAL_TTA = ("none", "hflip")
SCHEDULER_INTERVALS = ("step", "epoch")
DATA_INIT_IMAGES = 5000  # training images shown to layers that set themselves from data (airbench's whitening: 5,000)


def check_options(channels_last: bool, compile: bool, norm_bias_lr_scale: float, eval_tta: str) -> None:
    """The module's speed and evaluation options: a SettingError naming the argument."""
    if not isinstance(channels_last, bool):
        raise SettingError(f"channels_last={channels_last!r}: allowed are true, false")
    if not isinstance(compile, bool):
        raise SettingError(f"compile={compile!r}: allowed are true, false")
    if isinstance(norm_bias_lr_scale, bool) or not isinstance(norm_bias_lr_scale, (int, float)) \
            or not norm_bias_lr_scale > 0:
        raise SettingError(f"norm_bias_lr_scale={norm_bias_lr_scale!r}: allowed is a positive number (1 = no change)")
    if eval_tta not in EVAL_TTA:
        raise SettingError(f"eval_tta={eval_tta!r}: allowed are {', '.join(EVAL_TTA)}")


def check_scheduler_interval(scheduler_interval: str) -> None:
    """When Lightning steps the schedule: a SettingError naming the argument."""
    if scheduler_interval not in SCHEDULER_INTERVALS:
        raise SettingError(f"scheduler_interval={scheduler_interval!r}: allowed are 'step', 'epoch'")


class TrainingStepOutput(TypedDict):
    """What a training step hands the callbacks (NaN guard, noise diagnostics): all on the device, detached but
    ``loss``."""

    loss: Tensor  # the batch's mean smoothed loss, which Lightning backpropagates
    eps: Tensor  # the ε the policy used: per sample [B], or a scalar
    index: Tensor  # the samples' positions in the training set [B]
    logits: Tensor  # [B, K]
    signal: Optional[Tensor]  # the policy's raw per-sample score [B], or None (SmoothingTarget.signal)


def parameter_groups(module: nn.Module, optimizer_factory: Callable, norm_bias_lr_scale: float) -> list[dict]:
    """The trainable parameters, with normalisation-layer shifts (BatchNorm β) in a group of their own whose learning
    rate is ``norm_bias_lr_scale`` × the optimizer's and weight decay ÷ it, so their decay per step is unchanged.

    airbench trains β 64× faster: with γ frozen and a 1/9-scaled head, the shifts otherwise barely move in a short run.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    if norm_bias_lr_scale == 1.0:
        return [{"params": trainable}]
    defaults = getattr(optimizer_factory, "keywords", {})
    if "lr" not in defaults:
        raise ValueError(f"norm_bias_lr_scale={norm_bias_lr_scale} needs the optimizer's lr: give optimizer.lr "
                         "(a Hydra partial with _partial_: true), or set norm_bias_lr_scale=1")
    norm_biases = {id(m.bias) for m in module.modules()
                   if isinstance(m, nn.modules.batchnorm._NormBase) and m.bias is not None}
    shifts = [p for p in trainable if id(p) in norm_biases]
    others = [p for p in trainable if id(p) not in norm_biases]
    shift_group = {"params": shifts, "lr": defaults["lr"] * norm_bias_lr_scale,
                   "weight_decay": defaults.get("weight_decay", 0.0) / norm_bias_lr_scale}
    return [{"params": others}, shift_group]


def _mean() -> MeanMetric:
    return MeanMetric(nan_strategy="disable")  # the default NaN check reads the value on the host every step


def configure_optimization(module: pl.LightningModule, optimizer_factory: Callable,
                           scheduler_factory: Optional[Callable], scheduler_interval: str,
                           norm_bias_lr_scale: float):
    """What ``configure_optimizers`` returns: the optimizer over :func:`parameter_groups`, and the schedule (given the
    total steps or epochs when its factory asks for them)."""
    optimizer = optimizer_factory(params=parameter_groups(module, optimizer_factory, norm_bias_lr_scale))
    if scheduler_factory is None:
        return optimizer
    if "total_steps" in inspect.signature(scheduler_factory).parameters:
        steps = int(module.trainer.estimated_stepping_batches)
        if scheduler_interval == "epoch":
            steps = int(module.trainer.max_epochs)
        scheduler = scheduler_factory(optimizer, total_steps=steps)
    else:
        scheduler = scheduler_factory(optimizer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": scheduler_interval}}


# -- one job's training step and metrics, shared by LabelSmoothingClassifier and a stack of jobs (adaptive_ls.stacking)


def attached_trainer(module: pl.LightningModule) -> Optional[pl.Trainer]:
    """The module's trainer, or None before it is attached to one (Lightning's ``trainer`` raises then)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def trainer_progress(trainer: Optional[pl.Trainer], total_steps: int) -> Progress:
    """Training progress for schedules: optimizer steps done of the total, and the epoch (the start, with no
    trainer)."""
    if trainer is None:
        return Progress(0, 1, 0, 1)
    return Progress(trainer.global_step, total_steps, trainer.current_epoch, trainer.max_epochs or 1)


def training_metrics(num_classes: int) -> dict[str, Metric]:
    """One job's training-epoch metrics, keyed by the names they are logged under."""
    accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
    return {"train/loss": _mean(), "train/acc": accuracy, "smoothing/eps_mean": _mean(),
            "smoothing/eps_min": MinMetric(nan_strategy="disable"),
            "smoothing/eps_max": MaxMetric(nan_strategy="disable")}


def epoch_training_metrics(metrics: Mapping[str, Metric], per_sample: bool) -> dict[str, Metric]:
    """The training metrics a job logs: a batch-constant ε has min = max = mean, so those two only for a per-sample
    policy."""
    dropped = () if per_sample else ("smoothing/eps_min", "smoothing/eps_max")
    return {name: metric for name, metric in metrics.items() if name not in dropped}


class SmoothedBatch(NamedTuple):
    """A policy's target for a batch, its ε as a tensor (per sample [B], or a scalar) and the per-sample loss."""

    target: SmoothingTarget
    eps: Tensor
    loss_per_sample: Tensor


def smoothed_batch(policy: SmoothingPolicy, logits: Tensor, targets: Tensor, index: Tensor,
                   progress: Progress) -> SmoothedBatch:
    """Ask the policy for the batch's target (from the detached logits) and the smoothed loss of every sample."""
    target = policy(logits.detach(), targets, index, progress)
    eps = target.eps if isinstance(target.eps, Tensor) else torch.full((), float(target.eps), device=logits.device)
    return SmoothedBatch(target, eps, smoothed_cross_entropy(logits, targets, eps, target.q, reduction="none"))


def smoothed_training_step(policy: SmoothingPolicy, metrics: Mapping[str, Metric], logits: Tensor, targets: Tensor,
                           index: Tensor, progress: Progress) -> TrainingStepOutput:
    """One job's training step on its logits: the policy's target, the smoothed loss, the epoch's training metrics
    (:func:`training_metrics`) updated on the device."""
    batch = smoothed_batch(policy, logits, targets, index, progress)
    metrics["train/loss"].update(batch.loss_per_sample.detach())
    metrics["train/acc"].update(logits.detach(), targets)  # against the (noisy) training labels
    eps = batch.eps.detach().float()
    metrics["smoothing/eps_mean"].update(eps)
    if policy.per_sample:  # a batch-constant ε has min = max = mean
        metrics["smoothing/eps_min"].update(eps)
        metrics["smoothing/eps_max"].update(eps)
    signal = None if batch.target.signal is None else batch.target.signal.detach().float()
    return TrainingStepOutput(loss=batch.target.batch_loss(batch.loss_per_sample), eps=eps, index=index,
                              logits=logits.detach(), signal=signal)


def split_metrics(num_classes: int, ece_bins: int, prefix: str) -> MetricCollection:
    """One evaluation split's metrics (:func:`~adaptive_ls.metrics.evaluation_metrics`), not reduced across
    processes: every process evaluates the whole split (the evaluation loaders are not sharded), so its states are
    complete, and reducing them would count each sample once per process."""
    return evaluation_metrics(num_classes, prefix=prefix, n_bins=ece_bins, sync_on_compute=False)


def best_accuracy() -> MaxMetric:
    """The best validation accuracy so far: it spans epochs, so it is checkpointed and a resumed run keeps it."""
    best = MaxMetric(nan_strategy="disable")
    best.persistent(True)
    return best


def log_epoch_metrics(module: pl.LightningModule, metrics: Mapping[str, Metric], prefix: str = "",
                      prog_bar: tuple[str, ...] = ()) -> None:
    """Hand metrics to Lightning once an epoch (on its first step): it computes (and, under DDP, reduces) and resets
    them at the epoch's end. Logging at every step would cost ~0.5 ms of host time per call, as much as a whole
    small-model step takes on a GPU."""
    for name, metric in metrics.items():
        module.log(prefix + name, metric, on_step=False, on_epoch=True, prog_bar=name in prog_bar)


def tta_logits(forward: Callable, images: Tensor | Sequence[Tensor], eval_tta: str) -> Tensor:
    """Logits for evaluation: of the images (a tensor, or a stack's tensors, one per member), or
    (``eval_tta="hflip"``) averaged with their mirror images' (the last dimension is the width)."""
    logits = forward(images)
    if eval_tta == "hflip":
        mirrored = images.flip(-1) if isinstance(images, Tensor) else [x.flip(-1) for x in images]
        logits = 0.5 * (logits + forward(mirrored))
    return logits


def init_from_data(net: nn.Module, datamodule) -> None:
    """Show the first training images to the net's layers that set themselves from data (before any step)."""
    layers = [m for m in net.modules() if callable(getattr(m, "init_from_data", None))]
    if layers:
        if not callable(getattr(datamodule, "train_sample", None)):
            raise ValueError(f"the net's {type(layers[0]).__name__} layer is set from training images before "
                             "fitting: fit with a data module that has train_sample(n) (adaptive_ls.data), "
                             "or use model.stem=conv")
        images = datamodule.train_sample(DATA_INIT_IMAGES)
        for layer in layers:
            layer.init_from_data(images.to(next(layer.parameters()).device))


class LabelSmoothingClassifier(pl.LightningModule):
    """Trains ``net`` on the policy's smoothed targets; reports accuracy, NLL, ECE and Brier score.

    Args:
        net: any ``nn.Module`` mapping images to ``num_classes`` logits.
        smoothing: a :class:`~adaptive_ls.smoothing.SmoothingPolicy` (default: none, plain cross-entropy).
        optimizer: ``params -> Optimizer`` (a Hydra partial); default SGD(lr=0.1, momentum=0.9, wd=5e-4, nesterov).
        scheduler: ``optimizer -> LRScheduler`` or ``(optimizer, total_steps) -> LRScheduler``; None for a constant lr.
        num_classes: K.
        scheduler_interval: ``"step"`` or ``"epoch"``: when Lightning steps the scheduler.
        ece_bins: bins of the equal-width ECE (15, as in Guo et al. 2017).
        channels_last: keep conv weights and images in NHWC memory order: what GPU tensor cores and x86 CPUs
            (oneDNN) convolve fastest.
        compile: ``torch.compile`` the network in place (``nn.Module.compile``), so checkpoints keep their keys and
            load into an uncompiled module; the first steps pay for the compilation.
        norm_bias_lr_scale: learning-rate multiplier for BatchNorm shifts (:func:`parameter_groups`); 1 = none.
        eval_tta: ``"hflip"`` averages the logits of each validation/test image and its mirror image (test-time
            augmentation); ``"none"`` evaluates the images as they are.

    Layers of ``net`` that set themselves from data (a method ``init_from_data(images)``, e.g. fastnet's
    :class:`~adaptive_ls.models.PatchWhitening`) see the first 5,000 normalised training images before fitting; a
    resumed run then restores the trained weights over them.
    """

    def __init__(
        self,
        net: nn.Module,
        smoothing: Optional[SmoothingPolicy] = None,
        optimizer: Optional[Callable] = None,
        scheduler: Optional[Callable] = None,
        num_classes: int = 10,
        scheduler_interval: str = "step",
        ece_bins: int = 15,
        channels_last: bool = True,
        compile: bool = False,
        norm_bias_lr_scale: float = 1.0,
        eval_tta: str = "none",
    ):
        super().__init__()
        check_scheduler_interval(scheduler_interval)
        check_options(channels_last, compile, norm_bias_lr_scale, eval_tta)
        self.save_hyperparameters(ignore=["net", "smoothing", "optimizer", "scheduler"])
        self.net = net
        self.smoothing = smoothing if smoothing is not None else NoSmoothing()
        self.optimizer_factory = optimizer or partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                                      nesterov=True)
        self.scheduler_factory = scheduler
        self.num_classes, self.scheduler_interval, self.ece_bins = num_classes, scheduler_interval, ece_bins
        self.channels_last, self.compile_net = channels_last, compile
        self.norm_bias_lr_scale, self.eval_tta = float(norm_bias_lr_scale), eval_tta
        self._memory_format = torch.contiguous_format  # applied in setup()
        train = training_metrics(num_classes)
        self.train_loss, self.train_acc = train["train/loss"], train["train/acc"]
        self.eps_mean, self.eps_min, self.eps_max = (train[f"smoothing/eps_{s}"] for s in ("mean", "min", "max"))
        self.val_metrics = split_metrics(num_classes, ece_bins, "val/")
        self.test_metrics = split_metrics(num_classes, ece_bins, "test/")
        self.test_bins = ReliabilityBins(ece_bins, sync_on_compute=False)
        self.val_acc_best = best_accuracy()
        self._total_steps = 1
        self._train_metrics_logged = False  # the epoch's training metrics are handed to Lightning on its first step
        self.test_reliability: Optional[dict] = None  # reliability-diagram data of the last test run

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:  # a no-op when the batch is already in the net's memory order
            x = x.contiguous(memory_format=self._memory_format)
        return self.net(x)

    # -- training -----------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "num_train_total"):
            self.smoothing.setup(datamodule.num_train_total, self.num_classes)
        # DDP would broadcast every buffer from rank 0 at each step; the policy keeps its per-sample memories equal
        # on all ranks itself (SmoothingPolicy._gather), so spare it the [N, K] broadcast.
        self._ddp_params_and_buffers_to_ignore = [f"smoothing.{name}" for name, _ in self.smoothing.named_buffers()]
        if stage == "fit":
            self.init_from_data(datamodule)
        self.set_speed_options()

    def init_from_data(self, datamodule) -> None:
        """Show the first training images to the net's layers that set themselves from data (before any step)."""
        init_from_data(self.net, datamodule)

    def set_speed_options(self) -> None:
        """Apply ``channels_last`` and ``compile`` to the net (idempotent; before the first step)."""
        self._memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net.to(memory_format=self._memory_format)  # conv weights only; other parameters are unaffected
        if self.compile_net and getattr(self.net, "_compiled_call_impl", None) is None:
            self.net.compile()

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)

    def progress(self) -> Progress:
        """Training progress for schedules: optimizer steps done of the total, and the epoch."""
        return trainer_progress(attached_trainer(self), self._total_steps)

    @property
    def train_metrics(self) -> dict[str, Metric]:
        """The epoch's training metrics, keyed by the names they are logged under (:func:`training_metrics`)."""
        return {"train/loss": self.train_loss, "train/acc": self.train_acc, "smoothing/eps_mean": self.eps_mean,
                "smoothing/eps_min": self.eps_min, "smoothing/eps_max": self.eps_max}

    def training_step(self, batch, batch_idx: int) -> TrainingStepOutput:
        images, targets, index = batch
        output = smoothed_training_step(self.smoothing, self.train_metrics, self(images), targets, index,
                                        self.progress())
        if not self._train_metrics_logged:  # the first step of this epoch (also when a run resumed mid-epoch)
            self._log_epoch_metrics()
        return output

    def _log_epoch_metrics(self) -> None:
        """Hand the epoch's training metrics to Lightning, once per epoch (:func:`log_epoch_metrics`)."""
        log_epoch_metrics(self, epoch_training_metrics(self.train_metrics, self.smoothing.per_sample))
        self._train_metrics_logged = True

    def on_train_epoch_start(self) -> None:
        self._train_metrics_logged = False

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def eval_logits(self, images: Tensor) -> Tensor:
        """Logits for evaluation: of the images, or (``eval_tta="hflip"``) averaged with their mirror images'."""
        return tta_logits(self, images, self.eval_tta)

    def _log_eval_metrics(self, metrics) -> None:
        """Hand a split's metrics to Lightning once (on its first batch): it computes them at the epoch's end and
        resets them."""
        log_epoch_metrics(self, metrics, prog_bar=("val/acc",))

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets, _ = batch
        self.val_metrics.update(self.eval_logits(images), targets)
        if batch_idx == 0:
            self._log_eval_metrics(self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        accuracy = self.val_metrics["acc"].compute()
        self.val_acc_best.update(accuracy)
        self.log("val/acc_best", self.val_acc_best.compute())
        self.smoothing.on_validation_end(accuracy)

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets, _ = batch
        logits = self.eval_logits(images)
        self.test_metrics.update(logits, targets)
        self.test_bins.update(logits, targets)
        if batch_idx == 0:
            self._log_eval_metrics(self.test_metrics)

    def on_test_epoch_end(self) -> None:
        if self.test_bins.update_count:
            self.test_reliability = self.test_bins.compute()
        self.test_bins.reset()

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> tuple[Tensor, Tensor]:
        """(float32 logits, targets) of a batch as evaluation sees it: the input of post-hoc calibration
        (:func:`adaptive_ls.calibration.calibrate`)."""
        images, targets, _ = batch
        return self.eval_logits(images).float(), targets

    # -- optimisation -------------------------------------------------------------------------------------------------

    def configure_optimizers(self):
        return configure_optimization(self, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval,
                                      self.norm_bias_lr_scale)
