"""Synthetic and real label noise: one small class per kind, diagnostics and label-file loading.

A noise kind is a :class:`NoiseKind`: its constructor checks the settings that need no dataset, ``bind`` the ones
that need the dataset's classes, and ``apply`` makes the noisy labels. Hydra builds them from ``conf/noise/*.yaml``
(``_target_: adaptive_ls.noise.SymmetricNoise``); every subclass registers under its ``name``, which is how
:func:`corrupt_labels` finds it. A bad setting raises :class:`NoiseSettingError`, naming the constructor parameter.

Everything here is numpy in, numpy out (any array-like, torch tensors included, is
accepted through ``np.asarray``) and every random draw comes from
``np.random.default_rng(seed)`` (PCG64), so a given seed yields bit-identical noisy
labels on every machine; ``label_hash`` fingerprints them for logs.

Noise convention of the synthetic kinds (EXACT counts)
------------------------------------------------------
* ``symmetric``: exactly ``round(rate * N)`` samples, drawn uniformly without
  replacement, are each moved to a uniformly random *other* class. The realised
  noise rate is therefore exactly ``rate`` (up to rounding).
* ``pairflip``: exactly ``round(rate * N)`` samples are moved from class ``c`` to
  ``(c + 1) mod K``.
* ``asymmetric``: for every source class ``c`` of the class map, exactly
  ``round(rate * n_c)`` of its samples are moved to ``map[c]``; the realised rate
  within each source class equals ``rate``, the overall rate is lower because the
  other classes are untouched. The default map for ``K == 10`` is the CIFAR-10 map of
  Patrini et al. (2017).
* ``instance``: the instance-dependent (IDN) generator of Xia et al., NeurIPS 2020
  ("Part-dependent label noise"); its realised rate is only approximately ``rate``
  because per-sample flip probabilities are drawn at random, and at small rates it is
  biased upwards by the truncation at 0 (mean of the truncated normal: ~0.13 at 0.1).

``round`` is Python's ``round`` (half to even). Two other conventions appear in papers
and give different numbers at the same nominal rate:

(a) each sample is flipped independently with probability ``rate``: the realised rate
    is Binomial(N, rate) / N, only approximately ``rate``;
(b) each selected sample is relabelled uniformly over all ``K`` classes, so it may
    redraw its true class: the effective noise rate is ``rate * (K - 1) / K``
    (e.g. "40% symmetric" on CIFAR-10 is 36% real noise).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import pickle
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from adaptive_ls.errors import SettingError

__all__ = [
    "NoiseSettingError",
    "LabelFileNotFoundError",
    "NoiseKind",
    "NoNoise",
    "SymmetricNoise",
    "AsymmetricNoise",
    "PairFlipNoise",
    "InstanceNoise",
    "LabelFileNoise",
    "Cifar10NNoise",
    "KINDS",
    "noise_kind",
    "NOISE_KINDS",
    "CIFAR10_CLASSES",
    "CIFAR10_ASYMMETRIC_MAP",
    "MNIST_ASYMMETRIC_MAP",
    "CIFAR10N_KEYS",
    "parse_class_map",
    "corrupt_labels",
    "transition_matrix",
    "realized_noise_rate",
    "label_hash",
    "load_label_file",
    "noisy_labels_from_file",
]

log = logging.getLogger(__name__)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# Patrini et al. 2017: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_ASYMMETRIC_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Patrini et al. 2017 for digits: 7->1, 2->7, 5<->6, 3->8.
MNIST_ASYMMETRIC_MAP = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}

# Keys of the CIFAR-10N ``CIFAR-10_human.pt`` dict (Wei et al., ICLR 2022).
CIFAR10N_KEYS = (
    "clean_label",
    "aggre_label",
    "worse_label",
    "random_label1",
    "random_label2",
    "random_label3",
)

LABEL_FILE_SUFFIXES = (".npy", ".pt", ".pth")

# Std of the per-sample flip-rate distribution of the IDN generator (Xia et al. 2020).
_IDN_FLIP_STD = 0.1
# Rows of features projected at once by the IDN generator, to bound memory on 50k images.
_IDN_CHUNK = 4096


# --------------------------------------------------------------------------- checks


class NoiseSettingError(SettingError):
    """A noise setting that cannot be used. The message names the constructor parameter (``rate=0.95 ...``); the
    config layer prefixes ``node + "."`` so that the user reads the config key (``noise.rate=0.95 ...``)."""

    node = "noise"


class LabelFileNotFoundError(NoiseSettingError, FileNotFoundError):
    """``path`` names no file: a bad setting, and a missing file to whoever catches FileNotFoundError."""


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


def _check_optional_str(key: str, value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise NoiseSettingError(f"{key}={value!r}: allowed is a string ({what}) or null")
    return value


def _check_label_suffix(path: Any) -> Path:
    """A label file's path, refused up front when its suffix is not one the loader reads."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise NoiseSettingError(
            f"path={path!r}: allowed is a .npy, .pt or .pth file with one label per training image, in the "
            "training set's order"
        )
    p = Path(path)
    if p.suffix.lower() not in LABEL_FILE_SUFFIXES:
        raise NoiseSettingError(
            f"path={str(path)!r} has unsupported suffix {p.suffix!r}; allowed: "
            + ", ".join(repr(s) for s in LABEL_FILE_SUFFIXES)
        )
    return p


