"""Synthetic and real label noise: corruption, diagnostics and label-file loading.

Everything here is numpy in, numpy out (any array-like, torch tensors included, is
accepted through ``np.asarray``) and every random draw comes from
``np.random.default_rng(seed)`` (PCG64), so a given seed yields bit-identical noisy
labels on every machine; ``label_hash`` fingerprints them for logs.

Noise convention used by :func:`corrupt_labels` (EXACT counts)
----------------------------------------------------------------
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

import hashlib
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "NOISE_KINDS",
    "CIFAR10_CLASSES",
    "CIFAR10_ASYMMETRIC_MAP",
    "MNIST_ASYMMETRIC_MAP",
    "CIFAR10N_KEYS",
    "parse_class_map",
    "check_noise_config",
    "corrupt_labels",
    "transition_matrix",
    "realized_noise_rate",
    "label_hash",
    "load_label_file",
    "LABEL_FILE_KIND",
    "noisy_labels_from_file",
]

NOISE_KINDS = ("none", "symmetric", "asymmetric", "pairflip", "instance")
# noise.kind that takes the training labels from a file instead of corrupting them (CIFAR-10N and the like).
LABEL_FILE_KIND = "file"

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

# Std of the per-sample flip-rate distribution of the IDN generator (Xia et al. 2020).
_IDN_FLIP_STD = 0.1
# Rows of features projected at once by the IDN generator, to bound memory on 50k images.
_IDN_CHUNK = 4096


# --------------------------------------------------------------------------- checks


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


def _check_rate(kind: str, rate: Any, num_classes: int) -> float:
    """Keep the rate in the range where the noisy label still identifies the clean class."""
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"noise.rate must be a number in [0, 1), got {rate!r}") from None
    if not 0.0 <= rate_f < 1.0:
        raise ValueError(f"noise.rate must be in [0, 1), got {rate_f}")
    if kind == "symmetric":
        limit = (num_classes - 1) / num_classes
        if rate_f >= limit:
            raise ValueError(
                f"noise.rate={rate_f} too high for symmetric noise with {num_classes} classes: "
                f"must be < (K-1)/K = {limit:.4f}, at or above it the noisy label carries no "
                "information about the true class"
            )
    elif kind in ("asymmetric", "pairflip") and rate_f >= 0.5:
        raise ValueError(
            f"noise.rate={rate_f} too high for {kind} noise: must be < 0.5, at 0.5 the flipped "
            "class is as frequent as the true one and the noise is not identifiable"
        )
    return rate_f


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
        raise ValueError(f"noise.class_map {role} {value!r} is not a class; allowed: {allowed}")
    if isinstance(value, (int, np.integer)):
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            idx = int(text)
        elif names is not None and text.lower() in [n.lower() for n in names]:
            idx = [n.lower() for n in names].index(text.lower())
        else:
            raise ValueError(
                f"noise.class_map {role} {value!r} is not a known class; allowed: {allowed}"
            )
    else:
        raise ValueError(
            f"noise.class_map {role} {value!r} has type {type(value).__name__}; allowed: {allowed}"
        )
    if not 0 <= idx < num_classes:
        raise ValueError(f"noise.class_map {role} {value!r} is out of range; allowed: {allowed}")
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
        raise ValueError(
            f"noise.class_map must be a mapping source -> target, got {type(class_map).__name__}"
        )
    parsed: dict[int, int] = {}
    for src_raw, dst_raw in class_map.items():
        src = _resolve_class(src_raw, num_classes, class_names, "source")
        dst = _resolve_class(dst_raw, num_classes, class_names, "target")
        if src == dst:
            raise ValueError(
                f"noise.class_map maps {src_raw!r} to itself ({src} -> {dst}); a self-map "
                "is not noise, drop the entry"
            )
        if src in parsed:
            raise ValueError(f"noise.class_map lists source class {src} ({src_raw!r}) twice")
        parsed[src] = dst
    if not parsed:
        raise ValueError("noise.class_map is empty; give at least one source -> target pair")
    return parsed


def _check_settings(
    kind: str,
    rate: Any,
    num_classes: Any,
    class_map: Mapping[Any, Any] | None,
    class_names: Sequence[str] | None = None,
) -> tuple[int, float, dict[int, int] | None]:
    """The checks every noise setting gets, early (check_noise_config) and at use (corrupt_labels)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise.kind must be one of {NOISE_KINDS}, got {kind!r}")
    num_classes = _check_num_classes(num_classes)
    rate_f = _check_rate(kind, rate, num_classes)
    parsed_map: dict[int, int] | None = None
    if kind == "asymmetric":
        if class_map is None:
            if num_classes != 10:
                raise ValueError(
                    f"asymmetric noise with num_classes={num_classes} needs noise.class_map "
                    "(source -> target); the default map is only defined for CIFAR-10 "
                    "(num_classes=10)"
                )
            class_map = CIFAR10_ASYMMETRIC_MAP
        parsed_map = parse_class_map(class_map, num_classes, class_names)
    return num_classes, rate_f, parsed_map


