"""Label smoothing: one loss and one small policy class per way of choosing ε.

Every policy fits one target::

    target_i = (1 − ε_i) · onehot(y_i) + ε_i · q_i
    loss_i   = (1 − ε_i) · CE(p_i, y_i) + ε_i · CE(p_i, q_i)

A policy answers one question per training step — "which ε (and which q) for this batch?" — from the detached
logits, the (possibly noisy) targets, the sample indices and the training progress. ``q = None`` means uniform
(ε/K on every class, as ``torch.nn.functional.cross_entropy(label_smoothing=ε)`` and timm do), which is the fast path.

One module per policy family, as timm keeps its losses: :mod:`.policy` (what a policy is), :mod:`.loss` (the
smoothed cross-entropy), then :mod:`.fixed`, :mod:`.annealed`, :mod:`.adaptive`, :mod:`.online`,
:mod:`.self_distill`, :mod:`.alasca` and :mod:`.self_adaptive`. Everything public is importable from here
(``_target_: adaptive_ls.smoothing.FixedSmoothing``).
"""
from adaptive_ls.smoothing.adaptive import ADAPTIVE_Q, ADAPTIVE_SIGNALS, AdaptiveSmoothing, confidence_signal
from adaptive_ls.smoothing.alasca import ALASCASmoothing
from adaptive_ls.smoothing.annealed import ANNEAL_SCHEDULES, AnnealedSmoothing, annealed_eps
from adaptive_ls.smoothing.fixed import FixedSmoothing, NoSmoothing
from adaptive_ls.smoothing.loss import smoothed_cross_entropy
from adaptive_ls.smoothing.online import OLS_INITS, OnlineSmoothing
from adaptive_ls.smoothing.policy import (EPS_NEGATIVE_BOUND, Eps, Progress, SmoothingPolicy, SmoothingSettingError,
                                          SmoothingTarget)
from adaptive_ls.smoothing.self_adaptive import SelfAdaptiveTraining
from adaptive_ls.smoothing.self_distill import SelfDistillation

__all__ = [
    "EPS_NEGATIVE_BOUND", "Eps", "SmoothingSettingError", "Progress", "SmoothingTarget", "SmoothingPolicy",
    "smoothed_cross_entropy",
    "NoSmoothing", "FixedSmoothing",
    "ANNEAL_SCHEDULES", "annealed_eps", "AnnealedSmoothing",
    "ADAPTIVE_SIGNALS", "ADAPTIVE_Q", "confidence_signal", "AdaptiveSmoothing",
    "OLS_INITS", "OnlineSmoothing",
    "SelfDistillation",
    "ALASCASmoothing",
    "SelfAdaptiveTraining",
]