def _exact_count(rate: float, n: int) -> int:
    """Number of samples to corrupt: round(rate * n), so realised rate == requested rate."""
    return int(round(rate * n))


# ----------------------------------------------------------------------- class maps


def _resolve_class(value: Any, num_classes: int, names: Sequence[str] | None, role: str) -> int:
    """Map one class-map entry (int, numeric string or class name) to a class id."""
    allowed = f"ids in [0, {num_classes})"
    if names is not None:
        allowed += f" or names {list(names)}"
    if isinstance(value, (bool, np.bool_)):
        raise NoiseSettingError(f"class_map {role} {value!r} is not a class; allowed: {allowed}")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            idx = int(text)
        elif names is not None and text.lower() in [n.lower() for n in names]:
            idx = [n.lower() for n in names].index(text.lower())
        else:
            raise NoiseSettingError(
                f"class_map {role} {value!r} is not a known class; allowed: {allowed}"
            )
    else:
        raise NoiseSettingError(
            f"class_map {role} {value!r} has type {type(value).__name__}; allowed: {allowed}"
        )
    if not 0 <= idx < num_classes:
        raise NoiseSettingError(f"class_map {role} {value!r} is out of range; allowed: {allowed}")
    return idx


def parse_class_map(
    class_map: Mapping[Any, Any],
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[int, int]:
    """Normalise a source->target class map from YAML/Hydra (ints, "3", or names) to ints.

    Names are matched case-insensitively against ``class_names``; when it is None and
    ``num_classes == 10`` the CIFAR-10 names are used.
    """
    num_classes = _check_num_classes(num_classes)
    if class_names is None and num_classes == 10:
        class_names = CIFAR10_CLASSES
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries but num_classes is {num_classes}"
        )
    if not hasattr(class_map, "items"):
        raise NoiseSettingError(
            f"class_map must be a mapping source -> target, got {type(class_map).__name__}"
        )
    parsed: dict[int, int] = {}
    for src_raw, dst_raw in class_map.items():
        src = _resolve_class(src_raw, num_classes, class_names, "source")
        dst = _resolve_class(dst_raw, num_classes, class_names, "target")
        if src == dst:
            raise NoiseSettingError(
                f"class_map maps {src_raw!r} to itself ({src} -> {dst}); a self-map "
                "is not noise, drop the entry"
            )
        if src in parsed:
            raise NoiseSettingError(f"class_map lists source class {src} ({src_raw!r}) twice")
        parsed[src] = dst
    if not parsed:
        raise NoiseSettingError("class_map is empty; give at least one source -> target pair")
    return parsed


# ----------------------------------------------------------------------- corruption


