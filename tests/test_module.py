"""LabelSmoothingClassifier in a plain Lightning Trainer, without Hydra: what it logs, what it tests, what it saves."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from adaptive_ls import AdaptiveSmoothing, AnnealedSmoothing, FixedSmoothing, LabelSmoothingClassifier
from adaptive_ls.data import DigitsDataModule
from adaptive_ls.metrics import calibration_metrics
from adaptive_ls.models import small_cnn
from adaptive_ls.train import EpochHistory

EPOCHS = 2


def fit(policy, **module_kwargs):
    """Two epochs on noisy digits (20 optimizer steps each) on the CPU; returns (trainer, module, data, history)."""
    pl.seed_everything(0)
    datamodule = DigitsDataModule(noise={"kind": "symmetric", "rate": 0.4}, noise_seed=0, seed=0)
    module = LabelSmoothingClassifier(small_cnn(num_classes=10, in_channels=1, width=8), policy, num_classes=10,
                                      **module_kwargs)
    history = EpochHistory()
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[history])
    trainer.fit(module, datamodule=datamodule)
    return trainer, module, datamodule, history.history


@torch.no_grad()
def predict_test_set(module, datamodule):
    module.eval()
    logits, targets = [], []
    for batch in datamodule.test_dataloader():
        images, labels, _ = datamodule.on_after_batch_transfer(batch, 0)
        logits.append(module(images))
        targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def test_fixed_smoothing_logs_and_tests_in_a_plain_trainer():
    trainer, module, datamodule, history = fit(FixedSmoothing(eps=0.1))
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/acc", "smoothing/eps_mean", "val/acc", "val/nll", "val/acc_best"):
        assert key in metrics, key
    assert "smoothing/eps_min" not in metrics  # one ε for the whole batch: the mean says it all
    assert metrics["smoothing/eps_mean"].item() == pytest.approx(0.1)
    assert 0.0 < metrics["train/loss"].item() < 10 and 0.0 <= metrics["train/acc"].item() <= 1.0
    assert [row["epoch"] for row in history] == list(range(EPOCHS))
    assert metrics["val/acc_best"].item() == pytest.approx(max(row["val/acc"] for row in history))

    results = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    logits, targets = predict_test_set(module, datamodule)
    assert torch.equal(targets, datamodule.test_labels)
    expected = calibration_metrics(logits, targets, n_bins=15)
    for name in ("acc", "nll", "ece", "brier"):
        assert results[f"test/{name}"] == pytest.approx(expected[name].item(), abs=1e-5), name
    # and by the textbook definitions
    assert results["test/acc"] == pytest.approx((logits.argmax(1) == targets).float().mean().item(), abs=1e-6)
    assert results["test/nll"] == pytest.approx(F.cross_entropy(logits, targets).item(), abs=1e-5)
    brier = (logits.softmax(1) - F.one_hot(targets, 10)).pow(2).sum(1).mean()
    assert results["test/brier"] == pytest.approx(brier.item(), abs=1e-5)
    assert results["test/acc"] > 0.3  # it learned something in 40 steps despite 40% noise
    reliability = module.test_reliability
    assert int(reliability["count"].sum()) == len(targets)


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
