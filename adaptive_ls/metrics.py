"""Calibration metrics for classifiers trained under label noise.

Two forms of the same numbers:
    * torchmetrics ``Metric`` objects, updated batch by batch on the device and reduced at ``compute`` (under DDP
      too, through their ``dist_reduce_fx``): :func:`evaluation_metrics` builds the ``MetricCollection`` of one split
      (acc, nll, ece, ece_adaptive, mce, brier); :class:`ReliabilityBins` holds the data of a reliability diagram.
      Every one of them is updated with logits ``[B, K]`` and integer targets ``[B]``.
    * functions of a whole split at once: :func:`calibration_metrics` (a one-shot update of that collection),
      :func:`reliability_bins`, :func:`adaptive_calibration_error`, :func:`brier_score`, :func:`fit_temperature`,
      :func:`temperature_scaled_metrics` and their noise-aware forms :func:`fit_noise_aware_temperature`,
      :func:`noise_aware_temperature_scaled_metrics`. They take logits (or probabilities) ``[N, K]`` and integer
      targets ``[N]``, compute in float32 on the inputs' device and return 0-dim tensors (no host sync), except
      the temperature fits, whose documented return is a Python float (the noise-aware one computes in float64).

Conventions:
    * Top-label calibration: confidence is the max softmax probability, correctness is
      ``argmax == target``.
    * Equal-width bins are ``[b_i, b_{i+1})`` over ``linspace(0, 1, n_bins + 1)``, as in
      torchmetrics; :func:`reliability_bins` puts a confidence of exactly 1.0 in the last bin,
      whereas torchmetrics keeps it in an extra bin of its own (only the 1.0-confidence
      samples can therefore make the two ECEs differ).
    * Brier score is the multiclass (Brier 1950) form ``mean_n sum_k (p_nk - y_nk)^2`` in
      ``[0, 2]``; it is *not* divided by K.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "AdaptiveCalibrationError",
    "BrierScore",
    "NegativeLogLikelihood",
    "ReliabilityBins",
    "TopLabelAccuracy",
    "TopLabelCalibrationError",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "evaluation_metrics",
    "noise_aware_temperature_scaled_metrics",
    "fit_noise_aware_temperature",
    "fit_temperature",
    "reliability_bins",
    "temperature_scaled_metrics",
]

# Temperature search range for fit_temperature: T in [e^-7, e^7] ~ [1e-3, 1e3], so separable
# (noise-free) validation logits, whose NLL keeps falling as T -> 0, cannot drive T to 0/inf.
_LOG_T_BOUND = 7.0


def _check_n_bins(n_bins: int) -> None:
    """Fail early on a bin count that would make every binned metric meaningless."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}.")


def _check_scores_targets(scores: Tensor, targets: Tensor, name: str = "logits") -> None:
    """Validate shapes/dtypes/devices without a host sync, so misuse fails with a clear message."""
    if not isinstance(scores, Tensor) or not isinstance(targets, Tensor):
        raise ValueError(f"{name} and targets must be torch.Tensors, got {type(scores)} and {type(targets)}.")
    if scores.ndim != 2:
        raise ValueError(f"{name} must have shape [N, K], got {tuple(scores.shape)}.")
    if targets.ndim != 1:
        raise ValueError(f"targets must have shape [N] of class indices, got {tuple(targets.shape)}; "
                         "pass hard labels, not one-hot or soft targets.")
    if scores.shape[0] != targets.shape[0]:
        raise ValueError(f"{name} has N={scores.shape[0]} rows but targets has N={targets.shape[0]}.")
    if scores.shape[0] == 0:
        raise ValueError("metrics need at least one sample, got N=0.")
    if scores.shape[1] < 2:
        raise ValueError(f"{name} must have K >= 2 classes, got K={scores.shape[1]}.")
    if not scores.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {scores.dtype}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor of class indices, got dtype {targets.dtype}.")
    if scores.device != targets.device:
        raise ValueError(f"{name} is on {scores.device} but targets is on {targets.device}; move both to one device.")


