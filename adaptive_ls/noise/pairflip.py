"""Pair-flip noise: exactly round(rate*N) samples moved from class c to (c+1) mod K."""
from __future__ import annotations

import numpy as np

from adaptive_ls.noise.kind import _NOT_IDENTIFIABLE, RateNoise, _exact_count


def _pairflip(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Move exactly round(rate*N) samples from class c to (c+1) mod K."""
    noisy = labels.copy()
    idx = rng.choice(labels.size, size=_exact_count(rate, labels.size), replace=False)
    noisy[idx] = (labels[idx] + 1) % num_classes
    return noisy


class PairFlipNoise(RateNoise):
    """Exactly round(rate*N) samples moved from class c to (c+1) mod K."""

    name = "pairflip"
    max_rate = 0.5
    max_rate_reason = _NOT_IDENTIFIABLE.format(kind="pairflip")

    def corrupt(self, clean, images, num_classes, rng):
        return _pairflip(clean, self.rate, num_classes, rng)
