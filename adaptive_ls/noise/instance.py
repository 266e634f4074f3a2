"""Instance-dependent noise (IDN) of Xia et al., NeurIPS 2020: flip probability and target depend on the image."""
from __future__ import annotations

from typing import Any

import numpy as np

from adaptive_ls.noise.kind import RateNoise

# Std of the per-sample flip-rate distribution of the IDN generator (Xia et al. 2020).
_IDN_FLIP_STD = 0.1
# Rows of features projected at once by the IDN generator, to bound memory on 50k images.
_IDN_CHUNK = 4096


def _flip_rates(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-sample flip rates ~ N(rate, 0.1^2) truncated to [0, 1] (Xia et al. 2020)."""
    from scipy import stats  # a dependency: one sampler, so the same seed gives the same labels everywhere

    lo, hi = (0.0 - rate) / _IDN_FLIP_STD, (1.0 - rate) / _IDN_FLIP_STD
    return np.asarray(
        stats.truncnorm.rvs(lo, hi, loc=rate, scale=_IDN_FLIP_STD, size=n, random_state=rng),
        dtype=np.float64,
    )


def _as_unit_features(features: Any, n: int) -> np.ndarray:
    """Flatten features to [N, d]; uint8 images are scaled to [0, 1] as in the IDN recipe."""
    feats = np.asarray(features)
    if feats.ndim < 1 or feats.shape[0] != n:
        raise ValueError(
            f"features for instance noise must have one row per label ({n}), got shape {feats.shape}"
        )
    feats = feats.reshape(n, -1)
    if feats.dtype == np.uint8:
        return feats  # scaled chunk-wise in _instance to avoid a float copy of the dataset
    if not np.issubdtype(feats.dtype, np.number) or feats.dtype == np.bool_:
        raise ValueError(f"features for instance noise must be numeric, got dtype {feats.dtype}")
    return feats


def _instance(
    labels: np.ndarray,
    rate: float,
    num_classes: int,
    features: Any,
    rng: np.random.Generator,
) -> np.ndarray:
    """Instance-dependent noise of Xia et al. (NeurIPS 2020), vectorised and chunked."""
    n = labels.size
    feats = _as_unit_features(features, n)
    d = feats.shape[1]
    q = _flip_rates(rate, n, rng)
    weights = rng.standard_normal((num_classes, d, num_classes))
    u = rng.random(n)
    noisy = labels.copy()
    scale = 1.0 / 255.0 if feats.dtype == np.uint8 else 1.0
    for start in range(0, n, _IDN_CHUNK):
        sl = slice(start, min(start + _IDN_CHUNK, n))
        x = feats[sl].astype(np.float64) * scale
        y = labels[sl]
        logits = np.empty((y.size, num_classes))
        for c in np.unique(y):  # x_i @ W[y_i], grouped by class to avoid an [n, d, K] gather
            mask = y == c
            logits[mask] = x[mask] @ weights[c]
        rows = np.arange(y.size)
        logits[rows, y] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs *= q[sl, None]
        probs[rows, y] = 1.0 - q[sl]
        cdf = np.cumsum(probs, axis=1)
        draw = (cdf < (u[sl] * cdf[:, -1])[:, None]).sum(axis=1)
        noisy[sl] = np.minimum(draw, num_classes - 1)
    return noisy


class InstanceNoise(RateNoise):
    """Instance-dependent noise of Xia et al. (NeurIPS 2020): flip probability and target depend on the image.

    q_i ~ N(rate, 0.1^2) truncated to [0, 1], W ~ N(0, 1) of shape [K, d, K]; for x_i (an ``images`` row, uint8
    scaled by 1/255) p = softmax(x_i @ W[y_i] with p[y_i] = -inf) * q_i, p[y_i] = 1 - q_i, and the new label ~
    Categorical(p). The realised rate is only ~ ``rate``.
    """

    name = "instance"

    def apply(self, clean, images, num_classes, seed):
        if images is None:
            raise ValueError(
                "instance noise needs the training images (features) to draw instance-dependent flip probabilities"
            )
        return super().apply(clean, images, num_classes, seed)

    def corrupt(self, clean, images, num_classes, rng):
        return _instance(clean, self.rate, num_classes, images, rng)