def _top_label(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Return (confidence, correctness as float) of the top-1 prediction, the basis of calibration."""
    conf, pred = probs.max(dim=1)
    return conf, pred.eq(targets).to(conf.dtype)


def _brier_per_sample(probs: Tensor, targets: Tensor) -> Tensor:
    """sum_k (p_nk - y_nk)^2 of each sample, in float32."""
    probs = probs.float()
    onehot = F.one_hot(targets.long(), num_classes=probs.shape[1]).to(probs.dtype)
    return (probs - onehot).pow(2).sum(dim=1)


def _equal_mass_ece(conf: Tensor, correct: Tensor, n_bins: int) -> Tensor:
    """Adaptive ECE of top-label confidences and correctness: see :func:`adaptive_calibration_error`."""
    n = conf.shape[0]
    order = torch.sort(conf, stable=True).indices
    conf, correct = conf[order], correct[order]
    q, r = divmod(n, n_bins)
    sizes = torch.tensor([q + 1] * r + [q] * (n_bins - r), device=conf.device)
    bin_id = torch.repeat_interleave(torch.arange(n_bins, device=conf.device), sizes, output_size=n)
    gap_sum = torch.zeros(n_bins, device=conf.device, dtype=conf.dtype)
    gap_sum.scatter_add_(0, bin_id, correct - conf)
    # sum_b (n_b/N) |mean_b(acc - conf)| == sum_b |sum_b(acc - conf)| / N; empty bins add 0.
    return gap_sum.abs().sum() / n


def _bin_sums(conf: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width bin: sample count (int64), confidence sum and correctness sum; conf == 1.0 in the last bin."""
    edges = torch.linspace(0, 1, n_bins + 1, device=conf.device, dtype=conf.dtype)
    # interior edges + right=True -> bin i holds [edge_i, edge_{i+1}); conf == 1.0 lands in the last bin.
    bin_id = torch.bucketize(conf, edges[1:-1], right=True)
    count = torch.zeros(n_bins, device=conf.device, dtype=torch.int64).scatter_add_(0, bin_id, torch.ones_like(bin_id))
    conf_sum = torch.zeros(n_bins, device=conf.device, dtype=conf.dtype).scatter_add_(0, bin_id, conf)
    acc_sum = torch.zeros(n_bins, device=conf.device, dtype=conf.dtype).scatter_add_(0, bin_id, correct)
    return count, conf_sum, acc_sum


def _reliability(count: Tensor, conf_sum: Tensor, acc_sum: Tensor) -> dict[str, Tensor]:
    """The reliability-diagram dict of per-bin sums: see :func:`reliability_bins`."""
    edges = torch.linspace(0, 1, count.shape[0] + 1, device=conf_sum.device, dtype=conf_sum.dtype)
    denom = count.clamp(min=1).to(conf_sum.dtype)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": conf_sum / denom,
        "accuracy": acc_sum / denom,
        "count": count,
    }


def _top_label_of_logits(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, correctness) of float32 softmax(logits): the per-sample record of every top-label metric."""
    return _top_label(logits.detach().float().softmax(dim=1), targets.long())


# -- Metric objects: updated with (logits, targets) batches, read once at compute ------------------------------------


class _SoftmaxInput:
    """Mixin for a torchmetrics classification metric: ``update(logits, target)`` hands it float32 probabilities,
    so it never has to guess from the value range whether its input is already normalised."""

    def update(self, logits: Tensor, target: Tensor) -> None:
        super().update(logits.detach().float().softmax(dim=1), target.long())


class TopLabelAccuracy(_SoftmaxInput, MulticlassAccuracy):
    """Micro accuracy of argmax softmax(logits): the correctness that the calibration errors average per bin."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes=num_classes, average="micro", validate_args=False, **kwargs)


class TopLabelCalibrationError(_SoftmaxInput, MulticlassCalibrationError):
    """torchmetrics' equal-width-bin calibration error of softmax(logits): ``norm="l1"`` ECE, ``"max"`` MCE.

    ``validate_args=False``: its argument checks read values on the host at every update.
    """

    def __init__(self, num_classes: int, n_bins: int = 15, norm: str = "l1", **kwargs):
        _check_n_bins(n_bins)
        super().__init__(num_classes=num_classes, n_bins=n_bins, norm=norm, validate_args=False, **kwargs)


