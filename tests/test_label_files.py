"""Real-noise label files (CIFAR-10N format) and instance-dependent noise, through the data modules."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from adaptive_ls import noise as noise_lib
from adaptive_ls.data import CIFAR10DataModule, DigitsDataModule
from adaptive_ls.noise import InstanceNoise, LabelFileNoise, NoiseKind, NoiseSettingError
from tests.runs import write_cifar10, write_human_pt


@pytest.fixture()
def tiny_cifar(tmp_path):
    clean = write_cifar10(tmp_path / "data").train_labels  # 100 training images in 5 batches
    human = write_human_pt(tmp_path / "CIFAR-10_human.pt", clean)
    return tmp_path, clean, human


def cifar_module(root, noise: NoiseKind) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(root=str(root / "data"), verify=False, val_size=10, noise=noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # our tiny copy fails torchvision's checksums, on purpose
        datamodule.setup("fit")
    return datamodule


@pytest.mark.parametrize("key, rate", [("worse_label", 0.4), ("aggre_label", 0.09)])
def test_cifar10n_file_gives_its_labels_and_noise_mask(tiny_cifar, key, rate):
    tmp_path, clean, human = tiny_cifar
    datamodule = cifar_module(tmp_path, LabelFileNoise(str(tmp_path / "CIFAR-10_human.pt"), key=key,
                                                       clean_key="clean_label"))
    assert datamodule.clean_labels.tolist() == clean.tolist()
    assert datamodule.noisy_labels.tolist() == human[key].tolist()
    assert datamodule.is_noisy.tolist() == (human[key] != clean).tolist()
    assert datamodule.realized_noise_rate == pytest.approx(rate)


def test_label_file_in_another_order_is_an_error(tiny_cifar):
    tmp_path, clean, human = tiny_cifar
    shuffled = {k: v[::-1].copy() for k, v in human.items()}
    torch.save(shuffled, tmp_path / "reversed.pt")
    with pytest.raises(NoiseSettingError, match=r"^clean_key='clean_label'.*disagrees.*training order"):
        cifar_module(tmp_path, LabelFileNoise(str(tmp_path / "reversed.pt"), key="worse_label",
                                              clean_key="clean_label"))


def test_label_file_of_wrong_length_or_range_is_an_error(tiny_cifar):
    tmp_path, clean, _ = tiny_cifar
    np.save(tmp_path / "short.npy", clean[:-1])
    with pytest.raises(NoiseSettingError, match=r"^path=.*has 99 labels, expected num_samples=100"):
        cifar_module(tmp_path, LabelFileNoise(str(tmp_path / "short.npy")))
    out_of_range = clean.copy()
    out_of_range[3] = 10
    np.save(tmp_path / "range.npy", out_of_range)
    with pytest.raises(NoiseSettingError, match=r"^path=.*labels in \[0, 10\], expected \[0, 10\)"):
        cifar_module(tmp_path, LabelFileNoise(str(tmp_path / "range.npy")))
    with pytest.raises(NoiseSettingError, match=r"^path=None"):
        LabelFileNoise(None)


def test_plain_npy_label_file(tiny_cifar):
    tmp_path, clean, _ = tiny_cifar
    noisy = clean.copy()
    noisy[:25] = (noisy[:25] + 1) % 10
    np.save(tmp_path / "labels.npy", noisy)
    datamodule = cifar_module(tmp_path, LabelFileNoise(str(tmp_path / "labels.npy")))
    assert datamodule.noisy_labels.tolist() == noisy.tolist()
    assert datamodule.realized_noise_rate == pytest.approx(0.25)


def test_instance_noise_through_the_data_module():
    def digits(noise_seed: int) -> DigitsDataModule:
        datamodule = DigitsDataModule(noise=InstanceNoise(0.3), noise_seed=noise_seed)
        datamodule.setup("fit")
        return datamodule

    first, again, other = digits(0), digits(0), digits(1)
    assert torch.equal(first.noisy_labels, again.noisy_labels)  # seeded
    assert not torch.equal(first.noisy_labels, other.noisy_labels)
    assert torch.equal(first.is_noisy, first.noisy_labels != first.clean_labels)
    assert 0.22 < first.realized_noise_rate < 0.38
    # the flips are drawn from the images themselves (Xia et al. 2020), not from the labels alone
    expected, _ = noise_lib.corrupt_labels(first.clean_labels.numpy(), "instance", 0.3, 10, seed=0,
                                           features=first.train_images.numpy())
    assert first.noisy_labels.tolist() == expected.tolist()
    blank, _ = noise_lib.corrupt_labels(first.clean_labels.numpy(), "instance", 0.3, 10, seed=0,
                                        features=np.zeros_like(first.train_images.numpy()))
    assert blank.tolist() != expected.tolist()


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("this ran while loading a label file",))


def test_label_file_with_arbitrary_objects_is_refused_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"worse_label": np.zeros(3, dtype=np.int64), "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(NoiseSettingError, match=r"^path=.*not loaded for safety"):
        noise_lib.load_label_file(path, key="worse_label")
    assert "this ran" not in capsys.readouterr().out
