"""Constant ε: no smoothing (plain cross-entropy), fixed smoothing and negative label smoothing."""
from __future__ import annotations

from adaptive_ls.smoothing.policy import SmoothingPolicy, SmoothingTarget, _check_eps_value


class NoSmoothing(SmoothingPolicy):
    """Plain cross-entropy (ε = 0): the baseline every sweep needs."""

    name = "none"

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(0.0)


class FixedSmoothing(SmoothingPolicy):
    """Constant ε. ε < 0 is negative label smoothing (NLS, Wei et al., ICML 2022; ``smoothing=negative``).

    Wei et al. show that positive smoothing helps at low noise but "over-smooths" at high noise, where NLS (which
    makes the model *more* confident in the given label than one-hot CE) does better; their code warms up with plain
    CE before switching to NLS at high noise (here: ``smoothing=annealed`` with ``eps_start=0``, ``hold_fraction``).
    ε is bounded below by ``EPS_NEGATIVE_BOUND`` (−1).
    """

    name = "fixed"

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = _check_eps_value(eps, "eps")

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(self.eps)
