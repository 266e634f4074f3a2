"""The smoothed cross-entropy every policy's target is trained with (timm's label-smoothing loss, with per-sample ε
and a soft q)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive_ls.smoothing.policy import Eps, _check_eps_value


def smoothed_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    eps: Eps = 0.0,
    q: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy against (1 − ε)·onehot(y) + ε·q, with q uniform (ε/K on every class) when ``q`` is None.

    ``eps`` is a float or a per-sample tensor of shape [B]; ``q`` is None or a [B, K] distribution per sample.
    For scalar ε in [0, 1) this equals ``F.cross_entropy(logits, targets, label_smoothing=ε)``. Computed in float32
    so bf16 logits do not lose the small ε terms. Per-sample ε is not range-checked here (that would sync the host);
    policies clamp it.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}: allowed are 'mean', 'sum', 'none'")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if isinstance(eps, Tensor):
        if eps.ndim not in (0, 1) or (eps.ndim == 1 and eps.shape[0] != logits.shape[0]):
            raise ValueError(f"per-sample eps must have shape [{logits.shape[0]}], got {tuple(eps.shape)}")
        eps = eps.to(torch.float32)
    else:
        eps = _check_eps_value(eps)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if q is None:
        smooth = -log_probs.mean(dim=-1)  # CE(p, uniform)
    else:
        if q.shape != logits.shape:
            raise ValueError(f"q must have the logits' shape {tuple(logits.shape)}, got {tuple(q.shape)}")
        smooth = -(q.float() * log_probs).sum(dim=-1)  # CE(p, q)
    loss = (1.0 - eps) * nll + eps * smooth
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
