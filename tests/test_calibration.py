"""Noise-aware temperature scaling: the fit against a hand computation and a known temperature, and calibrate's keys."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adaptive_ls import calibration
from adaptive_ls.calibration import calibrate, noise_transition
from adaptive_ls.data import NoisyLabelDataModule
from adaptive_ls.metrics import (
    calibration_metrics,
    fit_noise_aware_temperature,
    fit_temperature,
    noise_aware_temperature_scaled_metrics,
    temperature_scaled_metrics,
)
from adaptive_ls.noise import NoNoise, SymmetricNoise, transition_matrix

METRIC_NAMES = ("acc", "nll", "ece", "ece_adaptive", "mce", "brier")


def _symmetric_transition(k: int, rate: float) -> torch.Tensor:
    """P(noisy = j | true = i): 1 - rate on the diagonal, rate spread evenly over the other classes."""
    matrix = torch.full((k, k), rate / (k - 1), dtype=torch.float64)
    return matrix.fill_diagonal_(1 - rate)


def _calibrated_at(temperature: float, n: int = 20000, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z* with true labels drawn from softmax(z* / temperature): the true temperature of z* is known."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 6
    return z, torch.multinomial((z / temperature).softmax(1), 1, generator=g).squeeze(1)


def _corrupt(labels: torch.Tensor, transition: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Noisy labels drawn from the rows of ``transition`` picked by the true labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(transition[labels], 1, generator=g).squeeze(1)


# -- the fit ------------------------------------------------------------------------------------------------------


def test_noise_aware_fit_matches_a_grid_search_by_hand():
    z = np.array([[2.0, 0, -1], [0, 1, 0], [1, 1, 3], [-1, 2, 0], [3, 0, 0]])
    noisy = np.array([0, 0, 2, 1, 1])
    T = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    taus = np.arange(0.05, 20.0, 1e-4)
    # loss(tau) = -sum_n log sum_i softmax(z_n / tau)_i T[i, noisy_n], for every tau of the grid at once
    e = np.exp(z[None] / taus[:, None, None])
    p = e / e.sum(axis=2, keepdims=True)  # [taus, N, K]
    likelihood = (p * T[:, noisy].T[None]).sum(axis=2)  # [taus, N]: sum_i p_ni T[i, noisy_n]
    loss = -np.log(likelihood).sum(axis=1)
    best = taus[loss.argmin()]
    assert 0.1 < best < 19.0  # an interior minimum, so the grid bounds the answer
    got = fit_noise_aware_temperature(torch.tensor(z, dtype=torch.float32), torch.tensor(noisy), T)
    assert isinstance(got, float)
    assert got == pytest.approx(best, abs=1e-3)


def test_noise_aware_fit_recovers_the_true_temperature_where_plain_scaling_does_not():
    z, clean = _calibrated_at(2.0)
    T = _symmetric_transition(10, 0.4)
    noisy = _corrupt(clean, T)
    assert fit_noise_aware_temperature(z, noisy, T) == pytest.approx(2.0, rel=0.05)
    assert fit_temperature(z, clean) == pytest.approx(2.0, rel=0.05)  # the true temperature is what the data says
    assert fit_temperature(z, noisy) > 4.0  # calibrated to the noise: far softer than the truth


def test_identity_transition_is_plain_temperature_scaling():
    z, y = _calibrated_at(3.0, n=5000, k=5)
    assert fit_noise_aware_temperature(z, y, torch.eye(5)) == pytest.approx(fit_temperature(z, y), rel=1e-5)
    val, test = slice(0, 2500), slice(2500, None)
    plain = temperature_scaled_metrics(z[val], y[val], z[test], y[test])
    aware = noise_aware_temperature_scaled_metrics(z[val], y[val], z[test], y[test], np.eye(5))
    assert aware["nts_temperature"] == pytest.approx(plain["temperature"], rel=1e-5)
    for name in METRIC_NAMES:
        assert aware[f"nts_{name}"].item() == pytest.approx(plain[f"ts_{name}"].item(), rel=1e-5, abs=1e-6), name


def test_noise_aware_metrics_are_those_of_the_clean_test_logits_scaled_by_the_fit():
    z, clean = _calibrated_at(2.0, n=4000, k=4)
    T = _symmetric_transition(4, 0.3)
    noisy = _corrupt(clean, T)
    val, test = slice(0, 2000), slice(2000, None)
    out = noise_aware_temperature_scaled_metrics(z[val], noisy[val], z[test], clean[test], T)
    assert set(out) == {"nts_temperature"} | {f"nts_{name}" for name in METRIC_NAMES}
    assert out["nts_temperature"] == fit_noise_aware_temperature(z[val], noisy[val], T)
    expected = calibration_metrics(z[test] / out["nts_temperature"], clean[test])
    for name in METRIC_NAMES:
        assert out[f"nts_{name}"].item() == pytest.approx(expected[name].item(), abs=1e-6), name
    assert out["nts_nll"].item() == pytest.approx(
        F.cross_entropy(z[test] / out["nts_temperature"], clean[test]).item(), rel=1e-5)


def test_noise_aware_fit_under_inference_mode_and_with_confident_logits():
    z, clean = _calibrated_at(2.0, n=2000, k=5)
    T = _symmetric_transition(5, 0.4)
    noisy = _corrupt(clean, T)
    expected = fit_noise_aware_temperature(z, noisy, T)
    with torch.inference_mode():
        assert fit_noise_aware_temperature(z.clone(), noisy.clone(), T) == pytest.approx(expected, rel=1e-9)
    # logits whose softmax underflows in float32: the log-sum-exp keeps the loss finite
    assert np.isfinite(fit_noise_aware_temperature(z * 1000, noisy, T))


@pytest.mark.parametrize("transition, match", [
    (torch.eye(3), r"\[K, K\]"),
    (torch.full((4, 4), 0.5), "sum to 1"),
    (-torch.eye(4), ">= 0"),
])
def test_bad_transition_matrices(transition, match):
    z, y = torch.randn(8, 4), torch.arange(8) % 4
    with pytest.raises(ValueError, match=match):
        fit_noise_aware_temperature(z, y, transition)


def test_target_that_no_true_class_can_become_is_an_error():
    T = torch.eye(3)
    T[2] = torch.tensor([0.0, 1.0, 0.0])  # nothing is ever labelled 2
    with pytest.raises(ValueError, match="all-zero transition column"):
        fit_noise_aware_temperature(torch.randn(3, 3), torch.tensor([0, 1, 2]), T)


# -- calibrate ----------------------------------------------------------------------------------------------------


class _TinyData(NoisyLabelDataModule):
    """400 blank 4x4 images with balanced labels: enough for the noise and the splits, nothing to train."""

    def load_arrays(self):
        labels = torch.arange(400) % self.num_classes
        images = torch.zeros(400, 3, 4, 4, dtype=torch.uint8)
        return images, labels, images[:100], labels[:100]


def _calibrate_on(datamodule, val, test, monkeypatch) -> dict[str, float]:
    """calibrate with the evaluation pass replaced by given (logits, targets) of the validation and test splits."""
    monkeypatch.setattr(calibration, "evaluation_logits", lambda *args, **kwargs: [val, test])
    return calibrate(None, SimpleNamespace(ece_bins=15), datamodule)


def _split_logits(n_val: int = 2000, n_test: int = 2000, k: int = 10):
    """(val, test) of logits at true temperature 2: noisy validation labels (40% symmetric), clean test labels."""
    z, clean = _calibrated_at(2.0, n=n_val + n_test, k=k)
    noisy = _corrupt(clean, _symmetric_transition(k, 0.4))
    return (z[:n_val], noisy[:n_val]), (z[n_val:], clean[n_val:])


def test_noise_transition_is_the_training_sets_realised_noise():
    datamodule = _TinyData(val_size=100, noise=SymmetricNoise(rate=0.4), noise_seed=3)
    datamodule.setup()
    expected = transition_matrix(datamodule.clean_labels, datamodule.noisy_labels, 10)
    np.testing.assert_array_equal(noise_transition(datamodule), expected)
    assert np.diag(expected).mean() == pytest.approx(0.6, abs=1e-9)  # exact count: 160 of 400 moved
    clean = _TinyData(val_size=100)
    clean.setup()
    np.testing.assert_array_equal(noise_transition(clean), np.eye(10))


def test_calibrate_reports_the_noise_aware_fit_beside_the_plain_one(monkeypatch):
    datamodule = _TinyData(val_size=100, noise=SymmetricNoise(rate=0.4), noise_seed=3)
    datamodule.setup()
    val, test = _split_logits()
    result = _calibrate_on(datamodule, val, test, monkeypatch)
    plain_keys = {"test/temperature"} | {f"test/ts_{name}" for name in METRIC_NAMES}
    aware_keys = {"test/nts_temperature"} | {f"test/nts_{name}" for name in METRIC_NAMES}
    assert set(result) == plain_keys | aware_keys
    assert all(isinstance(value, float) for value in result.values())
    expected = noise_aware_temperature_scaled_metrics(*val, *test, datamodule.transition_matrix())
    for name, value in expected.items():
        assert result[f"test/{name}"] == pytest.approx(float(value), rel=1e-6, abs=1e-7), name
    assert result["test/temperature"] > result["test/nts_temperature"] * 1.5  # plain scaling softens to the noise


def test_calibrate_without_noise_gives_nts_equal_to_ts(monkeypatch):
    datamodule = _TinyData(val_size=100, noise=NoNoise())
    datamodule.setup()
    z, y = _calibrated_at(2.0, n=4000)
    result = _calibrate_on(datamodule, (z[:2000], y[:2000]), (z[2000:], y[2000:]), monkeypatch)
    assert result["test/nts_temperature"] == pytest.approx(result["test/temperature"], rel=1e-5)
    for name in METRIC_NAMES:
        assert result[f"test/nts_{name}"] == pytest.approx(result[f"test/ts_{name}"], rel=1e-5, abs=1e-6), name


def test_calibrate_with_clean_validation_labels_repeats_ts_as_nts(monkeypatch):
    datamodule = _TinyData(val_size=100, noise=SymmetricNoise(rate=0.4), noise_seed=3, clean_val=True)
    datamodule.setup()
    z, y = _calibrated_at(2.0, n=4000)
    result = _calibrate_on(datamodule, (z[:2000], y[:2000]), (z[2000:], y[2000:]), monkeypatch)
    assert result["test/nts_temperature"] == result["test/temperature"]
    for name in METRIC_NAMES:
        assert result[f"test/nts_{name}"] == result[f"test/ts_{name}"], name


@pytest.mark.parametrize("is_noisy", ["absent", None])
def test_calibrate_without_noise_information_has_no_nts_keys(monkeypatch, is_noisy):
    datamodule = SimpleNamespace(val_size=100, clean_val=False)
    if is_noisy is None:
        datamodule.is_noisy = None
    val, test = _split_logits(n_val=500, n_test=500)
    result = _calibrate_on(datamodule, val, test, monkeypatch)
    assert set(result) == {"test/temperature"} | {f"test/ts_{name}" for name in METRIC_NAMES}
