"""Tests for adaptive_ls.data: CIFAR-10 from torchvision's on-disk layout, noise and splits, batches, augmentation."""
from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptive_ls.data import CIFAR10DataModule, DigitsDataModule, batch_random_crop, batch_random_hflip
from adaptive_ls.noise import NoiseSettingError, NoNoise, SymmetricNoise
from tests.runs import compose

SYMMETRIC_40 = SymmetricNoise(0.4)


def cifar_module(tiny, **kwargs) -> CIFAR10DataModule:
    """A set-up module over the tiny CIFAR-10 (100 train, 30 test): 20 for validation, 80 in batches of 16."""
    settings = dict(root=str(tiny.root), verify=False, val_size=20, batch_size=16, eval_batch_size=7,
                    noise=SYMMETRIC_40, noise_seed=0, seed=0)
    settings.update(kwargs)
    dm = CIFAR10DataModule(**settings)
    with pytest.warns(UserWarning, match="data.verify=false"):
        dm.setup("fit")
    return dm


def one_epoch(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, index = zip(*loader)
    return torch.cat(images), torch.cat(labels), torch.cat(index)


# ---------------------------------------------------------------------------------------------------------------------
# Loading CIFAR-10
# ---------------------------------------------------------------------------------------------------------------------


def test_verify_true_rejects_files_that_fail_the_checksums(tiny_cifar10):
    dm = CIFAR10DataModule(root=str(tiny_cifar10.root), val_size=20)  # verify defaults to true
    with pytest.raises(ValueError, match=r"^verify=true.*checksums.*set verify=false"):
        dm.setup("fit")


def test_verify_false_loads_the_files_with_a_warning(tiny_cifar10):
    dm = cifar_module(tiny_cifar10, noise=NoNoise())
    assert dm.train_images.dtype == torch.uint8 and dm.train_images.shape == (100, 3, 32, 32)
    np.testing.assert_array_equal(dm.train_images.numpy(), tiny_cifar10.train_images)  # batches 1..5 in order
    np.testing.assert_array_equal(dm.clean_labels.numpy(), tiny_cifar10.train_labels)
    np.testing.assert_array_equal(dm.test_images.numpy(), tiny_cifar10.test_images)
    np.testing.assert_array_equal(dm.test_labels.numpy(), tiny_cifar10.test_labels)
    assert dm.num_train_total == 100 and dm.in_channels == 3 and dm.num_classes == 10


def test_missing_data_without_download_names_root_and_download(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError, match=r"^root=.*nowhere.*set download=true"):
        dm.setup("fit")


def test_a_missing_file_is_named(tiny_cifar10):
    (tiny_cifar10.root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        CIFAR10DataModule(root=str(tiny_cifar10.root), verify=False).setup("fit")


@pytest.mark.parametrize("kwargs, key", [
    ({"batch_size": 0}, r"^batch_size=0"),
    ({"eval_batch_size": -1}, r"^eval_batch_size=-1"),
    ({"val_size": -5}, r"^val_size=-5"),
    ({"loader": "gpu"}, r"^loader='gpu'.*device, dataloader"),
    ({"num_classes": 100}, r"^num_classes=100 does not match the data, which has 10 classes"),
    ({"num_classes": "10"}, r"^num_classes='10': allowed is 10"),
    ({"in_channels": 1}, r"^in_channels=1 does not match the data, which has 3-channel images"),
])
def test_bad_settings_fail_at_construction_naming_the_key(tmp_path, kwargs, key):
    with pytest.raises(ValueError, match=key):
        CIFAR10DataModule(root=str(tmp_path), **kwargs)


def test_num_classes_and_in_channels_that_match_the_data_are_accepted(tiny_cifar10):
    dm = CIFAR10DataModule(root=str(tiny_cifar10.root), num_classes=10, in_channels=3)
    assert dm.num_classes == 10 and dm.in_channels == 3  # known before anything is loaded
    digits = DigitsDataModule(num_classes=10, in_channels=1)
    assert digits.in_channels == 1
    with pytest.raises(ValueError, match=r"^in_channels=3 does not match the data, which has 1-channel images"):
        DigitsDataModule(in_channels=3)


def test_a_bad_noise_setting_fails_when_the_module_is_built(tmp_path):
    with pytest.raises(NoiseSettingError, match=r"^rate=0\.95 is out of range.*< \(K-1\)/K = 0\.9"):
        CIFAR10DataModule(root=str(tmp_path / "nowhere"), noise=SymmetricNoise(0.95))  # nothing there to load
    with pytest.raises(TypeError, match=r"^noise=\{'kind': 'symmetric'.*NoiseKind"):
        CIFAR10DataModule(root=str(tmp_path), noise={"kind": "symmetric", "rate": 0.4})


def test_val_size_must_leave_training_data(tiny_cifar10):
    dm = CIFAR10DataModule(root=str(tiny_cifar10.root), verify=False, val_size=100)
    with pytest.raises(ValueError, match=r"^val_size=100 must be smaller than the training set \(100"):
        with pytest.warns(UserWarning):
            dm.setup("fit")


# ---------------------------------------------------------------------------------------------------------------------
# Noise and splits
# ---------------------------------------------------------------------------------------------------------------------


def test_noise_touches_training_labels_only(tiny_cifar10):
    dm = cifar_module(tiny_cifar10)
    clean, noisy = dm.clean_labels.numpy(), dm.noisy_labels.numpy()
    np.testing.assert_array_equal(clean, tiny_cifar10.train_labels)
    np.testing.assert_array_equal(dm.test_labels.numpy(), tiny_cifar10.test_labels)  # the test set stays clean
    assert int((noisy != clean).sum()) == 40  # exactly round(0.4 * 100)
    np.testing.assert_array_equal(dm.is_noisy.numpy(), noisy != clean)
    assert dm.realized_noise_rate == pytest.approx(0.4)
    matrix = dm.transition_matrix()
    assert matrix.shape == (10, 10) and np.allclose(matrix.sum(1), 1)
    assert np.trace(matrix) / 10 == pytest.approx(0.6, abs=0.15)  # ~60% of each class keeps its label


def test_noise_depends_on_noise_seed_only(tiny_cifar10):
    base = cifar_module(tiny_cifar10).noisy_labels
    assert torch.equal(cifar_module(tiny_cifar10, seed=7).noisy_labels, base)  # training seed: same noise
    assert not torch.equal(cifar_module(tiny_cifar10, noise_seed=1).noisy_labels, base)


def test_validation_split_is_carved_from_the_noisy_training_set(tiny_cifar10):
    dm = cifar_module(tiny_cifar10)
    train, val = set(dm.train_index.tolist()), set(dm.val_index.tolist())
    assert len(val) == 20 and len(train) == 80
    assert not train & val and train | val == set(range(100))
    assert bool(dm.is_noisy[dm.val_index].any())  # some validation labels are wrong, as in real noisy data
    _, labels, index = one_epoch(dm.val_dataloader())
    assert set(index.tolist()) == val
    assert torch.equal(labels, dm.noisy_labels[index])
    # clean_val=true validates on the true labels instead
    dm_clean = cifar_module(tiny_cifar10, clean_val=True)
    _, labels, index = one_epoch(dm_clean.val_dataloader())
    assert torch.equal(labels, dm_clean.clean_labels[index])
    # the split moves with the noise seed, not the training seed
    assert torch.equal(cifar_module(tiny_cifar10, seed=5).val_index, dm.val_index)
    assert not torch.equal(cifar_module(tiny_cifar10, noise_seed=5).val_index, dm.val_index)


def test_no_validation_split(tiny_cifar10):
    dm = cifar_module(tiny_cifar10, val_size=0)
    assert len(dm.train_index) == 100 and len(dm.val_index) == 0 and dm.val_dataloader() == []


# ---------------------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_training_batches_carry_the_full_training_set_index(tiny_cifar10, loader):
    dm = cifar_module(tiny_cifar10, loader=loader)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and all(b[0].shape == (16, 3, 32, 32) for b in batches)
    for raw in batches:
        images, labels, index = dm.on_after_batch_transfer(raw, 0)
        assert images.dtype == torch.float32 and labels.dtype == torch.long
        assert torch.equal(raw[0], dm.train_images[index])  # index is the position in the full training set
        assert torch.equal(labels, dm.noisy_labels[index])
        assert set(index.tolist()) <= set(dm.train_index.tolist())
        mean, std = torch.tensor(CIFAR10DataModule.mean), torch.tensor(CIFAR10DataModule.std)
        expected = (dm.train_images[index].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        torch.testing.assert_close(images, expected)  # no trainer, not training: normalised, not augmented


def test_device_and_dataloader_loaders_give_the_same_samples(tiny_cifar10):
    epochs = {}
    for loader in ("device", "dataloader"):
        dm = cifar_module(tiny_cifar10, loader=loader)
        images, labels, index = one_epoch(dm.train_dataloader())
        order = index.argsort()
        epochs[loader] = (images[order], labels[order], index[order])
        assert torch.equal(index[order], dm.train_index)  # every training sample once per epoch
    for a, b in zip(epochs["device"], epochs["dataloader"]):
        assert torch.equal(a, b)


def test_device_loader_shuffles_per_epoch_reproducibly(tiny_cifar10):
    loader = cifar_module(tiny_cifar10).train_dataloader()
    first, second = one_epoch(loader)[2], one_epoch(loader)[2]
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)
    again = cifar_module(tiny_cifar10).train_dataloader()
    assert torch.equal(one_epoch(again)[2], first) and torch.equal(one_epoch(again)[2], second)
    other_seed = cifar_module(tiny_cifar10, seed=1).train_dataloader()
    assert not torch.equal(one_epoch(other_seed)[2], first)


def test_test_batches_are_the_clean_test_set_in_order(tiny_cifar10):
    dm = cifar_module(tiny_cifar10)
    images, labels, index = one_epoch(dm.test_dataloader())
    assert torch.equal(index, torch.arange(30)) and torch.equal(labels, torch.as_tensor(tiny_cifar10.test_labels))
    assert torch.equal(images, dm.test_images)


# ---------------------------------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------------------------------


def random_images(n=64, c=3, size=8, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_with_zero_padding_is_the_identity():
    images = random_images()
    assert torch.equal(batch_random_crop(images, 0, torch.Generator().manual_seed(0)), images)


def test_each_crop_is_a_window_of_the_zero_padded_image():
    images, padding = random_images(), 2
    out = batch_random_crop(images, padding, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (padding,) * 4)
    offsets = []
    for i in range(images.shape[0]):
        matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 8, dx:dx + 8])]
        assert matches, f"crop {i} is not a window of its padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 10  # the offsets really are random (25 possible)


