"""Calibration metrics for classifiers trained under label noise.

All metric functions take logits (or probabilities) ``[N, K]`` and integer targets ``[N]``,
compute in float32 on the inputs' device and return 0-dim tensors (no host sync), except
:func:`fit_temperature`, whose documented return is a Python float.

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

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

__all__ = [
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
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


def brier_score(probs: Tensor, targets: Tensor) -> Tensor:
    """Multiclass Brier score mean_n sum_k (p_nk - y_nk)^2 in [0, 2]: a proper score over the whole distribution."""
    _check_scores_targets(probs, targets, name="probs")
    probs = probs.float()
    onehot = F.one_hot(targets.long(), num_classes=probs.shape[1]).to(probs.dtype)
    return (probs - onehot).pow(2).sum(dim=1).mean()


def adaptive_calibration_error(probs: Tensor, targets: Tensor, n_bins: int = 15) -> Tensor:
    """Equal-mass-bin ECE (Nguyen & O'Connor 2015): robust when confidences pile up near 1, as after LS.

    Samples are sorted by confidence (stable) and split like ``torch.tensor_split(sorted, n_bins)``:
    the first ``N % n_bins`` bins hold one sample more. Returns sum_b (n_b / N) |acc_b - conf_b|.
    """
    _check_scores_targets(probs, targets, name="probs")
    _check_n_bins(n_bins)
    conf, correct = _top_label(probs.float(), targets)
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


def calibration_metrics(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Accuracy, NLL, ECE, adaptive ECE, MCE and Brier as 0-dim float32 tensors, for logging one eval split."""
    _check_scores_targets(logits, targets)
    _check_n_bins(n_bins)
    logits = logits.detach().float()  # bf16/fp16 logits: binning and log-probs need float32
    targets = targets.long()
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)  # pass probs (in [0,1]) so torchmetrics never re-normalizes
    ce = dict(preds=probs, target=targets, num_classes=num_classes, n_bins=n_bins, validate_args=False)
    return {
        "acc": multiclass_accuracy(probs, targets, num_classes=num_classes, average="micro", validate_args=False),
        "nll": F.cross_entropy(logits, targets),
        "ece": multiclass_calibration_error(norm="l1", **ce),
        "ece_adaptive": adaptive_calibration_error(probs, targets, n_bins),
        "mce": multiclass_calibration_error(norm="max", **ce),
        "brier": brier_score(probs, targets),
    }


def reliability_bins(logits: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per-bin confidence/accuracy/count over equal-width confidence bins: the data behind a reliability diagram.

    Empty bins get confidence = accuracy = 0 and count = 0. ECE = sum(count * |accuracy - confidence|) / sum(count).
    """
    _check_scores_targets(logits, targets)
    _check_n_bins(n_bins)
    probs = logits.detach().float().softmax(dim=1)
    conf, correct = _top_label(probs, targets.long())
    edges = torch.linspace(0, 1, n_bins + 1, device=conf.device, dtype=conf.dtype)
    # interior edges + right=True -> bin i holds [edge_i, edge_{i+1}); conf == 1.0 lands in the last bin.
    bin_id = torch.bucketize(conf, edges[1:-1], right=True)
    count = torch.zeros(n_bins, device=conf.device, dtype=torch.int64).scatter_add_(0, bin_id, torch.ones_like(bin_id))
    conf_sum = torch.zeros(n_bins, device=conf.device, dtype=conf.dtype).scatter_add_(0, bin_id, conf)
    acc_sum = torch.zeros(n_bins, device=conf.device, dtype=conf.dtype).scatter_add_(0, bin_id, correct)
    denom = count.clamp(min=1).to(conf.dtype)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": conf_sum / denom,
        "accuracy": acc_sum / denom,
        "count": count,
    }


def fit_temperature(logits: Tensor, targets: Tensor, max_iter: int = 100) -> float:
    """Fit the post-hoc temperature T > 0 minimising NLL(logits / T) (Guo et al. 2017); T > 1 softens over-confidence.

    Optimises log T with L-BFGS on the logits' device in float32; T is bounded to about [1e-3, 1e3].
    Works inside ``torch.no_grad()``/``torch.inference_mode()`` (e.g. Lightning eval hooks).
    """
    _check_scores_targets(logits, targets)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
    with torch.inference_mode(False), torch.enable_grad():
        # clone outside inference mode: inference tensors cannot be saved for backward.
        z = logits.detach().float().clone()
        y = targets.detach().long().clone()
        log_t = torch.zeros((), device=z.device, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(z * torch.exp(-log_t.clamp(-_LOG_T_BOUND, _LOG_T_BOUND)), y)
            loss.backward()
            return loss

        opt.step(closure)
        log_t_value = float(log_t.detach().clamp(-_LOG_T_BOUND, _LOG_T_BOUND))
    if not math.isfinite(log_t_value):
        raise RuntimeError("temperature fit diverged (non-finite log T); check logits for NaN/inf.")
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
