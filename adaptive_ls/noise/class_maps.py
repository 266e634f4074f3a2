"""Class names and source -> target class maps (Patrini et al. 2017), as YAML gives them: ids, numeric strings or
names."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from adaptive_ls.noise.kind import NoiseSettingError, _check_num_classes

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
