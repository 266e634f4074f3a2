"""ε on a schedule over the optimizer steps (linear, cosine, exponential, step, CE-then-NLS switch)."""
from __future__ import annotations

import math

from adaptive_ls.smoothing.policy import SmoothingPolicy, SmoothingSettingError, SmoothingTarget, _check_eps_value


ANNEAL_SCHEDULES = ("linear", "cosine", "exponential", "step", "switch")


def annealed_eps(
    fraction: float,
    eps_start: float,
    eps_end: float,
    schedule: str = "linear",
    hold_fraction: float = 0.0,
    num_steps: int = 4,
) -> float:
    """ε at a training fraction in [0, 1]: held at ``eps_start`` for ``hold_fraction``, then moved to ``eps_end``.

    ``exponential`` interpolates geometrically (needs both ends of the same sign and non-zero; ε_end = 0 is treated
    as decaying to 1e-4 of ε_start, then snapped to 0 at the end); ``step`` makes ``num_steps`` equal drops between
    ``num_steps + 1`` equal plateaus, the last at ``eps_end``. ``switch`` jumps: ``eps_start`` for the steps before
    ``hold_fraction`` of training, ``eps_end`` from that step on (CE-then-NLS, as the NLS authors train at high noise).
    """
    if schedule == "switch":  # the step at exactly hold_fraction is the first at eps_end: an exact epoch boundary
        return eps_start if fraction < hold_fraction else eps_end
    if fraction <= hold_fraction:
        return eps_start
    t = min((fraction - hold_fraction) / max(1.0 - hold_fraction, 1e-12), 1.0)
    if schedule == "linear":
        w = t
    elif schedule == "cosine":
        w = 0.5 * (1.0 - math.cos(math.pi * t))
    elif schedule == "step":  # num_steps drops between num_steps + 1 equal plateaus: the last one is eps_end
        w = min(math.floor(t * (num_steps + 1)), num_steps) / num_steps
    elif schedule == "exponential":
        if t >= 1.0:
            return eps_end
        end = eps_end if eps_end != 0 else eps_start * 1e-4
        if eps_start == 0 or end / eps_start <= 0:
            w = t  # no geometric path between ends of different sign: fall back to linear
        else:
            return eps_start * (end / eps_start) ** t
    else:
        raise SmoothingSettingError(f"schedule={schedule!r}: allowed are {', '.join(ANNEAL_SCHEDULES)}")
    return eps_start + (eps_end - eps_start) * w


class AnnealedSmoothing(SmoothingPolicy):
    """ε moves from ``eps_start`` to ``eps_end`` over training, by optimizer step (not epoch).

    ``schedule="switch"`` with ``eps_start=0, eps_end=-0.4, hold_fraction=0.5`` is plain CE for the first half of the
    steps and NLS from then on.
    """

    name = "annealed"

    def __init__(
        self,
        eps_start: float = 0.3,
        eps_end: float = 0.0,
        schedule: str = "linear",
        hold_fraction: float = 0.0,
        num_steps: int = 4,
    ):
        super().__init__()
        self.eps_start = _check_eps_value(eps_start, "eps_start")
        self.eps_end = _check_eps_value(eps_end, "eps_end")
        if schedule not in ANNEAL_SCHEDULES:
            raise SmoothingSettingError(f"schedule={schedule!r}: allowed are {', '.join(ANNEAL_SCHEDULES)}")
        if not 0.0 <= hold_fraction < 1.0:
            raise SmoothingSettingError(f"hold_fraction={hold_fraction}: allowed is 0 <= hold_fraction < 1")
        if schedule == "switch" and not hold_fraction > 0.0:
            raise SmoothingSettingError(f"hold_fraction={hold_fraction}: schedule=switch needs 0 < hold_fraction < 1 "
                                        f"(the fraction of optimizer steps at eps_start)")
        if int(num_steps) < 1:
            raise SmoothingSettingError(f"num_steps={num_steps}: allowed is an integer >= 1")
        self.schedule, self.hold_fraction, self.num_steps = schedule, float(hold_fraction), int(num_steps)

    def eps_at(self, fraction: float) -> float:
        return annealed_eps(fraction, self.eps_start, self.eps_end, self.schedule, self.hold_fraction, self.num_steps)

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(self.eps_at(progress.fraction))