class NegativeLogLikelihood(MeanMetric):
    """Mean cross-entropy of float32 logits against hard targets, from the logits (no log of a rounded softmax)."""

    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(nan_strategy="disable", **kwargs)  # the NaN check would read the value on the host

    def update(self, logits: Tensor, target: Tensor) -> None:
        super().update(F.cross_entropy(logits.detach().float(), target.long(), reduction="none"))


class BrierScore(Metric):
    """Multiclass Brier score mean_n sum_k (p_nk - y_nk)^2 in [0, 2], as :func:`brier_score`; summed states."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("squared_error", torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        self.squared_error += _brier_per_sample(logits.detach().float().softmax(dim=1), target).sum()
        self.total += target.shape[0]

    def compute(self) -> Tensor:
        return self.squared_error / self.total


class AdaptiveCalibrationError(Metric):
    """Equal-mass-bin ECE, as :func:`adaptive_calibration_error`: the bins need every confidence, so they are kept."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, n_bins: int = 15, **kwargs):
        super().__init__(**kwargs)
        _check_n_bins(n_bins)
        self.n_bins = n_bins
        self.add_state("confidences", [], dist_reduce_fx="cat")
        self.add_state("accuracies", [], dist_reduce_fx="cat")

    def update(self, logits: Tensor, target: Tensor) -> None:
        conf, correct = _top_label_of_logits(logits, target)
        self.confidences.append(conf)
        self.accuracies.append(correct)

    def compute(self) -> Tensor:
        return _equal_mass_ece(dim_zero_cat(self.confidences), dim_zero_cat(self.accuracies), self.n_bins)


