"""Real noise from a label file (.npy, .pt, .pth), CIFAR-10N's human labels among them, checked against the dataset."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from adaptive_ls.noise.kind import NoiseKind, NoiseSettingError, _as_label_array

log = logging.getLogger(__name__)

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


class LabelFileNotFoundError(NoiseSettingError, FileNotFoundError):
    """``path`` names no file: a bad setting, and a missing file to whoever catches FileNotFoundError."""


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
