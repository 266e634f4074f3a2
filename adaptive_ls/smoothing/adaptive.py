"""Per-sample ε from the model's own detached prediction (optionally a per-sample moving average of it)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from adaptive_ls.smoothing.policy import (Progress, SmoothingPolicy, SmoothingSettingError, SmoothingTarget,
                                          _check_eps_value)


ADAPTIVE_SIGNALS = ("max_prob", "entropy", "true_class_prob")
ADAPTIVE_Q = ("uniform", "prediction")


def confidence_signal(probs: Tensor, targets: Tensor, signal: str) -> Tensor:
    """A per-sample score in [0, 1] where larger means "smooth this sample more".

    ``max_prob``: the model's top probability (over-confident samples get more smoothing: aims at calibration).
    ``entropy``: 1 − H(p)/log K (low entropy = confident → more smoothing; same direction as max_prob).
    ``true_class_prob``: 1 − p[y] (the less the model believes the given label, the more smoothing: aims at noise).
    """
    if signal == "max_prob":
        return probs.max(dim=-1).values
    if signal == "entropy":
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
        return 1.0 - entropy / math.log(probs.shape[-1])
    if signal == "true_class_prob":
        return 1.0 - probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    raise SmoothingSettingError(f"signal={signal!r}: allowed are {', '.join(ADAPTIVE_SIGNALS)}")


class AdaptiveSmoothing(SmoothingPolicy):
    """Per-sample ε = eps_min + (eps_max − eps_min) · signal(p_i), from the model's own detached prediction.

    For ``warmup_epochs`` the predictions are not trusted yet and ε = ``warmup_eps`` for every sample. With
    ``ema > 0`` the signal is computed from an exponential moving average of each sample's predicted distribution
    across epochs (a [N, K] buffer keyed by sample index, so it is checkpointed and stays on the device).

    ``freeze_fraction < 1`` stops updating that memory once this fraction of training is done: the signal then keeps
    what the model believed in its early-learning phase. Without it, 1 − p[y] falls as a wrong label is memorised, so
    ε falls exactly when it should resist (early-learning regularisation, Liu et al., NeurIPS 2020, anchors its
    targets the same way). With ``ema = 0`` the frozen memory is each sample's last prediction before the freeze.

    ``freeze_patience > 0`` freezes it by the data instead of the schedule: once the noisy-validation accuracy has not
    risen for that many epochs, the memory goes back to what it held at the best epoch and stays there. That peak is
    the run's own early-learning point, so the freeze follows a longer or shorter schedule, where a fixed fraction
    would not. The earlier of the two freezes holds.

    ``q``: ``uniform`` spreads ε evenly, which lowers the label's share but never moves the target's argmax off the
    given label while ε < (K − 1)/K, so a wrong label is still the class the model is taught. ``prediction`` gives
    ε to the prediction the signal reads (the memory where there is one): target = (1 − ε)·onehot(y) + ε·p̃, soft
    bootstrapping (Reed et al., 2015) with a per-sample weight, which hands a disbelieved label's mass to the class
    the model believed in instead.
    """

    name = "adaptive"
    per_sample = True

    def __init__(
        self,
        eps_min: float = 0.0,
        eps_max: float = 0.4,
        signal: str = "true_class_prob",
        warmup_epochs: int = 1,
        warmup_eps: float = 0.1,
        ema: float = 0.0,
        freeze_fraction: float = 1.0,
        q: str = "uniform",
        freeze_patience: int = 0,
    ):
        super().__init__()
        self.eps_min = _check_eps_value(eps_min, "eps_min")
        self.eps_max = _check_eps_value(eps_max, "eps_max")
        if self.eps_min > self.eps_max:
            raise SmoothingSettingError(f"eps_min={eps_min} > eps_max={eps_max}: need eps_min <= eps_max")
        if signal not in ADAPTIVE_SIGNALS:
            raise SmoothingSettingError(f"signal={signal!r}: allowed are {', '.join(ADAPTIVE_SIGNALS)}")
        if int(warmup_epochs) < 0:
            raise SmoothingSettingError(f"warmup_epochs={warmup_epochs}: allowed is an integer >= 0")
        if not 0.0 <= ema < 1.0:
            raise SmoothingSettingError(f"ema={ema}: allowed is 0 <= ema < 1 (0 turns the moving average off)")
        if not 0.0 < freeze_fraction <= 1.0:
            raise SmoothingSettingError(f"freeze_fraction={freeze_fraction}: allowed is 0 < freeze_fraction <= 1 "
                                        f"(1 never freezes the memory)")
        self.signal, self.warmup_epochs, self.ema = signal, int(warmup_epochs), float(ema)
        self.freeze_fraction = float(freeze_fraction)
        if isinstance(freeze_patience, bool) or int(freeze_patience) != freeze_patience or freeze_patience < 0:
            raise SmoothingSettingError(f"freeze_patience={freeze_patience}: allowed is an integer >= 0 (0: the "
                                        f"validation accuracy does not freeze the memory)")
        self.freeze_patience = int(freeze_patience)
        if q not in ADAPTIVE_Q:
            raise SmoothingSettingError(f"q={q!r}: allowed are {', '.join(ADAPTIVE_Q)}")
        self.q = q
        self.warmup_eps = _check_eps_value(warmup_eps, "warmup_eps")
        # Each sample's moving-average prediction and whether it has been seen; sized in setup().
        self.register_buffer("memory", torch.empty(0, 0))
        self.register_buffer("seen", torch.empty(0, dtype=torch.bool))
        self.frozen_now = False  # by freeze_patience; on the host, so a training step never reads a tensor to branch
        if self.freeze_patience:  # the memory at the best validation epoch, that accuracy, epochs since, frozen
            self.register_buffer("peak_memory", torch.empty(0, 0))
            self.register_buffer("peak_seen", torch.empty(0, dtype=torch.bool))
            self.register_buffer("peak_accuracy", torch.tensor(-1.0))
            self.register_buffer("epochs_since_peak", torch.tensor(0))
            self.register_buffer("frozen", torch.tensor(False))
            self.register_load_state_dict_post_hook(lambda module, keys: module.sync_frozen())

    @property
    def needs_validation(self) -> bool:
        return self.freeze_patience > 0

    def sync_frozen(self) -> None:
        """Read ``frozen`` once (after a checkpoint is loaded)."""
        self.frozen_now = bool(self.frozen)

    @property
    def remembers(self) -> bool:
        """Whether the signal comes from a per-sample memory rather than the current prediction alone."""
        return self.ema > 0 or self.freeze_fraction < 1 or self.freeze_patience > 0

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.remembers and self.memory.shape != (num_samples, num_classes):
            self.memory = torch.zeros(num_samples, num_classes, device=self.memory.device)
            self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.memory.device)
        if self.freeze_patience and self.peak_memory.shape != (num_samples, num_classes):
            self.peak_memory = torch.zeros(num_samples, num_classes, device=self.memory.device)
            self.peak_seen = torch.zeros(num_samples, dtype=torch.bool, device=self.memory.device)

    @torch.no_grad()
    def on_validation_end(self, accuracy: Tensor) -> None:
        """``freeze_patience``: keep the memory of the best validation epoch; freeze it there once the accuracy has
        not risen for ``freeze_patience`` epochs."""
        if not self.freeze_patience or self.frozen_now:
            return
        if float(accuracy) > float(self.peak_accuracy):  # once an epoch: a host read is cheap here
            self.peak_accuracy.fill_(float(accuracy))
            self.epochs_since_peak.zero_()
            self.peak_memory.copy_(self.memory)
            self.peak_seen.copy_(self.seen)
            return
        self.epochs_since_peak += 1
        if int(self.epochs_since_peak) >= self.freeze_patience:
            self.memory.copy_(self.peak_memory)
            self.seen.copy_(self.peak_seen)
            self.frozen.fill_(True)
            self.frozen_now = True

    def _smoothed_probs(self, probs: Tensor, index: Tensor, progress: Progress) -> Tensor:
        if not self.remembers:
            return probs
        if self.memory.numel() == 0:
            raise RuntimeError("AdaptiveSmoothing with ema > 0, freeze_fraction < 1 or freeze_patience > 0 needs "
                               "setup(num_samples, num_classes) before training")
        old = self.memory[index]
        seen = self.seen[index].unsqueeze(1)
        if self.frozen_now or progress.fraction >= self.freeze_fraction:
            # Frozen: the early-learning belief; a sample never seen before the freeze uses its current prediction.
            return torch.where(seen, old, probs)
        new = torch.where(seen, self.ema * old + (1.0 - self.ema) * probs, probs)
        all_index, all_new = self._gather(index, new)  # every process's samples, so the memories stay equal
        self.memory[all_index] = all_new
        self.seen[all_index] = True
        return new

    def forward(self, logits, targets, index, progress):
        current = logits.float().softmax(dim=-1)
        signal = confidence_signal(current, targets, self.signal)
        probs = self._smoothed_probs(current, index, progress)
        if progress.epoch < self.warmup_epochs:
            return SmoothingTarget(torch.full_like(probs[:, 0], self.warmup_eps), signal=signal)
        score = signal if probs is current else confidence_signal(probs, targets, self.signal)
        q = probs if self.q == "prediction" else None
        return SmoothingTarget(self.eps_min + (self.eps_max - self.eps_min) * score, q, signal=signal)