def check_noise_config(
    noise: Mapping[str, Any],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    default_class_map: Mapping[Any, Any] | None = None,
) -> dict[str, Any]:
    """Check a ``noise`` config (``kind``, ``rate``, ``class_map``) before any data is loaded.

    Raises the ValueError :func:`corrupt_labels` would raise later (unknown kind, rate outside [0, 1) or too high
    for the kind, a class map naming a class the dataset does not have); returns the settings with ``rate`` as a
    float and ``class_map`` parsed to ids (``default_class_map``, the dataset's, when none is given). Other keys
    pass through untouched.
    """
    settings = dict(noise)
    kind = settings["kind"] = settings.get("kind", "none")
    if kind == LABEL_FILE_KIND:  # no rate: the file says which labels are wrong
        if not settings.get("path"):
            raise ValueError("noise.kind='file' needs noise.path: a .npy, .pt or .pth file with one label per "
                             "training image, in the training set's order")
        return settings
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise.kind must be one of {NOISE_KINDS + (LABEL_FILE_KIND,)}, got {kind!r}")
    if kind == "asymmetric" and not (settings.get("class_map") or default_class_map):
        raise ValueError("noise.kind=asymmetric needs noise.class_map (source class -> target class, by name or id): "
                         "this dataset has no default class map")
    _, settings["rate"], settings["class_map"] = _check_settings(
        kind, settings.get("rate", 0.0), num_classes, settings.get("class_map") or default_class_map, class_names
    )
    return settings


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


