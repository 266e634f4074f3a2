"""Symmetric noise: exactly round(rate*N) samples, each moved to a uniformly random other class."""
from __future__ import annotations

import numpy as np

from adaptive_ls.noise.kind import NoiseSettingError, RateNoise, _exact_count


def _symmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Move exactly round(rate*N) samples to a uniformly random other class."""
    noisy = labels.copy()
    idx = rng.choice(labels.size, size=_exact_count(rate, labels.size), replace=False)
    offset = rng.integers(1, num_classes, size=idx.size)
    noisy[idx] = (labels[idx] + offset) % num_classes
    return noisy


class SymmetricNoise(RateNoise):
    """Exactly round(rate*N) samples, chosen uniformly, each moved to a uniformly random other class."""

    name = "symmetric"

    def bind(self, num_classes, class_names=None, default_class_map=None):
        super().bind(num_classes)
        limit = (num_classes - 1) / num_classes
        if self.rate >= limit:
            raise NoiseSettingError(
                f"rate={self.rate} is out of range: allowed is 0 <= rate < (K-1)/K = {limit:.4g} for symmetric noise "
                f"on K={num_classes} classes (at or above it the noisy label carries no information about the true "
                "class)"
            )
        return self

    def corrupt(self, clean, images, num_classes, rng):
        return _symmetric(clean, self.rate, num_classes, rng)
