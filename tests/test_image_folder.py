"""data=image_folder: a torchvision ImageFolder tree, decoded once to uint8 tensors and cached."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

import adaptive_ls.data as data_lib
from adaptive_ls.data import ImageFolderDataModule
from adaptive_ls.noise import AsymmetricNoise, NoiseSettingError, SymmetricNoise
from tests.runs import IMAGE_FOLDER_CLASSES, compose, write_tree


def module(root, **kw) -> ImageFolderDataModule:
    datamodule = ImageFolderDataModule(root=str(root), image_size=12, val_size=4, **kw)
    datamodule.setup("fit")
    return datamodule


def test_tree_is_decoded_in_torchvision_order(tmp_path):
    pixels = write_tree(tmp_path)
    dm = module(tmp_path)
    per_class = 8 + 2
    assert dm.class_names == IMAGE_FOLDER_CLASSES and dm.num_classes == 3
    assert dm.train_images.shape == (3 * per_class, 3, 12, 12) and dm.train_images.dtype == torch.uint8
    assert dm.test_images.shape == (3 * 5, 3, 12, 12)
    assert dm.clean_labels.tolist() == [c for c in range(3) for _ in range(per_class)]
    # lossless PNGs of the target size come back pixel for pixel, in file-name order within a class
    assert np.array_equal(dm.train_images[per_class + 2].permute(1, 2, 0).numpy(), pixels[("train", "dog", 2)])
    # the 20x16 JPEG was resized and the grayscale BMP expanded to RGB
    gray = dm.train_images[per_class - 1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_second_load_uses_the_cache_and_a_changed_tree_does_not(tmp_path, monkeypatch):
    write_tree(tmp_path)
    first = module(tmp_path, cache_dir=str(tmp_path / "cache"))
    assert first.cache_path.is_file() and first.cache_path.parent == tmp_path / "cache"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded an image although the cache is valid")

    monkeypatch.setattr(data_lib, "decode_image_file", no_decoding)
    second = module(tmp_path, cache_dir=str(tmp_path / "cache"))
    assert second.cache_path == first.cache_path
    assert torch.equal(second.train_images, first.train_images) and torch.equal(second.test_labels, first.test_labels)

    # touching one image changes the key: the tree is decoded again (here: our stub fails, which proves it)
    image = tmp_path / "train" / "cat" / "000.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded an image"):
        module(tmp_path, cache_dir=str(tmp_path / "cache"))


def test_noise_and_splits_work_as_for_the_other_datasets(tmp_path):
    write_tree(tmp_path, per_class=20)
    dm = module(tmp_path, noise=SymmetricNoise(0.5), noise_seed=3)
    assert dm.num_train_total == 66 and len(dm.val_index) == 4 and len(dm.train_index) == 62
    assert dm.is_noisy.sum() == 33 and torch.equal(dm.is_noisy, dm.noisy_labels != dm.clean_labels)
    assert len(dm.mean) == 3  # normalisation statistics come from the training images


def test_bad_trees_and_settings_name_the_key(tmp_path):
    write_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^test_dir='val'"):
        module(tmp_path, test_dir="val")
    (tmp_path / "test" / "zebra").mkdir()
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(tmp_path / "test" / "zebra" / "a.png")
    with pytest.raises(ValueError, match=r"^test_dir='test' has classes"):
        module(tmp_path)
    with pytest.raises(ValueError, match=r"^image_size=0"):
        ImageFolderDataModule(root=str(tmp_path), image_size=0)


def test_noise_settings_use_the_trees_own_classes(tmp_path):
    write_tree(tmp_path, per_class=10)
    flips = module(tmp_path, noise=AsymmetricNoise(0.4, class_map={"cat": "dog"}))
    matrix = flips.transition_matrix()
    assert matrix[0, 1] == pytest.approx(0.4 * 10 / 12, abs=0.1)  # cat (class 0 here, not CIFAR-10's 3) -> dog
    assert matrix[1, 1] == 1.0 and matrix[2, 2] == 1.0
    with pytest.raises(NoiseSettingError, match=r"^class_map=None"):  # no CIFAR-10 default for a tree of other classes
        ImageFolderDataModule(root=str(tmp_path), noise=AsymmetricNoise(0.2))
    with pytest.raises(NoiseSettingError, match=r"^rate=0\.7"):  # 3 classes: symmetric noise must stay below 2/3
        ImageFolderDataModule(root=str(tmp_path), noise=SymmetricNoise(0.7))
    with pytest.raises(FileNotFoundError, match=r"^train_dir='train'"):  # a missing tree fails before anything loads
        ImageFolderDataModule(root=str(tmp_path / "nowhere"))


def test_num_classes_and_in_channels_come_from_the_tree(tmp_path):
    write_tree(tmp_path)
    cfg = compose("data=image_folder", f"data.root={tmp_path}", "noise=none")
    assert (cfg.data.num_classes, cfg.data.in_channels) == (3, 3)  # three class folders, RGB
    assert compose("data=image_folder", f"data.root={tmp_path}", "data.grayscale=true").data.in_channels == 1
    assert compose("data=image_folder", f"data.root={tmp_path / 'nowhere'}").data.num_classes is None
    datamodule = module(tmp_path, num_classes=3, in_channels=1, grayscale=True)
    assert datamodule.train_images.shape[1] == 1 == datamodule.in_channels
    with pytest.raises(ValueError, match=r"^num_classes=10 does not match the data, which has 3 classes"):
        ImageFolderDataModule(root=str(tmp_path), num_classes=10)
    with pytest.raises(ValueError, match=r"^in_channels=3 does not match the data, which has 1-channel images"):
        ImageFolderDataModule(root=str(tmp_path), grayscale=True, in_channels=3)
