"""What a noise kind is: :class:`NoiseKind`, the name registry its subclasses join, the shared setting checks, and
the two kinds every dataset has (:class:`NoNoise`; :class:`RateNoise`, the base of the synthetic kinds)."""
from __future__ import annotations

from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from adaptive_ls.errors import SettingError


class NoiseSettingError(SettingError):
    """A noise setting that cannot be used. The message names the constructor parameter (``rate=0.95 ...``); the
    config layer prefixes ``node + "."`` so that the user reads the config key (``noise.rate=0.95 ...``)."""

    node = "noise"


def _check_num_classes(num_classes: Any) -> int:
    """Reject class counts for which label noise is meaningless."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for label noise, got {num_classes}")
    return int(num_classes)


def _as_label_array(labels: Any, name: str, num_classes: int | None = None) -> np.ndarray:
    """Turn any array-like into a 1-D int64 copy, refusing floats/bools and out-of-range ids."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in "
            f"[{int(arr.min())}, {int(arr.max())}]"
        )
    return arr


def _check_rate(rate: Any, upper: float = 1.0, why: str = "") -> float:
    """A rate in [0, upper): the range where the noisy label still identifies the clean class."""
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise NoiseSettingError(f"rate={rate!r} is not a number: allowed is 0 <= rate < {upper:.4g}") from None
    if not 0.0 <= rate_f < upper:
        raise NoiseSettingError(f"rate={rate_f} is out of range: allowed is 0 <= rate < {upper:.4g}{why}")
    return rate_f


def _exact_count(rate: float, n: int) -> int:
    """Number of samples to corrupt: round(rate * n), so realised rate == requested rate."""
    return int(round(rate * n))


# Every noise kind by name; subclasses of NoiseKind add themselves when they are defined.
KINDS: dict[str, type[NoiseKind]] = {}


def _unchanged(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return clean.copy(), np.zeros(clean.size, dtype=bool)


class NoiseKind:
    """A way of making the training labels noisy; the data module binds it to its classes, then applies it once.

    A subclass implements ``apply`` and, when some of its settings can only be checked against the dataset's
    classes, ``bind``. It registers itself in :data:`KINDS` under ``name`` (default: the class name in lower case,
    without a trailing "Noise"; ``name = None`` keeps a shared base class out of the registry).
    """

    name: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__.lower().removesuffix("noise") or cls.__name__.lower()
        if cls.name is None:
            return
        known = KINDS.get(cls.name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"noise kind name {cls.name!r} of {cls.__qualname__} is taken by {known.__qualname__}")
        KINDS[cls.name] = cls

    def bind(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        default_class_map: Mapping[Any, Any] | None = None,
    ) -> NoiseKind:
        """Check the settings against the dataset's classes; return the kind ready for ``apply`` (``self``, or a
        bound copy where it keeps dataset state, so one setting can serve several datasets)."""
        _check_num_classes(num_classes)
        return self

    def apply(self, clean: np.ndarray, images: Any, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(noisy int64 labels, is_noisy bool mask) for the clean int64 labels; ``images`` has one row per label."""
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({settings})"


class NoNoise(NoiseKind):
    """Clean labels."""

    name = "none"

    def apply(self, clean, images, num_classes, seed):
        return _unchanged(clean)


class RateNoise(NoiseKind):
    """A synthetic kind set by a rate below ``max_rate``; rate 0 leaves the labels alone and draws nothing."""

    name = None
    max_rate: ClassVar[float] = 1.0
    max_rate_reason: ClassVar[str] = ""

    def __init__(self, rate: float):
        self.rate = _check_rate(rate, self.max_rate, self.max_rate_reason)

    def apply(self, clean, images, num_classes, seed):
        if self.rate == 0.0:
            return _unchanged(clean)
        noisy = self.corrupt(clean, images, num_classes, np.random.default_rng(seed))
        return noisy, noisy != clean

    def corrupt(self, clean: np.ndarray, images: Any, num_classes: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


_NOT_IDENTIFIABLE = (" for {kind} noise (at 0.5 the flipped class is as frequent as the true one and the noise is "
                     "not identifiable)")
