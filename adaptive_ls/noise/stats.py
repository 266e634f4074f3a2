"""What noise a pair of label arrays holds: the empirical transition matrix, the realised rate, a fingerprint."""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from adaptive_ls.noise.kind import _as_label_array, _check_num_classes


def _paired(clean: Any, noisy: Any, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a clean/noisy label pair of equal length."""
    c = _as_label_array(clean, "clean", num_classes)
    z = _as_label_array(noisy, "noisy", num_classes)
    if c.size != z.size:
        raise ValueError(f"clean and noisy must have the same length, got {c.size} and {z.size}")
    return c, z


def transition_matrix(clean: Any, noisy: Any, num_classes: int) -> np.ndarray:
    """Empirical T[i, j] = P(noisy = j | clean = i), to compare realised vs intended noise."""
    num_classes = _check_num_classes(num_classes)
    c, z = _paired(clean, noisy, num_classes)
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (c, z), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def realized_noise_rate(clean: Any, noisy: Any) -> float:
    """Fraction of labels that differ, i.e. the noise actually present in the data."""
    c, z = _paired(clean, noisy)
    if c.size == 0:
        raise ValueError("realized_noise_rate needs at least one label, got none")
    return float(np.mean(c != z))


def label_hash(labels: Any) -> str:
    """First 16 hex chars of sha256 over little-endian int64 labels: same labels, same hash anywhere."""
    arr = _as_label_array(labels, "labels")
    return hashlib.sha256(arr.astype("<i8").tobytes()).hexdigest()[:16]