class ReliabilityBins(Metric):
    """Per-bin confidence, accuracy and count of softmax(logits), as :func:`reliability_bins`; summed states."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, n_bins: int = 15, **kwargs):
        super().__init__(**kwargs)
        _check_n_bins(n_bins)
        self.n_bins = n_bins
        self.add_state("count", torch.zeros(n_bins, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("confidence_sum", torch.zeros(n_bins, dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("accuracy_sum", torch.zeros(n_bins, dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        count, conf_sum, acc_sum = _bin_sums(*_top_label_of_logits(logits, target), self.n_bins)
        self.count += count
        self.confidence_sum += conf_sum
        self.accuracy_sum += acc_sum

    def compute(self) -> dict[str, Tensor]:
        return _reliability(self.count, self.confidence_sum, self.accuracy_sum)


def evaluation_metrics(num_classes: int, prefix: str = "", n_bins: int = 15, **metric_kwargs) -> MetricCollection:
    """The metrics of one evaluation split, keyed ``{prefix}acc``, ``nll``, ``ece``, ``ece_adaptive``, ``mce``,
    ``brier``; update the collection with ``(logits, targets)`` batches.

    ``metric_kwargs`` go to every metric, e.g. ``sync_on_compute=False`` where each process already holds the whole
    split. No compute groups: each metric keeps its own state, so Lightning can compute and reset the logged members
    one by one, and no first-update comparison of states reads values on the host.
    """
    _check_n_bins(n_bins)
    metrics = {
        "acc": TopLabelAccuracy(num_classes, **metric_kwargs),
        "nll": NegativeLogLikelihood(**metric_kwargs),
        "ece": TopLabelCalibrationError(num_classes, n_bins, norm="l1", **metric_kwargs),
        "ece_adaptive": AdaptiveCalibrationError(n_bins, **metric_kwargs),
        "mce": TopLabelCalibrationError(num_classes, n_bins, norm="max", **metric_kwargs),
        "brier": BrierScore(**metric_kwargs),
    }
    return MetricCollection(metrics, prefix=prefix or None, compute_groups=False)


# -- functions of a whole split ---------------------------------------------------------------------------------------


def brier_score(probs: Tensor, targets: Tensor) -> Tensor:
    """Multiclass Brier score mean_n sum_k (p_nk - y_nk)^2 in [0, 2]: a proper score over the whole distribution."""
    _check_scores_targets(probs, targets, name="probs")
    return _brier_per_sample(probs, targets).mean()


def adaptive_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    """Equal-mass-bin ECE (Nguyen & O'Connor 2015): robust when confidences pile up near 1, as after LS.

    Samples are sorted by confidence (stable) and split like ``torch.tensor_split(sorted, n_bins)``:
    the first ``N % n_bins`` bins hold one sample more. Returns sum_b (n_b / N) |acc_b - conf_b|.
    """
    _check_scores_targets(probs, targets, name="probs")
    _check_n_bins(n_bins)
    return _equal_mass_ece(*_top_label(probs.float(), targets), n_bins)


def calibration_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Accuracy, NLL, ECE, adaptive ECE, MCE and Brier as 0-dim float32 tensors: :func:`evaluation_metrics` updated
    once with the whole split (not reduced across processes: the caller holds what it measures)."""
    _check_scores_targets(logits, targets)
    _check_n_bins(n_bins)
    metrics = evaluation_metrics(logits.shape[1], n_bins=n_bins, sync_on_compute=False).to(logits.device)
    metrics.update(logits.detach().float(), targets.long())  # bf16/fp16 logits: binning and log-probs need float32
    return metrics.compute()


def reliability_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per-bin confidence/accuracy/count over equal-width confidence bins: the data behind a reliability diagram.

    Empty bins get confidence = accuracy = 0 and count = 0. ECE = sum(count * |accuracy - confidence|) / sum(count).
    """
    _check_scores_targets(logits, targets)
    _check_n_bins(n_bins)
    return _reliability(*_bin_sums(*_top_label_of_logits(logits, targets), n_bins))


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """Fit the post-hoc temperature T > 0 minimising NLL(logits / T) (Guo et al. 2017); T > 1 softens over-confidence.

    Optimises log T with L-BFGS on the logits' device in float32; T is bounded to about [1e-3, 1e3].
    Works inside ``torch.no_grad()``/``torch.inference_mode()`` (e.g. Lightning eval hooks).
    """
    _check_scores_targets(logits, targets)
    with torch.inference_mode(False), torch.enable_grad():
        # clone outside inference mode: inference tensors cannot be saved for backward.
        z = logits.detach().float().clone()
        y = targets.detach().long().clone()
        return _fit_log_temperature(lambda log_t: F.cross_entropy(z * torch.exp(-log_t), y), z.device, torch.float32,
                                    max_iter, "temperature")


def _fit_log_temperature(loss_at: Callable[[Tensor], Tensor], device, dtype: torch.dtype, max_iter: int,
                         what: str) -> float:
    """T = exp(log T) minimising ``loss_at(log T)`` by L-BFGS from T = 1, log T bounded to ±_LOG_T_BOUND."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
    log_t = torch.zeros((), device=device, dtype=dtype, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_at(log_t.clamp(-_LOG_T_BOUND, _LOG_T_BOUND))
        loss.backward()
        return loss

    opt.step(closure)
    log_t_value = float(log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND))
    if not math.isfinite(log_t_value):
        raise RuntimeError(f"{what} fit diverged (non-finite log T); check logits for NaN/inf.")
    return math.exp(log_t_value)


def temperature_scaled_metrics(
    val_logits: Tensor,
    val_targets: Tensor,
    test_logits: Tensor,
    test_targets: Tensor,
    n_bins: int = 15,
) -> dict[str, Tensor | float]:
    """Fit T on validation, report ``temperature`` and ``ts_``-prefixed calibration_metrics of test_logits / T.

    Separates miscalibration that a single scalar fixes from what label smoothing changes structurally.
    """
    _check_scores_targets(val_logits, val_targets, name="val_logits")
    _check_scores_targets(test_logits, test_targets, name="test_logits")
    if val_logits.shape[1] != test_logits.shape[1]:
        raise ValueError(f"val_logits has K={val_logits.shape[1]} classes but "
                         f"test_logits has K={test_logits.shape[1]}.")
    temperature = fit_temperature(val_logits, val_targets)
    scaled = test_logits.detach().float() / temperature
    out: dict[str, Tensor | float] = {"temperature": temperature}
    out.update({f"ts_{k}": v for k, v in calibration_metrics(scaled, test_targets, n_bins).items()})
    return out


def _check_transition(transition: Tensor, num_classes: int) -> None:
    """A noise transition matrix must be a [K, K] row-stochastic matrix (an all-zero row: a class with no samples)."""
    if transition.shape != (num_classes, num_classes):
        raise ValueError(f"transition must have shape [K, K] = [{num_classes}, {num_classes}] (rows: true class, "
                         f"columns: noisy class), got {tuple(transition.shape)}.")
    if not bool(torch.isfinite(transition).all()) or bool((transition < 0).any()):
        raise ValueError("transition must hold finite probabilities >= 0.")
    rows = transition.sum(dim=1)
    if not bool(((rows - 1).abs() < 1e-6).logical_or(rows == 0).all()):
        raise ValueError(f"transition rows must sum to 1 (P(noisy | true)), got row sums {rows.tolist()}.")


def _noisy_label_nll(logits: Tensor, log_transition_to_targets: Tensor, log_t: Tensor) -> Tensor:
    """Mean -log (softmax(logits / T) @ transition)[noisy target], as a log-sum-exp over the true class so that
    confident logits (a softmax that underflows) keep a finite loss; ``log_transition_to_targets[n, i]`` is
    ``log transition[i, target_n]``."""
    log_probs = F.log_softmax(logits * torch.exp(-log_t), dim=1)
    return -torch.logsumexp(log_probs + log_transition_to_targets, dim=1).mean()


def fit_noise_aware_temperature(logits: Tensor, noisy_targets: Tensor, transition, max_iter: int = 100) -> float:
    """Fit T > 0 maximising the likelihood of *noisy* labels under softmax(logits / T) @ transition, so that T
    calibrates the logits to the true labels rather than to the noise (plain :func:`fit_temperature` on noisy
    labels softens the model until its confidence matches the noisy labels' agreement with it).

    ``transition[i, j]`` = P(noisy = j | true = i), a [K, K] array-like. The same search as :func:`fit_temperature`
    (L-BFGS on log T, T bounded to about [1e-3, 1e3]), in float64; with the identity matrix it is that fit.
    """
    _check_scores_targets(logits, noisy_targets)
    with torch.inference_mode(False), torch.enable_grad():
        z = logits.detach().to(torch.float64).clone()
        y = noisy_targets.detach().long().clone()
        matrix = torch.as_tensor(transition, dtype=torch.float64).to(z.device).clone()
        _check_transition(matrix, z.shape[1])
        if not bool((matrix[:, y].sum(dim=0) > 0).all()):
            raise ValueError("a target class has an all-zero transition column: no true class can be noised into "
                             "it, so its likelihood is 0 at every temperature.")
        log_transition_to_targets = matrix.log().T[y]  # [N, K]; log 0 = -inf drops impossible true classes
        return _fit_log_temperature(lambda log_t: _noisy_label_nll(z, log_transition_to_targets, log_t), z.device,
                                    torch.float64, max_iter, "noise-aware temperature")


def noise_aware_temperature_scaled_metrics(
    val_logits: Tensor,
    val_noisy_targets: Tensor,
    test_logits: Tensor,
    test_targets: Tensor,
    transition,
    n_bins: int = 15,
) -> dict[str, Tensor | float]:
    """Fit T on the noisy validation labels through ``transition`` (:func:`fit_noise_aware_temperature`), report
    ``nts_temperature`` and ``nts_``-prefixed calibration_metrics of the clean test_logits / T.

    The counterpart of :func:`temperature_scaled_metrics` for a noisy validation split whose noise is known.
    """
    _check_scores_targets(val_logits, val_noisy_targets, name="val_logits")
    _check_scores_targets(test_logits, test_targets, name="test_logits")
    if val_logits.shape[1] != test_logits.shape[1]:
        raise ValueError(f"val_logits has K={val_logits.shape[1]} classes but "
                         f"test_logits has K={test_logits.shape[1]}.")
    temperature = fit_noise_aware_temperature(val_logits, val_noisy_targets, transition)
    scaled = test_logits.detach().float() / temperature
    out: dict[str, Tensor | float] = {"nts_temperature": temperature}
    out.update({f"nts_{k}": v for k, v in calibration_metrics(scaled, test_targets, n_bins).items()})
    return out