def _symmetric(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Move exactly round(rate*N) samples to a uniformly random other class."""
    noisy = labels.copy()
    idx = rng.choice(labels.size, size=_exact_count(rate, labels.size), replace=False)
    offset = rng.integers(1, num_classes, size=idx.size)
    noisy[idx] = (labels[idx] + offset) % num_classes
    return noisy


def _pairflip(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Move exactly round(rate*N) samples from class c to (c+1) mod K."""
    noisy = labels.copy()
    idx = rng.choice(labels.size, size=_exact_count(rate, labels.size), replace=False)
    noisy[idx] = (labels[idx] + 1) % num_classes
    return noisy


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


# ----------------------------------------------------------------------- noise kinds

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


class PairFlipNoise(RateNoise):
    """Exactly round(rate*N) samples moved from class c to (c+1) mod K."""

    name = "pairflip"
    max_rate = 0.5
    max_rate_reason = _NOT_IDENTIFIABLE.format(kind="pairflip")

    def corrupt(self, clean, images, num_classes, rng):
        return _pairflip(clean, self.rate, num_classes, rng)


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


class LabelFileNoise(NoiseKind):
    """Real noise: the training labels from a file, one per training image in the dataset's training order.

    ``key`` picks the array of a dict file (CIFAR-10N: ``worse_label``, ...); with ``clean_key`` the file's own true
    labels must equal the dataset's, so a file in another order is an error rather than silent noise.
    """

    name = "file"

    def __init__(self, path: str | Path, key: str | None = None, clean_key: str | None = None):
        _check_label_suffix(path)
        self.path = str(path)
        self.key = _check_optional_str("key", key, "the dict entry holding the labels to train on")
        self.clean_key = _check_optional_str("clean_key", clean_key, "the dict entry holding the true labels")

    def apply(self, clean, images, num_classes, seed):
        noisy, is_noisy = noisy_labels_from_file(self.path, clean, num_classes, key=self.key, clean_key=self.clean_key)
        checked = f", its {self.clean_key!r} equal to the dataset's labels" if self.clean_key else ""
        log.info("noise from %s (key %s%s): realised noise rate %.2f%%", self.path, self.key, checked,
                 100 * float(is_noisy.mean()))
        return noisy, is_noisy


class Cifar10NNoise(LabelFileNoise):
    """CIFAR-10N's human labels (Wei et al., ICLR 2022): a label file whose kind the report names ``cifar10n``."""

    name = "cifar10n"


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


# ----------------------------------------------------------------------- diagnostics


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


# ----------------------------------------------------------------------- label files


def _read_label_object(path: Path) -> Any:
    """Load the raw object of a .npy or torch .pt/.pth label file."""
    if _check_label_suffix(path).suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise NoiseSettingError(
                f"path={str(path)!r} is not a plain numeric .npy array ({err})"
            ) from None
    import torch

    # CIFAR-10N's CIFAR-10_human.pt is a dict of numpy arrays: load it with only numpy's array classes allowed
    # (weights_only), never by running arbitrary pickled code from a downloaded file.
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise NoiseSettingError(
            f"path={str(path)!r} holds objects other than tensors and numpy arrays, which are not loaded "
            f"for safety ({str(err).splitlines()[0]}); save the labels with numpy.save or torch.save of a tensor"
        ) from None


def _to_numpy(obj: Any) -> np.ndarray:
    """Convert a tensor / array / list to numpy without importing torch eagerly."""
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def _numpy_array_globals() -> list:
    """What unpickling a numpy integer array needs, under the names old and new numpy versions pickle them with."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = [np.ndarray, np.dtype, multiarray._reconstruct,
               (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles the dtype's class
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def load_label_file(
    path: str | Path,
    key: str | None = None,
    num_samples: int | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """Load real-world noisy labels (e.g. CIFAR-10N ``CIFAR-10_human.pt``) as a checked int64 array.

    ``.npy`` holds one integer array; ``.pt``/``.pth`` holds a tensor/array or a dict of
    them, of which ``key`` picks one (CIFAR-10N keys: ``CIFAR10N_KEYS``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise LabelFileNotFoundError(f"path={str(path)!r} does not exist or is not a file")
    obj = _read_label_object(p)

    if isinstance(obj, Mapping):
        available = sorted(str(k) for k in obj.keys())
        if key is None:
            raise NoiseSettingError(
                f"path={str(path)!r} holds a dict; set key to one of {available}"
            )
        if key not in obj:
            raise NoiseSettingError(
                f"key={key!r} not found in {str(path)!r}; available keys: {available}"
            )
        obj = obj[key]
        where = f"path={str(path)!r} (key={key!r})"
    else:
        if key is not None:
            raise NoiseSettingError(
                f"key={key!r} given but path={str(path)!r} holds a single array, "
                "not a dict; set key to null"
            )
        where = f"path={str(path)!r}"

    arr = _to_numpy(obj)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise NoiseSettingError(
            f"{where} must hold a 1-D integer label array, got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    if num_samples is not None and arr.size != num_samples:
        raise NoiseSettingError(f"{where} has {arr.size} labels, expected num_samples={num_samples}")
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise NoiseSettingError(
            f"{where} has labels in [{int(arr.min())}, {int(arr.max())}], "
            f"expected [0, {num_classes})"
        )
    return arr



def noisy_labels_from_file(
    path: str | Path,
    dataset_labels: Any,
    num_classes: int,
    key: str | None = None,
    clean_key: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy training labels from a label file aligned with the dataset's training order, and the is_noisy mask.

    The file must have one label per training sample, in ``[0, num_classes)``. With ``clean_key`` (CIFAR-10N:
    ``clean_label``) the file's own true labels must equal ``dataset_labels`` exactly: any disagreement means the
    file is in another order or belongs to another dataset, and training on it would be noise of the wrong kind.
    ``is_noisy`` is ``noisy != dataset_labels``.
    """
    labels = _as_label_array(dataset_labels, "dataset_labels", num_classes)
    noisy = load_label_file(path, key, num_samples=labels.size, num_classes=num_classes)
    if clean_key is not None:
        clean = load_label_file(path, clean_key, num_samples=labels.size, num_classes=num_classes)
        disagree = int(np.sum(clean != labels))
        if disagree:
            raise NoiseSettingError(
                f"clean_key={clean_key!r} of path={str(path)!r} disagrees with the dataset's training "
                f"labels on {disagree} of {labels.size} samples ({disagree / labels.size:.1%}): the file is not in "
                "this dataset's training order (CIFAR-10N follows torchvision's CIFAR-10 training order) or belongs "
                "to another dataset"
            )
    return noisy, noisy != labels
