"""Asymmetric (class-dependent) noise: exactly round(rate*n_c) samples of each mapped class c moved to map[c]."""
from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np

from adaptive_ls.noise.class_maps import parse_class_map
from adaptive_ls.noise.kind import _NOT_IDENTIFIABLE, NoiseSettingError, RateNoise, _exact_count


def _asymmetric(
    labels: np.ndarray, rate: float, class_map: dict[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Move exactly round(rate*n_c) samples of each mapped class c to map[c]."""
    noisy = labels.copy()
    for src in sorted(class_map):  # fixed order: draws do not depend on dict order
        members = np.flatnonzero(labels == src)
        chosen = rng.choice(members, size=_exact_count(rate, members.size), replace=False)
        noisy[chosen] = class_map[src]
    return noisy


class AsymmetricNoise(RateNoise):
    """Exactly round(rate*n_c) samples of each source class c of ``class_map`` moved to map[c].

    ``class_map`` maps classes by id, numeric string or name (see :func:`parse_class_map`); None takes the
    dataset's default map, given to ``bind``.
    """

    name = "asymmetric"
    max_rate = 0.5
    max_rate_reason = _NOT_IDENTIFIABLE.format(kind="asymmetric")

    def __init__(self, rate: float, class_map: Mapping[Any, Any] | None = None):
        super().__init__(rate)
        if class_map is not None and not isinstance(class_map, Mapping):
            raise NoiseSettingError(
                f"class_map={class_map!r}: allowed is a mapping source class -> target class (names or ids), or null "
                "for the dataset's default"
            )
        self.class_map = None if class_map is None else dict(class_map.items())
        self._class_ids: dict[int, int] | None = None

    def bind(self, num_classes, class_names=None, default_class_map=None):
        super().bind(num_classes)
        class_map = self.class_map if self.class_map is not None else default_class_map
        if class_map is None:
            raise NoiseSettingError(
                f"class_map=None takes the dataset's default class map, and this dataset (num_classes={num_classes}) "
                "has none: allowed is a mapping source class -> target class, by name or id, e.g. {cat: dog, dog: cat}"
            )
        bound = copy.copy(self)
        bound._class_ids = parse_class_map(class_map, num_classes, class_names)
        return bound

    def corrupt(self, clean, images, num_classes, rng):
        if self._class_ids is None:
            raise RuntimeError("AsymmetricNoise.apply needs bind(num_classes, ...) first, to resolve class_map")
        return _asymmetric(clean, self.rate, self._class_ids, rng)