def corrupt_labels(
    labels: Any,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    class_map: Mapping[Any, Any] | None = None,
    features: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (noisy int64 labels, is_noisy bool mask) under the exact-count convention.

    ``symmetric``: exactly round(rate*N) samples, chosen uniformly without replacement,
    each moved to a uniformly random OTHER class (rate must be < (K-1)/K).
    ``pairflip``: exactly round(rate*N) samples moved c -> (c+1) mod K (rate < 0.5).
    ``asymmetric``: for each source class c of ``class_map`` (default
    ``CIFAR10_ASYMMETRIC_MAP`` when K == 10), exactly round(rate*n_c) of its samples are
    moved to map[c]; the per-source-class rate equals ``rate``, the overall one is lower
    (rate < 0.5). Maps may use ints, numeric strings or class names (see parse_class_map).
    ``instance``: IDN of Xia et al. 2020: q_i ~ N(rate, 0.1^2) truncated to [0, 1],
    W ~ N(0, 1) of shape [K, d, K]; for x_i (``features`` row, uint8 scaled by 1/255)
    p = softmax(x_i @ W[y_i] with p[y_i] = -inf) * q_i, p[y_i] = 1 - q_i, and the new
    label ~ Categorical(p). Needs ``features``; the realised rate is only ~ ``rate``.
    ``none`` or rate 0 returns an unchanged copy. Unlike papers that flip each sample
    with probability ``rate`` (realised rate ~ rate) or relabel uniformly over all K
    classes (effective rate rate*(K-1)/K), the first three kinds hit the rate exactly.
    ``class_map`` is used only by ``asymmetric`` and ``features`` only by ``instance``.
    All randomness comes from ``np.random.default_rng(seed)``.
    """
    num_classes, rate, parsed_map = _check_settings(kind, rate, num_classes, class_map)
    clean = _as_label_array(labels, "labels", num_classes)
    if kind == "instance" and features is None:
        raise ValueError(
            "noise.kind='instance' needs features (the training inputs, e.g. uint8 images) "
            "to draw instance-dependent flip probabilities"
        )

    if kind == "none" or rate == 0.0:
        return clean.copy(), np.zeros(clean.size, dtype=bool)

    rng = np.random.default_rng(seed)
    if kind == "symmetric":
        noisy = _symmetric(clean, rate, num_classes, rng)
    elif kind == "pairflip":
        noisy = _pairflip(clean, rate, num_classes, rng)
    elif kind == "asymmetric":
        assert parsed_map is not None
        noisy = _asymmetric(clean, rate, parsed_map, rng)
    else:
        noisy = _instance(clean, rate, num_classes, features, rng)
    return noisy, noisy != clean


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
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(
                f"noise.path={str(path)!r} is not a plain numeric .npy array ({err})"
            ) from None
    if suffix in (".pt", ".pth"):
        import torch

        # CIFAR-10N's CIFAR-10_human.pt is a dict of numpy arrays: load it with only numpy's array classes allowed
        # (weights_only), never by running arbitrary pickled code from a downloaded file.
        try:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"noise.path={str(path)!r} holds objects other than tensors and numpy arrays, which are not loaded "
                f"for safety ({str(err).splitlines()[0]}); save the labels with numpy.save or torch.save of a tensor"
            ) from None
    raise ValueError(
        f"noise.path={str(path)!r} has unsupported suffix {path.suffix!r}; "
        "allowed: '.npy', '.pt', '.pth'"
    )


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
        raise FileNotFoundError(f"noise.path={str(path)!r} does not exist or is not a file")
    obj = _read_label_object(p)

    if isinstance(obj, Mapping):
        available = sorted(str(k) for k in obj.keys())
        if key is None:
            raise ValueError(
                f"noise.path={str(path)!r} holds a dict; set noise.key to one of {available}"
            )
        if key not in obj:
            raise ValueError(
                f"noise.key={key!r} not found in {str(path)!r}; available keys: {available}"
            )
        obj = obj[key]
        where = f"noise.path={str(path)!r} (noise.key={key!r})"
    else:
        if key is not None:
            raise ValueError(
                f"noise.key={key!r} given but noise.path={str(path)!r} holds a single array, "
                "not a dict; set noise.key to null"
            )
        where = f"noise.path={str(path)!r}"

    arr = _to_numpy(obj)
    if arr.ndim != 1 or arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"{where} must hold a 1-D integer label array, got shape {arr.shape} dtype {arr.dtype}"
        )
    arr = arr.astype(np.int64)
    if num_samples is not None and arr.size != num_samples:
        raise ValueError(f"{where} has {arr.size} labels, expected num_samples={num_samples}")
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
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
            raise ValueError(
                f"noise.clean_key={clean_key!r} of noise.path={str(path)!r} disagrees with the dataset's training "
                f"labels on {disagree} of {labels.size} samples ({disagree / labels.size:.1%}): the file is not in "
                "this dataset's training order (CIFAR-10N follows torchvision's CIFAR-10 training order) or belongs "
                "to another dataset"
            )
    return noisy, noisy != labels
