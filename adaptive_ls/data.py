"""Data modules with label noise: images as uint8 tensors, batches of (images, labels, index), augmentation on device.

The data module owns the noise (a :class:`~adaptive_ls.noise.NoiseKind`, bound to the dataset's classes when the
module is built): it corrupts the training labels once (``noise_seed``), carves the validation split from the *noisy*
training set, keeps the clean test set untouched and exposes the clean labels and the ``is_noisy`` mask for
diagnostics. ``index`` in every training batch is the sample's position in the training set, so per-sample
policies, ``noisy_labels.npy`` and label files (CIFAR-10N) all line up. ``train_subset=n`` trains on a fixed
class-balanced part of the training set (:func:`class_balanced_subset`); the training set is then that subset.

Images stay uint8 until the last moment. The default loader (``loader="device"``) slices batches from tensors that
live on the training device (GPU memory when training on a GPU); ``loader="dataloader"`` uses a torch DataLoader with
workers for data that does not fit there. Either way, random crop, flip and normalisation run in batches on the
device in ``on_after_batch_transfer``, seeded per epoch so a run (and a resumed run) is reproducible.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from adaptive_ls import noise as noise_lib
from adaptive_ls.batches import (  # noqa: F401 (re-exported: the data API includes augmentation and batching)
    EpochSampler,
    IndexedTensorDataset,
    TensorBatches,
    batch_random_crop,
    batch_random_hflip,
    epoch_permutation,
    epoch_shard,
    normalize,
)
from adaptive_ls.data_files import check_cifar10_files, image_problem, load_cache

log = logging.getLogger(__name__)

LOADERS = ("device", "dataloader")


# ---------------------------------------------------------------------------------------------------------------------
# Data modules
# ---------------------------------------------------------------------------------------------------------------------


def _check_matches_data(key: str, given: Any, actual: int, what: str) -> None:
    """A setting that must equal what the data has (the model is built from it); None takes the data's value.
    ``what`` describes the data's value, e.g. ``"{} classes"``."""
    if given is None:
        return
    has = what.format(actual)
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)):
        raise ValueError(f"{key}={given!r}: allowed is {actual} (the data has {has}) or null")
    if int(given) != actual:
        raise ValueError(f"{key}={given} does not match the data, which has {has}: allowed is {actual} or null")


