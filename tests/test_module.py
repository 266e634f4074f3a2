"""LabelSmoothingClassifier in a plain Lightning Trainer, without Hydra: what it logs, what it tests, what it saves."""
from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from adaptive_ls import AdaptiveSmoothing, AnnealedSmoothing, FixedSmoothing, LabelSmoothingClassifier
from adaptive_ls.data import DigitsDataModule
from adaptive_ls.calibration import calibrate
from adaptive_ls.metrics import calibration_metrics, reliability_bins, temperature_scaled_metrics
from adaptive_ls.models import small_cnn
from adaptive_ls.noise import SymmetricNoise
from adaptive_ls.callbacks import EpochHistory

EPOCHS = 2


def fit(policy, **module_kwargs):
    """Two epochs on noisy digits (20 optimizer steps each) on the CPU; returns (trainer, module, data, history)."""
    pl.seed_everything(0)
    datamodule = DigitsDataModule(noise=SymmetricNoise(rate=0.4), noise_seed=0, seed=0)
    module = LabelSmoothingClassifier(small_cnn(num_classes=10, in_channels=1, width=8), policy, num_classes=10,
                                      **module_kwargs)
    history = EpochHistory()
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[history])
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, datamodule, history.history


TEST_KEYS = {f"test/{name}" for name in ("acc", "nll", "ece", "ece_adaptive", "mce", "brier")}


@torch.no_grad()
def predict_test_set(module, datamodule, split: str = "test"):
    module.eval()
    logits, targets = [], []
    for batch in getattr(datamodule, f"{split}_dataloader")():
        images, labels, _ = datamodule.on_after_batch_transfer(batch, 0)
        logits.append(module(images))
        targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def test_fixed_smoothing_logs_and_tests_in_a_plain_trainer():
    trainer, module, datamodule, history = fit(FixedSmoothing(eps=0.1))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "smoothing/eps_mean", "val/acc", "val/nll", "val/acc_best", "val/ece",
                "val/brier"):
        assert key in metrics, key
    assert "smoothing/eps_min" not in metrics  # one ε for the whole batch: the mean says it all
    assert metrics["smoothing/eps_mean"].item() == pytest.approx(0.1)
    assert 0.0 < metrics["train/loss"].item() < 10 and 0.0 <= metrics["train/acc"].item() <= 1.0
    assert [row["epoch"] for row in history] == list(range(EPOCHS))
    assert metrics["val/acc_best"].item() == pytest.approx(max(row["val/acc"] for row in history))

    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert set(results) == TEST_KEYS  # temperature scaling is calibrate's, not the test loop's
    logits, targets = predict_test_set(module, datamodule)
    assert torch.equal(targets, datamodule.test_labels)
    expected = calibration_metrics(logits, targets, n_bins=15)
    for name in ("acc", "nll", "ece", "ece_adaptive", "mce", "brier"):
        assert results[f"test/{name}"] == pytest.approx(expected[name].item(), abs=1e-5), name
    # and by the textbook definitions
    assert results["test/acc"] == pytest.approx((logits.argmax(1) == targets).float().mean().item(), abs=1e-6)
    assert results["test/nll"] == pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-5)
    brier = (logits.softmax(1) - F.one_hot(targets, 10)).pow(2).sum(1).mean()
    assert results["test/brier"] == pytest.approx(brier.item(), abs=1e-5)
    assert results["test/acc"] > 0.3  # it learned something in 40 steps despite 40% noise
    reliability, expected_bins = module.test_reliability, reliability_bins(logits, targets)
    assert int(reliability["count"].sum()) == len(targets)
    assert set(reliability) == set(expected_bins) and torch.equal(reliability["count"], expected_bins["count"])
    torch.testing.assert_close(reliability["accuracy"], expected_bins["accuracy"])
    torch.testing.assert_close(reliability["confidence"], expected_bins["confidence"])
    # a second test run starts from empty metrics
    assert trainer.test(module, datamodule=datamodule, verbose=False)[0] == pytest.approx(results, abs=1e-6)
    assert int(module.test_reliability["count"].sum()) == len(targets)