def test_crop_and_flip_are_reproducible_from_the_generator_seed():
    images = random_images()
    crop = [batch_random_crop(images, 4, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(crop[0], crop[1]) and not torch.equal(crop[0], crop[2])
    flip = [batch_random_hflip(images, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(flip[0], flip[1]) and not torch.equal(flip[0], flip[2])


def test_hflip_flips_about_half_the_images():
    images = random_images(n=400)
    out = batch_random_hflip(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, images)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert torch.all(flipped ^ kept)  # each image is either itself or its mirror image
    assert 140 < int(flipped.sum()) < 260


def test_module_augment_crops_and_flips(tiny_cifar10):
    dm = cifar_module(tiny_cifar10, crop_padding=4, hflip=True)
    images = dm.train_images[:32]
    out = dm.augment(images)
    padded = F.pad(images, (4,) * 4)
    for i in range(32):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert not torch.equal(out, images)


# ---------------------------------------------------------------------------------------------------------------------
# Digits
# ---------------------------------------------------------------------------------------------------------------------


def test_digits_has_all_1797_images_and_a_fixed_clean_test_set():
    a = DigitsDataModule(noise=SYMMETRIC_40, noise_seed=0, seed=0)
    b = DigitsDataModule(noise=SYMMETRIC_40, noise_seed=3, seed=5)
    a.setup("fit"), b.setup("fit")
    assert a.num_train_total + len(a.test_labels) == 1797
    assert a.train_images.shape[1:] == (1, 8, 8) and a.train_images.dtype == torch.uint8
    assert int(a.train_images.max()) == 255 and a.in_channels == 1
    # the test set (and the clean training labels) do not move with noise_seed or seed
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.test_labels, b.test_labels)
    assert torch.equal(a.clean_labels, b.clean_labels)
    assert not torch.equal(a.noisy_labels, b.noisy_labels)  # the noise does
    # stratified 20%: every class has ~20% of its images in the test set
    counts = torch.bincount(a.test_labels, minlength=10).float()
    totals = counts + torch.bincount(a.clean_labels, minlength=10).float()
    assert torch.allclose(counts / totals, torch.full((10,), 0.2), atol=0.01)
    # noise on the training labels only, exactly round(0.4 N)
    assert int(a.is_noisy.sum()) == round(0.4 * a.num_train_total)
    assert torch.equal(a.is_noisy, a.noisy_labels != a.clean_labels)
    assert len(a.val_index) == 150 and len(a.train_index) == a.num_train_total - 150


def test_the_data_config_alone_builds_the_noisy_data_module():
    datamodule = hydra.utils.instantiate(compose("data=digits", "noise=symmetric", "noise.rate=0.4", "noise_seed=3",
                                                 "seed=5").data)
    assert isinstance(datamodule, DigitsDataModule) and isinstance(datamodule.noise, SymmetricNoise)
    assert datamodule.noise.rate == 0.4 and datamodule.noise_seed == 3 and datamodule.seed == 5
    datamodule.setup("fit")
    assert int(datamodule.is_noisy.sum()) == round(0.4 * datamodule.num_train_total)
    assert datamodule.realized_noise_rate == pytest.approx(0.4, abs=1e-3)
    assert not torch.equal(datamodule.noisy_labels, datamodule.clean_labels)
    reference = DigitsDataModule(noise=SymmetricNoise(0.4), noise_seed=3)
    reference.setup("fit")
    assert torch.equal(datamodule.noisy_labels, reference.noisy_labels)


@pytest.mark.parametrize("option", ["digits", "cifar10"])
def test_data_configs_name_the_classes_and_channels_the_data_has(option):
    cfg = compose(f"data={option}", "noise=none")
    datamodule = hydra.utils.instantiate(cfg.data)  # constructing checks them; nothing is loaded
    assert (cfg.data.num_classes, cfg.data.in_channels) == (datamodule.num_classes, datamodule.in_channels)


# ---------------------------------------------------------------------------------------------------------------------
# train_subset: a fixed class-balanced part of the training set
# ---------------------------------------------------------------------------------------------------------------------


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))


def test_train_subset_is_the_first_n_over_k_images_of_each_class(tiny_cifar10):
    dm = cifar_module(tiny_cifar10, train_subset=50, val_size=10)
    expected = first_per_class(tiny_cifar10.train_labels, 5)
    np.testing.assert_array_equal(dm.subset_index.numpy(), expected)
    np.testing.assert_array_equal(dm.train_images.numpy(), tiny_cifar10.train_images[expected])
    np.testing.assert_array_equal(dm.clean_labels.numpy(), tiny_cifar10.train_labels[expected])
    assert np.bincount(dm.clean_labels.numpy(), minlength=10).tolist() == [5] * 10
    assert dm.num_train_total == 50 and len(dm.noisy_labels) == len(dm.is_noisy) == 50
    np.testing.assert_array_equal(dm.test_labels.numpy(), tiny_cifar10.test_labels)  # the whole test set
    assert cifar_module(tiny_cifar10).subset_index is None  # null: the full training set


def test_train_subset_is_independent_of_seeds_and_noise(tiny_cifar10):
    reference = cifar_module(tiny_cifar10, train_subset=50, val_size=10).subset_index
    for kwargs in ({"seed": 3}, {"noise_seed": 7}, {"noise": NoNoise()}, {"noise": SymmetricNoise(0.6)}):
        assert torch.equal(cifar_module(tiny_cifar10, train_subset=50, val_size=10, **kwargs).subset_index, reference)


def test_noise_and_validation_split_are_drawn_on_the_subset(tiny_cifar10):
    dm = cifar_module(tiny_cifar10, train_subset=50, val_size=10)
    assert int(dm.is_noisy.sum()) == 20 and dm.realized_noise_rate == pytest.approx(0.4)  # round(0.4 * 50)
    assert torch.equal(dm.is_noisy, dm.noisy_labels != dm.clean_labels)
    assert len(dm.val_index) == 10 and len(dm.train_index) == 40
    assert sorted(torch.cat([dm.val_index, dm.train_index]).tolist()) == list(range(50))
    _, _, index = one_epoch(dm.train_dataloader())
    assert int(index.max()) < 50  # batch indices address the subset's tensors
    again = cifar_module(tiny_cifar10, train_subset=50, val_size=10)
    assert torch.equal(again.noisy_labels, dm.noisy_labels) and torch.equal(again.val_index, dm.val_index)


def test_a_label_file_has_one_label_per_full_set_image_and_is_subset_the_same_way(tiny_cifar10, tmp_path):
    from adaptive_ls.noise import LabelFileNoise

    given = (tiny_cifar10.train_labels + 1) % 10
    given[::3] = tiny_cifar10.train_labels[::3]
    np.save(tmp_path / "labels.npy", given)
    dm = cifar_module(tiny_cifar10, train_subset=50, val_size=10, noise=LabelFileNoise(tmp_path / "labels.npy"))
    keep = first_per_class(tiny_cifar10.train_labels, 5)
    np.testing.assert_array_equal(dm.noisy_labels.numpy(), given[keep])
    np.testing.assert_array_equal(dm.is_noisy.numpy(), given[keep] != tiny_cifar10.train_labels[keep])
    np.save(tmp_path / "subset_labels.npy", given[keep])  # one label per subset image: not accepted
    with pytest.raises(NoiseSettingError, match=r"has 50 labels, expected num_samples=100"):
        cifar_module(tiny_cifar10, train_subset=50, val_size=10, noise=LabelFileNoise(tmp_path / "subset_labels.npy"))


@pytest.mark.parametrize("value", [55, 0, -10, True, 2.5, "50"])
def test_train_subset_not_a_multiple_of_the_classes_fails_at_construction(tmp_path, value):
    with pytest.raises(ValueError, match=r"^train_subset=.*multiple of the 10 classes"):
        CIFAR10DataModule(root=str(tmp_path), train_subset=value)


@pytest.mark.parametrize("value", [110, 200])
def test_train_subset_larger_than_the_training_set_names_the_key(tiny_cifar10, value):
    dm = CIFAR10DataModule(root=str(tiny_cifar10.root), verify=False, val_size=10, train_subset=value)
    with pytest.raises(ValueError, match=rf"^train_subset={value} is larger than the training set allows: it has 100"):
        with pytest.warns(UserWarning):
            dm.setup("fit")


def test_val_size_is_checked_against_the_subset(tiny_cifar10):
    dm = CIFAR10DataModule(root=str(tiny_cifar10.root), verify=False, val_size=50, train_subset=50)
    with pytest.raises(ValueError, match=r"^val_size=50 must be smaller than the training set \(50"):
        with pytest.warns(UserWarning):
            dm.setup("fit")


@pytest.mark.parametrize("option", ["digits", "cifar10", "image_folder"])
def test_data_configs_default_to_the_full_training_set(option):
    assert compose(f"data={option}").data.train_subset is None


def test_cifar10_cpu_experiment_uses_a_balanced_subset():
    cfg = compose("experiment=cifar10_cpu", hydra=True)
    assert (cfg.data.train_subset, cfg.data.val_size, cfg.data.crop_padding, cfg.data.hflip) == (10000, 1000, 0, False)
    assert list(cfg.model.widths) == [32, 64, 128] and cfg.hydra.sweeper.params.noise == "sym40,sym60"
    assert cfg.hydra.sweeper.params.smoothing == "none,fixed,annealed,adaptive,alasca,self_adaptive"