def _check_train_subset(n: Any, num_classes: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0 or n % num_classes:
        raise ValueError(f"train_subset={n!r}: allowed is null (the full training set) or a positive multiple of "
                         f"the {num_classes} classes (the subset takes the same number of images from each)")
    return int(n)


def class_balanced_subset(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Positions of the first ``n / num_classes`` images of each class, in the data's own order (sorted).

    Depends on the clean labels alone: the same images for every seed, noise setting and machine."""
    labels = np.asarray(labels)
    per_class = _check_train_subset(n, num_classes) // num_classes
    counts = np.bincount(labels, minlength=num_classes)
    if int(n) > labels.size or counts.min() < per_class:
        raise ValueError(f"train_subset={n} is larger than the training set allows: it has {labels.size} images, "
                         f"the smallest class {int(counts.min())}, and the subset takes {per_class} of each class")
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]))


@runtime_checkable
class KnownNoise(Protocol):
    """Training data whose true labels are known next to the noisy ones (synthetic noise, CIFAR-10N): what the noise
    diagnostics and the W&B transition matrix read. Every :class:`NoisyLabelDataModule` is one once set up."""

    clean_labels: Tensor  # [N] true labels of the whole training set (validation split included)
    noisy_labels: Tensor  # [N] the labels trained on
    is_noisy: Tensor  # [N] bool, noisy != clean

    def transition_matrix(self) -> np.ndarray: ...


class NoisyLabelDataModule(pl.LightningDataModule):
    """Base class: subclasses only load uint8 arrays (``load_arrays``); noise, splits and batching live here."""

    num_classes: int = 10
    image_channels: int = 3  # what load_arrays gives; known before loading, so in_channels= is checked early
    class_names: tuple = ()
    asymmetric_map: Optional[Mapping[int, int]] = None  # default class map of AsymmetricNoise(class_map=None)
    mean: Optional[tuple] = None  # per-channel, 0–1 scale; None: computed from the training images
    std: Optional[tuple] = None

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1024,
        val_size: int = 5000,
        clean_val: bool = False,
        noise: Optional[noise_lib.NoiseKind] = None,
        noise_seed: int = 0,
        seed: int = 0,
        loader: str = "device",
        num_workers: int = 0,
        crop_padding: int = 4,
        hflip: bool = True,
        download: bool = False,
        verify: bool = True,
        num_classes: Optional[int] = None,
        in_channels: Optional[int] = None,
        train_subset: Optional[int] = None,
    ):
        super().__init__()
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size={batch_size}: allowed is an integer > 0")
        if int(eval_batch_size) <= 0:
            raise ValueError(f"eval_batch_size={eval_batch_size}: allowed is an integer > 0")
        if int(val_size) < 0:
            raise ValueError(f"val_size={val_size}: allowed is an integer >= 0 (0 = no validation split)")
        if loader not in LOADERS:
            raise ValueError(f"loader={loader!r}: allowed are {', '.join(LOADERS)}")
        for name, value in (("num_workers", num_workers), ("crop_padding", crop_padding)):
            if int(value) < 0:
                raise ValueError(f"{name}={value}: allowed is an integer >= 0")
        _check_matches_data("num_classes", num_classes, self.num_classes, "{} classes")
        _check_matches_data("in_channels", in_channels, self.image_channels, "{}-channel images")
        self.root, self.download, self.verify = str(root), bool(download), bool(verify)
        self.batch_size, self.eval_batch_size, self.val_size = int(batch_size), int(eval_batch_size), int(val_size)
        self.clean_val, self.loader, self.num_workers = bool(clean_val), loader, int(num_workers)
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        # The multiple is checked now, the size against the data in setup.
        self.train_subset = None if train_subset is None else _check_train_subset(train_subset, self.num_classes)
        self.subset_index: Optional[Tensor] = None  # positions of the subset in the full training set
        if noise is not None and not isinstance(noise, noise_lib.NoiseKind):
            raise TypeError(f"noise={noise!r}: allowed is a NoiseKind, e.g. adaptive_ls.noise.SymmetricNoise(rate=0.4) "
                            "(a config node needs its _target_), or None for clean labels")
        # Bound now (rate bound for K classes, class map by name), so a bad setting fails before any data is loaded.
        noise = noise if noise is not None else noise_lib.NoNoise()
        self.noise = noise.bind(self.num_classes, self.class_names or None, self.asymmetric_map)
        self.noise_seed, self.seed = int(noise_seed), int(seed)
        self._prepared = False
        self._aug_epoch: Optional[int] = None
        self._aug_generator: Optional[torch.Generator] = None
        self._device_cache: dict = {}

    # -- what subclasses provide --------------------------------------------------------------------------------------

    def load_arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (train_images uint8 [N, C, H, W], train_labels int64 [N], test_images, test_labels)."""
        raise NotImplementedError

    # -- noise and splits ---------------------------------------------------------------------------------------------

    def setup(self, stage: Optional[str] = None) -> None:
        """Load once, corrupt the training labels once, carve the validation split once."""
        if self._prepared:
            return
        train_x, train_y, test_x, test_y = self.load_arrays()
        # A label file has one label per image of the full set: read there, then subset like the images. Synthetic
        # noise sees the subset alone (its round(rate * n) flips are drawn for the subset's n labels).
        from_file = isinstance(self.noise, noise_lib.LabelFileNoise)
        if from_file:
            noisy, is_noisy = self.noise.apply(train_y.numpy(), train_x, self.num_classes, self.noise_seed)
        if self.train_subset is not None:
            keep = class_balanced_subset(train_y.numpy(), self.train_subset, self.num_classes)
            self.subset_index = torch.from_numpy(keep)
            train_x, train_y = train_x[self.subset_index], train_y[self.subset_index]
            if from_file:
                noisy, is_noisy = noisy[keep], is_noisy[keep]
        n = train_y.shape[0]
        if self.val_size >= n:
            raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({n} images)")
        if train_x.shape[1] != self.image_channels:
            raise ValueError(f"{type(self).__name__}.load_arrays gave {train_x.shape[1]}-channel images, but the "
                             f"class says image_channels={self.image_channels}")
        self.train_images, self.test_images = train_x.contiguous(), test_x.contiguous()
        self.clean_labels, self.test_labels = train_y.long(), test_y.long()
        if not from_file:
            noisy, is_noisy = self.noise.apply(train_y.numpy(), train_x, self.num_classes, self.noise_seed)
        self.noisy_labels = torch.as_tensor(noisy, dtype=torch.long)
        self.is_noisy = torch.as_tensor(is_noisy, dtype=torch.bool)
        split = torch.randperm(n, generator=torch.Generator().manual_seed(self.noise_seed))
        self.val_index, self.train_index = split[: self.val_size].sort().values, split[self.val_size:].sort().values
        if self.mean is None:
            pixels = self.train_images[self.train_index].float().div_(255.0)
            self.mean = tuple(pixels.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(pixels.std(dim=(0, 2, 3)).tolist())
        self._mean, self._std = torch.tensor(self.mean), torch.tensor(self.std)
        self._prepared = True

    @property
    def num_train_total(self) -> int:
        """Size of the training set (train + validation; the subset with ``train_subset``); per-sample memories are
        this long."""
        return int(self.clean_labels.shape[0])

    @property
    def in_channels(self) -> int:
        return self.image_channels

    @property
    def realized_noise_rate(self) -> float:
        return float(self.is_noisy.float().mean())

    def transition_matrix(self) -> np.ndarray:
        """Empirical P(noisy label = j | true label = i) over the training set."""
        return noise_lib.transition_matrix(self.clean_labels.numpy(), self.noisy_labels.numpy(), self.num_classes)

    # -- loaders ------------------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _on_device(self, name: str, tensor: Tensor, device: torch.device) -> Tensor:
        key = (name, str(device))
        if key not in self._device_cache:
            self._device_cache[key] = tensor.to(device)
        return self._device_cache[key]

    def _split(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        if split == "test":
            return self.test_images, self.test_labels, torch.arange(self.test_labels.shape[0])
        index = self.val_index if split == "val" else self.train_index  # "train" and "train_eval"
        labels = self.clean_labels if (split == "val" and self.clean_val) else self.noisy_labels
        return self.train_images, labels, index

    def _loader(self, split: str):
        images, labels, index = self._split(split)
        train = split == "train"
        batch_size = self.batch_size if train else self.eval_batch_size
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if (trainer is not None and train) else (0, 1)
        drop_last = train and len(index) // max(world, 1) > batch_size  # BatchNorm dislikes a last batch of one
        if self.loader == "dataloader":
            dataset = IndexedTensorDataset(images[index], labels[index], index)
            sampler = EpochSampler(dataset, num_replicas=world, rank=rank, seed=self.seed) if train else None
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                              num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                              persistent_workers=self.num_workers > 0)
        device = self._device()
        return TensorBatches(
            self._on_device("test_images" if split == "test" else "train_images", images, device),
            self._on_device(f"{split}_labels", labels, device),
            self._on_device(f"{split}_index", index, device),
            batch_size, shuffle=train, drop_last=drop_last, seed=self.seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None, rank=rank, world_size=world,
        )

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val") if self.val_size > 0 else []

    def test_dataloader(self):
        return self._loader("test")

    def train_eval_dataloader(self):
        """The training split in order, without augmentation: for diagnostics on noisy vs clean samples."""
        return self._loader("train_eval")

    # -- augmentation on the device -----------------------------------------------------------------------------------

    def _augmentation_generator(self, device: torch.device) -> torch.Generator:
        trainer = getattr(self, "trainer", None)
        epoch = trainer.current_epoch if trainer is not None else 0
        if self._aug_generator is None or self._aug_epoch != epoch or self._aug_generator.device != device:
            rank = trainer.global_rank if trainer is not None else 0  # each process draws its own crops and flips
            self._aug_generator = torch.Generator(device=device).manual_seed(
                self.seed * 100_019 + epoch + 1 + 7_919 * rank)
            self._aug_epoch = epoch
        return self._aug_generator

    def augment(self, images: Tensor) -> Tensor:
        """Random crop (zero padding ``crop_padding``) and horizontal flip, for a whole uint8 batch."""
        generator = self._augmentation_generator(images.device)
        images = batch_random_crop(images, self.crop_padding, generator)
        return batch_random_hflip(images, generator) if self.hflip else images

    def prepare_batch(self, batch, augment: bool):
        """(uint8 images, labels, index) on the device → (normalised float images, labels, index), augmented or not."""
        images, labels, index = batch
        if augment:
            images = self.augment(images)
        mean, std = self._on_device("mean", self._mean, images.device), self._on_device("std", self._std, images.device)
        return normalize(images, mean, std), labels, index

    def train_sample(self, n: int) -> Tensor:
        """The first ``n`` training-split images, normalised and not augmented: for layers set from data."""
        images = self.train_images[self.train_index[:n]]
        return normalize(images, self._mean, self._std)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        return self.prepare_batch(batch, augment=trainer is not None and trainer.training)


class DigitsDataModule(NoisyLabelDataModule):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 real images): offline, for the quickstart and tests.

    A fixed stratified 20% is the clean test set (the same for every seed); the rest is the noisy training set.
    """

    num_classes = 10
    image_channels = 1
    class_names = tuple(str(d) for d in range(10))
    asymmetric_map = noise_lib.MNIST_ASYMMETRIC_MAP  # Patrini et al. 2017's MNIST flips
    test_fraction = 0.2
    image_size = (8, 8)  # known before loading: the net is checked on a batch of this shape (adaptive_ls.preflight)

    def __init__(self, val_size: int = 150, batch_size: int = 64, crop_padding: int = 1, hflip: bool = False, **kw):
        super().__init__(val_size=val_size, batch_size=batch_size, crop_padding=crop_padding, hflip=hflip, **kw)

    def load_arrays(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        rng = np.random.default_rng(0)  # fixed: the test set must not move with the noise or training seed
        test = np.concatenate([
            rng.permutation(np.flatnonzero(digits.target == c))[: round(self.test_fraction * np.sum(digits.target == c))]
            for c in range(10)
        ])
        is_test = np.zeros(len(labels), dtype=bool)
        is_test[test] = True
        train_i, test_i = torch.from_numpy(np.flatnonzero(~is_test)), torch.from_numpy(np.flatnonzero(is_test))
        return images[train_i], labels[train_i], images[test_i], labels[test_i]


class CIFAR10DataModule(NoisyLabelDataModule):
    """CIFAR-10 from torchvision's on-disk layout (``<root>/cifar-10-batches-py``).

    Downloaded by torchvision when missing and ``download=True``. Checksums are verified by default; ``verify=False``
    loads a local copy that fails them (re-encoded or subset copies), with a warning.
    """

    num_classes = 10
    class_names = noise_lib.CIFAR10_CLASSES
    asymmetric_map = noise_lib.CIFAR10_ASYMMETRIC_MAP
    image_size = (32, 32)
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def load_arrays(self):
        train = load_cifar10(self.root, train=True, download=self.download, verify=self.verify)
        test = load_cifar10(self.root, train=False, download=False, verify=self.verify, _warn=False)

        def to_tensors(ds):
            return (torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))),
                    torch.as_tensor(ds.targets, dtype=torch.long))

        return (*to_tensors(train), *to_tensors(test))


def load_cifar10(root: str, train: bool, download: bool = False, verify: bool = True, _warn: bool = True):
    """torchvision's CIFAR10 reader, with errors that name the config key to change and an opt-out of checksums."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = Path(root) / CIFAR10.base_folder
    files = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(
            f"root={root}: CIFAR-10 not found (missing {', '.join(missing)} in {folder}). Point root at the "
            f"folder holding cifar-10-batches-py, or set download=true to download it"
        )
    if download and missing:
        CIFAR10(root, train=train, download=True)
    checked = [(name, md5) for name, md5 in CIFAR10.train_list + CIFAR10.test_list]
    bad = [name for name, md5 in checked if not check_integrity(str(folder / name), md5)]
    if bad:  # a broken file is named as such, not as a re-encoded copy that verify=false would load
        check_cifar10_files(folder, bad)
    if bad and verify:
        raise ValueError(
            f"verify=true: {', '.join(bad)} in {folder} fail torchvision's CIFAR-10 checksums. For a local copy "
            f"that was re-encoded or subset on purpose, set verify=false"
        )
    if bad and _warn:
        warnings.warn(f"CIFAR-10 files in {folder} do not match torchvision's checksums ({', '.join(bad)}); loading "
                      f"them anyway because data.verify=false", stacklevel=2)

    class _UncheckedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:  # checked (or waived) above
            return True

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                import pickle

                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    try:
        return _UncheckedCIFAR10(root, train=train, download=False)
    except Exception:
        check_cifar10_files(folder, files)  # names the file torchvision could not read
        raise


# ---------------------------------------------------------------------------------------------------------------------
# Any ImageFolder tree (real noisy-label datasets are distributed that way), decoded once and cached
# ---------------------------------------------------------------------------------------------------------------------

IMAGE_FOLDER_CACHE_VERSION = 1  # bump when the cached layout or the decoding changes: old caches are then ignored


def decode_image_file(path: str, size: tuple[int, int], grayscale: bool = False) -> Tensor:
    """One image file → uint8 [C, H, W] of ``size`` (antialiased resize): torchvision's decoders, PIL for the rest."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

    try:
        image = decode_image(path, mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB)
    except RuntimeError:  # formats torchvision does not decode (bmp, tiff, ppm): PIL
        from PIL import Image

        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("L" if grayscale else "RGB"))
        except Exception as error:  # truncated or not an image: name the file
            raise image_problem(path, error) from None
        image = torch.from_numpy(array.copy()).reshape(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    if tuple(image.shape[-2:]) != tuple(size):
        image = resize(image, list(size), antialias=True)
    return image.contiguous()


class ImageFolderDataModule(NoisyLabelDataModule):
    """Any torchvision ImageFolder tree: ``<root>/<train_dir>/<class>/<image>`` and the same for ``test_dir``.

    Classes are the sorted folder names (torchvision's ``find_classes``) and the training order is torchvision's
    (class, then file name): a label file for ``noise=file`` must follow it. Every image is decoded once, resized to
    ``image_size`` and kept as one uint8 tensor, so the tree must fit in memory at that size (50k images at 32×32:
    150 MB). The decoded tensors are cached in ``cache_dir`` under a key made of the file list, the files' sizes and
    modification times and the decoding settings: later runs load one file, and any change to the tree re-decodes.
    """

    def __init__(
        self,
        root: str = "data",
        train_dir: str = "train",
        test_dir: str = "test",
        image_size: Any = 32,
        grayscale: bool = False,
        cache_dir: Optional[str] = None,
        decode_workers: int = 4,
        **kw,
    ):
        # The classes are the folder names: known before anything is decoded, so the noise settings (a class map by
        # name, the rate bound for K classes) are checked against this tree's classes, not CIFAR-10's.
        self.root, self.train_dir, self.test_dir = str(root), str(train_dir), str(test_dir)
        self.class_names = tuple(self._scan(self.train_dir, samples=False)[0])
        self.num_classes = len(self.class_names)
        self.image_channels = 1 if grayscale else 3
        super().__init__(root=root, **kw)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
            raise ValueError(f"image_size={image_size!r}: allowed is a positive int or a [height, width] pair")
        if int(decode_workers) < 0:
            raise ValueError(f"decode_workers={decode_workers}: allowed is an integer >= 0 (0: decode serially)")
        self.image_size = size
        self.grayscale, self.decode_workers = bool(grayscale), int(decode_workers)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(self.root) / ".adaptive_ls_cache"
        self.cache_path: Optional[Path] = None  # the cache file this module read or wrote

    def _scan(self, split_dir: str, samples: bool = True) -> tuple[list[str], list[tuple[str, int]]]:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        folder = Path(self.root) / split_dir
        key = "train_dir" if split_dir == self.train_dir else "test_dir"
        if not folder.is_dir():
            raise FileNotFoundError(f"{key}={split_dir!r}: {folder} is not a folder (root={self.root!r}); an "
                                    f"ImageFolder tree has <root>/<split>/<class>/<image> files")
        try:
            classes, class_to_idx = find_classes(str(folder))
            found = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS) if samples else []
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{key}={split_dir!r}: {err}") from None
        return classes, found

    def _cache_key(self, samples: list[tuple[str, int]]) -> str:
        import hashlib

        digest = hashlib.sha256(repr((IMAGE_FOLDER_CACHE_VERSION, self.image_size, self.grayscale)).encode())
        root = Path(self.root)
        for path, label in samples:
            stat = os.stat(path)
            digest.update(f"{Path(path).relative_to(root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()[:20]

    def _decode(self, samples: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
        paths = [path for path, _ in samples]

        def decode(path: str) -> Tensor:
            return decode_image_file(path, self.image_size, self.grayscale)

        if self.decode_workers > 1 and len(paths) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.decode_workers) as pool:  # torch's decoders release the GIL
                images = list(pool.map(decode, paths))
        else:
            images = [decode(path) for path in paths]
        return torch.stack(images), torch.tensor([label for _, label in samples], dtype=torch.long)

    def load_arrays(self):
        classes, train_samples = self._scan(self.train_dir)
        test_classes, test_samples = self._scan(self.test_dir)
        if test_classes != classes:
            raise ValueError(f"test_dir={self.test_dir!r} has classes {test_classes}, but train_dir="
                             f"{self.train_dir!r} has {classes}: both need the same class folders")
        self.cache_path = self.cache_dir / f"imagefolder-{self._cache_key(train_samples + test_samples)}.pt"
        cached = load_cache(self.cache_path) if self.cache_path.is_file() else None  # a broken one is rebuilt
        if cached is not None:
            log.info("image_folder: %d + %d images from the cache %s", len(cached["train_labels"]),
                     len(cached["test_labels"]), self.cache_path)
            return cached["train_images"], cached["train_labels"], cached["test_images"], cached["test_labels"]
        train_x, train_y = self._decode(train_samples)
        test_x, test_y = self._decode(test_samples)
        self._write_cache({"train_images": train_x, "train_labels": train_y, "test_images": test_x,
                           "test_labels": test_y})
        return train_x, train_y, test_x, test_y

    def _write_cache(self, arrays: dict) -> None:
        """Atomic write; a read-only data folder only costs the speed-up (with a warning), never the run."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
            torch.save(arrays, tmp)
            tmp.replace(self.cache_path)
            log.info("image_folder: decoded images cached in %s", self.cache_path)
        except OSError as err:
            warnings.warn(f"image_folder: could not write the decode cache in data.cache_dir={str(self.cache_dir)!r}"
                          f" ({err}); the next run decodes the images again", stacklevel=2)
