"""Noise kinds by name: the registry's look-up and ``corrupt_labels(kind: str)``, for tests and scripts; a run chooses
its kind by ``_target_``."""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np

from adaptive_ls.noise import asymmetric, instance, label_file, pairflip, symmetric  # noqa: F401 (they register)
from adaptive_ls.noise.class_maps import CIFAR10_ASYMMETRIC_MAP
from adaptive_ls.noise.kind import KINDS, NoiseKind, NoiseSettingError, _as_label_array


def noise_kind(name: str) -> type[NoiseKind]:
    """The registered noise kind called ``name``."""
    if name not in KINDS:
        raise NoiseSettingError(f"kind={name!r} is not a noise kind: allowed are {', '.join(map(repr, KINDS))}")
    return KINDS[name]


def _rate_arguments(cls: type[NoiseKind], rate: Any, class_map: Any) -> dict[str, Any] | None:
    """The arguments among (rate, class_map) that ``cls`` takes; None when it needs others (a file path)."""
    signature = inspect.signature(cls)
    arguments = {k: v for k, v in (("rate", rate), ("class_map", class_map)) if k in signature.parameters}
    try:
        signature.bind(**arguments)
    except TypeError:
        return None
    return arguments


# The built-in kinds that corrupt_labels makes from a rate (and a class map) alone.
NOISE_KINDS = tuple(name for name, cls in KINDS.items() if _rate_arguments(cls, 0.0, None) is not None)


def corrupt_labels(
    labels: Any,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: Mapping[Any, Any] | None = None,
    features: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy int64 labels, is_noisy bool mask) of the registered noise kind ``kind`` at ``rate``.

    The kind's class says what it does (:class:`SymmetricNoise`, :class:`PairFlipNoise`, :class:`AsymmetricNoise`,
    :class:`InstanceNoise`, :class:`NoNoise`); its constructor takes ``rate`` and, for ``asymmetric``, ``class_map``
    (default ``CIFAR10_ASYMMETRIC_MAP`` when K == 10). ``features`` are the images, used only by ``instance``.
    ``none`` or rate 0 returns an unchanged copy. All randomness comes from ``np.random.default_rng(seed)``.
    """
    cls = noise_kind(kind)
    arguments = _rate_arguments(cls, rate, class_map)
    if arguments is None:
        raise NoiseSettingError(
            f"kind={kind!r} is not made from a rate: build {cls.__name__}(...) with its own settings and call apply"
        )
    noise = cls(**arguments).bind(num_classes, default_class_map=CIFAR10_ASYMMETRIC_MAP if num_classes == 10 else None)
    clean = _as_label_array(labels, "labels", num_classes)
    return noise.apply(clean, features, num_classes, seed)
