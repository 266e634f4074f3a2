"""Broken data files named in one line: a truncated CIFAR-10 batch, a corrupt image, a corrupt decode cache.

The readers (torchvision's CIFAR-10, the image decoders, ``torch.load``) fail with their own internals
(``UnpicklingError: pickle data was truncated``, ``image file is truncated``). These helpers say which file is
broken and what to do about it, as a ValueError the config layer reports under ``data`` with exit code 2. A decode
cache is the package's own: a broken one is rebuilt, with one log line.
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

from adaptive_ls.errors import one_line

log = logging.getLogger(__name__)
CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "size unknown"


def batch_problem(path: Path) -> Optional[str]:
    """What is wrong with one CIFAR-10 batch file (a pickled dict of ``data`` rows of 3072 bytes and their
    ``labels``/``label_names``), or None when it reads."""
    try:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            MemoryError, OSError) as error:
        kind = "truncated" if isinstance(error, EOFError) or "truncated" in str(error) else "corrupt"
        return f"{path} is {kind} ({_size(path)}; {type(error).__name__}: {one_line(error)})"
    if not isinstance(batch, dict):
        return f"{path} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)"
    if "data" in batch:
        data, labels = batch["data"], batch.get("labels", batch.get("fine_labels"))
        shape = getattr(data, "shape", None)
        if shape is None or len(shape) != 2 or shape[1] != 3072 or labels is None or len(labels) != shape[0]:
            return (f"{path} is not a whole CIFAR-10 batch (data of shape {shape} and "
                    f"{'no' if labels is None else len(labels)} labels; expected rows of 3072 bytes, one label each)")
    return None


def check_cifar10_files(folder: Path, names: Sequence[str]) -> None:
    """Raise a ValueError naming the first unreadable batch file of ``folder`` (after torchvision failed on them)."""
    for name in names:
        problem = batch_problem(Path(folder) / name)
        if problem:
            raise ValueError(f"{problem}: replace it with the original (delete {folder} and set data.download=true "
                             f"to download CIFAR-10 again)")


def image_problem(path: str, error: BaseException) -> ValueError:
    """A one-line ValueError for an image file no decoder could read."""
    text = one_line(error)
    kind = "truncated" if "truncated" in text else "corrupt or not an image"
    return ValueError(f"{path} is {kind} ({_size(Path(path))}; {type(error).__name__}: {text}): replace or remove it "
                      f"(a changed tree is decoded again)")


def load_cache(path: Path) -> Optional[dict[str, Any]]:
    """The decoded tensors cached at ``path``; None (the file removed, one log line) when it cannot be read or is not
    whole, so the images are decoded again and the cache rebuilt."""
    import torch

    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(cached, dict) or any(key not in cached for key in CACHE_KEYS) or \
                len(cached["train_images"]) != len(cached["train_labels"]) or \
                len(cached["test_images"]) != len(cached["test_labels"]):
            raise ValueError("not the decoded tensors this package writes")
    except Exception as error:
        log.warning("image_folder: the decode cache %s is unreadable (%s: %s); decoding the images again to rebuild "
                    "it", path, type(error).__name__, one_line(error)[:200])
        Path(path).unlink(missing_ok=True)
        return None
    return cached
