"""Every new policy, noise kind and data module runs through the entry point (hydra.compose + train.run)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adaptive_ls.data import DigitsDataModule
from tests.runs import DIGITS_ON_CPU, run_in, write_cifar10, write_human_pt, write_tree

# A narrow CNN, one validation batch, and every result (the best checkpoint tested too).
RESEARCH_RUN = (*DIGITS_ON_CPU, "model.width=8", "+trainer.limit_val_batches=1")
DIAG_KEYS = ("diag/memorized", "diag/corrected", "diag/acc_clean_subset", "diag/eps_noisy", "diag/eps_clean")


def run_entry(tmp_path, *overrides: str) -> dict:
    """A run of RESEARCH_RUN + ``overrides`` in tmp_path, which must complete."""
    results = run_in(tmp_path, *overrides, preset=RESEARCH_RUN)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "completed"
    return results


@pytest.mark.parametrize("smoothing, params", [
    ("online", {"smoothing/alpha": 0.5, "smoothing/init": "uniform"}),
    ("self_distill", {"smoothing/alpha_T": 0.8}),
    ("negative", {"smoothing/eps": -0.2}),
])
@pytest.mark.slow
def test_new_policies_run_and_report_diagnostics(tmp_path, smoothing, params):
    results = run_entry(tmp_path, f"smoothing={smoothing}", "noise=symmetric")
    expected_name = "fixed" if smoothing == "negative" else smoothing
    assert results["smoothing"] == expected_name
    assert {k: results[k] for k in params} == params
    for key in DIAG_KEYS:  # final values flat, and a curve in the history
        assert 0.0 <= results[key] <= 1.0 or key.startswith("diag/eps") and results[key] < 0, key
        assert [key in row for row in results["history"]] == [True, True], key
    if smoothing == "self_distill":  # epoch 0 has no teacher yet (eps 0), epoch 1 does: alpha = 0.8 * 2/2,
        # except for the <= 8 samples drop_last left out of epoch 0 (of ~515 corrupted ones)
        first, second = (row["diag/eps_noisy"] for row in results["history"])
        assert first == 0.0 and 0.8 * (1 - 8 / 500) <= second <= 0.8 + 1e-6
    if smoothing == "negative":
        assert results["diag/eps_clean"] == pytest.approx(-0.2)


@pytest.mark.slow
def test_calibration_and_temperature_scaling_land_in_results(tmp_path):
    results = run_entry(tmp_path, "smoothing=fixed", "callbacks.diagnostics.mode=eval_pass")
    for key in ("test/acc", "test/ece", "test/ece_adaptive", "test/mce", "test/nll", "test/brier",
                "test/temperature", "test/ts_ece", "test/ts_nll", "test/ts_brier", "test/ts_acc"):
        assert np.isfinite(results[key]), key
    assert results["test/ts_acc"] == pytest.approx(results["test/acc"])  # a temperature never changes the argmax
    assert results["test/mce"] >= results["test/ece"]
    bins = json.loads((tmp_path / "reliability.json").read_text())
    count = np.array(bins["count"])
    ece = np.sum(count * np.abs(np.array(bins["accuracy"]) - np.array(bins["confidence"]))) / count.sum()
    assert ece == pytest.approx(results["test/ece"], abs=1e-5)
    assert count.sum() == 359  # the digits test set
    assert all(key in results for key in DIAG_KEYS)


@pytest.mark.slow
def test_clean_labels_run_without_diagnostics(tmp_path):
    results = run_entry(tmp_path, "noise=none")
    assert not any(key.startswith("diag/") for key in results)


@pytest.mark.slow
def test_instance_noise_runs(tmp_path):
    results = run_entry(tmp_path, "noise=instance", "noise.rate=0.3")
    assert results["noise"] == "instance" and 0.2 < results["noise/realized_rate"] < 0.4
    assert "diag/memorized" in results


@pytest.mark.slow
def test_label_file_noise_on_digits(tmp_path):
    _, clean, _, _ = DigitsDataModule().load_arrays()
    noisy = clean.numpy().copy()
    noisy[::4] = (noisy[::4] + 3) % 10
    np.save(tmp_path / "labels.npy", noisy)
    results = run_entry(tmp_path, "noise=file", f"noise.path={tmp_path / 'labels.npy'}")
    assert results["noise/realized_rate"] == pytest.approx(np.mean(noisy != clean.numpy()))
    assert np.array_equal(np.load(tmp_path / "noisy_labels.npy"), noisy)
    assert "diag/memorized" in results


@pytest.mark.slow
def test_cifar10n_preset_on_a_tiny_cifar(tmp_path):
    clean = write_cifar10(tmp_path / "data").train_labels
    human = write_human_pt(tmp_path / "CIFAR-10_human.pt", clean)
    with pytest.warns(UserWarning, match="checksums"):
        results = run_entry(tmp_path, "data=cifar10", f"data.root={tmp_path / 'data'}", "data.verify=false",
                            "data.val_size=10", "data.batch_size=32", "noise=cifar10n",
                            f"noise.path={tmp_path / 'CIFAR-10_human.pt'}", "noise.key=worse_label")
    assert results["noise/key"] == "worse_label" and results["noise/realized_rate"] == pytest.approx(0.4)
    assert np.array_equal(np.load(tmp_path / "noisy_labels.npy"), human["worse_label"])


@pytest.mark.slow
def test_image_folder_data(tmp_path):
    write_tree(tmp_path / "tree", per_class=12)
    results = run_entry(tmp_path, "data=image_folder", f"data.root={tmp_path / 'tree'}", "data.image_size=12",
                        "data.val_size=6", "data.batch_size=8", "noise.rate=0.3")
    assert results["data"] == "ImageFolderDataModule" and results["noise/num_noisy"] == round(0.3 * 42)
    assert (tmp_path / "tree" / ".adaptive_ls_cache").is_dir()