def test_calibrate_fits_the_current_weights_whatever_validation_ran_before():
    trainer, module, datamodule, _ = fit(FixedSmoothing(eps=0.1))
    result = calibrate(trainer, module, datamodule)
    plain = {"test/temperature"} | {key.replace("test/", "test/ts_") for key in TEST_KEYS}
    noise_aware = {"test/nts_temperature"} | {key.replace("test/", "test/nts_") for key in TEST_KEYS}
    assert set(result) == plain | noise_aware  # the data module knows its noise: both fits
    assert all(isinstance(value, float) for value in result.values())
    # the same as fitting T by hand on the validation logits of these weights, and applying it to the test logits
    val_logits, val_targets = predict_test_set(module, datamodule, "val")
    test_logits, test_targets = predict_test_set(module, datamodule)
    expected = temperature_scaled_metrics(val_logits, val_targets, test_logits, test_targets)
    for name, value in expected.items():
        assert result[f"test/{name}"] == pytest.approx(float(value), rel=1e-5, abs=1e-6), name

    # a validation of other weights in between changes nothing; calibrating those weights does
    trained = copy.deepcopy(module.state_dict())
    with torch.no_grad():
        for parameter in module.net.parameters():
            parameter.mul_(1.5)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    other = calibrate(trainer, module, datamodule)
    assert other["test/temperature"] != pytest.approx(result["test/temperature"], rel=1e-3)
    trainer.validate(module, datamodule=datamodule, verbose=False)
    module.load_state_dict(trained)
    assert calibrate(trainer, module, datamodule) == result
    # nor does the trainer: a fresh one, which never validated, gives the same
    fresh = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False)
    assert calibrate(fresh, module, datamodule) == result
    # and the test metrics afterwards are those of the trained weights
    assert trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"] == pytest.approx(
        ((test_logits.argmax(1) == test_targets).float().mean().item()), abs=1e-6)


def test_calibrate_without_a_validation_split_returns_nothing():
    datamodule = DigitsDataModule(val_size=0, noise=SymmetricNoise(rate=0.4), noise_seed=0, seed=0)
    module = LabelSmoothingClassifier(small_cnn(num_classes=10, in_channels=1, width=8), num_classes=10)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    assert calibrate(trainer, module, datamodule) == {}


def test_adaptive_smoothing_logs_per_sample_eps_and_checkpoints_its_memory(tmp_path):
    policy = AdaptiveSmoothing(eps_min=0.0, eps_max=0.4, signal="true_class_prob", warmup_epochs=1, warmup_eps=0.1,
                               ema=0.5)
    trainer, module, datamodule, history = fit(policy)
    first, second = history
    # warm-up epoch: ε = warmup_eps for every sample
    assert first["smoothing/eps_min"] == pytest.approx(0.1) and first["smoothing/eps_max"] == pytest.approx(0.1)
    # then per sample, within [eps_min, eps_max]
    assert 0.0 <= second["smoothing/eps_min"] < second["smoothing/eps_mean"] < second["smoothing/eps_max"] <= 0.4
    for key in ("smoothing/eps_min", "smoothing/eps_max", "val/acc", "val/acc_best", "train/loss", "train/acc"):
        assert key in trainer.callback_metrics, key
    # the moving-average memory covers the full training set, and was filled for the training split only
    assert module.smoothing.memory.shape == (datamodule.num_train_total, 10)
    assert torch.equal(module.smoothing.seen.nonzero().squeeze(1), datamodule.train_index)

    path = tmp_path / "adaptive.ckpt"
    trainer.save_checkpoint(path)
    fresh_policy = AdaptiveSmoothing(eps_min=0.0, eps_max=0.4, warmup_epochs=1, warmup_eps=0.1, ema=0.5)
    restored = LabelSmoothingClassifier.load_from_checkpoint(
        path, net=small_cnn(num_classes=10, in_channels=1, width=8), smoothing=fresh_policy)
    torch.testing.assert_close(restored.smoothing.memory, module.smoothing.memory)
    assert torch.equal(restored.smoothing.seen, module.smoothing.seen)


def test_annealed_smoothing_moves_with_optimizer_steps():
    trainer, *_, history = fit(AnnealedSmoothing(eps_start=0.4, eps_end=0.0, schedule="linear"))
    assert trainer.global_step == 40  # 1288 training images / 64, last partial batch dropped: 20 steps per epoch
    # step s of 40 uses ε = 0.4 (1 − s/40): epoch means over s = 0..19 and s = 20..39
    assert history[0]["smoothing/eps_mean"] == pytest.approx(0.4 * (1 - 9.5 / 40), abs=1e-5)
    assert history[1]["smoothing/eps_mean"] == pytest.approx(0.4 * (1 - 29.5 / 40), abs=1e-5)


def test_bad_scheduler_interval_is_rejected():
    with pytest.raises(ValueError, match="scheduler_interval='batch'"):
        LabelSmoothingClassifier(small_cnn(10, 1, 8), scheduler_interval="batch")


def test_the_policy_sees_each_epochs_validation_accuracy():
    """What a validation-timed policy (AdaptiveSmoothing's freeze_patience) relies on: one call per training epoch,
    with the accuracy the epoch logs as val/acc, after sanity checks are left out."""
    seen = []

    class Watching(FixedSmoothing):
        def on_validation_end(self, accuracy):
            seen.append(float(accuracy))

    _, _, _, history = fit(Watching(eps=0.1))
    assert seen == pytest.approx([epoch["val/acc"] for epoch in history])
