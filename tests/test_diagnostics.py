"""Noise diagnostics: memorisation, correction, clean accuracy, ε per subset and its AUROC, on cases with known
answers."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from adaptive_ls.callbacks import EpochHistory
from adaptive_ls.data import DigitsDataModule
from adaptive_ls.diagnostics import (NoiseDiagnostics, detection_scores, eps_sums, noise_detector,
                                     prediction_counts, summarize)
from adaptive_ls.models import small_cnn
from adaptive_ls.module import LabelSmoothingClassifier
from adaptive_ls.noise import NoNoise, SymmetricNoise
from adaptive_ls.smoothing import FixedSmoothing


def test_counts_and_fractions_by_hand():
    clean = torch.tensor([0, 1, 2, 0, 1, 2])
    noisy = torch.tensor([1, 1, 0, 2, 1, 2])  # samples 0, 2, 3 corrupted
    is_noisy = noisy != clean
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    pred = torch.tensor([1, 1, 2, 1, 0, 2])
    # corrupted: 0 -> given label 1 (memorised), 2 -> true label 2 (corrected), 3 -> 1 (neither)
    # clean: 1 right, 4 wrong, 5 right
    counts = prediction_counts(pred, index, is_noisy, clean, noisy)
    assert counts.tolist() == [3, 3, 1, 1, 2]
    eps = torch.tensor([0.4, 0.1, 0.2, 0.3, 0.0, 0.2])
    sums = eps_sums(eps, index, is_noisy)
    torch.testing.assert_close(sums, torch.tensor([3.0, 3.0, 0.9, 0.3]))
    out = summarize(counts, sums)
    expected = {"diag/memorized": 1 / 3, "diag/corrected": 1 / 3, "diag/acc_clean_subset": 2 / 3,
                "diag/eps_noisy": 0.3, "diag/eps_clean": 0.1}
    assert {k: pytest.approx(float(v)) for k, v in out.items()} == expected
    # a scalar ε is broadcast to every sample
    torch.testing.assert_close(eps_sums(torch.tensor(0.25), index, is_noisy), torch.tensor([3.0, 3.0, 0.75, 0.75]))


def auroc(*batches: tuple[torch.Tensor, torch.Tensor]) -> float:
    """The AUROC of ε over batches of (ε, is corrupted), updated batch by batch as the callback does."""
    metric = noise_detector()
    for eps, corrupted in batches:
        metric.update(detection_scores(eps, corrupted), corrupted.to(torch.int))
    return float(metric.compute())


def test_eps_auroc_by_hand():
    # corrupted ε 0.9, 0.8 against clean 0.1, 0.85, 0.2: 5 of the 6 (corrupted, clean) pairs are ordered right
    eps = torch.tensor([0.9, 0.1, 0.85, 0.8, 0.2])
    corrupted = torch.tensor([True, False, False, True, False])
    assert auroc((eps, corrupted)) == pytest.approx(5 / 6)
    assert auroc((eps[:2], corrupted[:2]), (eps[2:], corrupted[2:])) == pytest.approx(5 / 6)  # batches = one update
    assert auroc((-eps, corrupted)) == pytest.approx(1 / 6)  # a negative ε is ranked as it is, not squashed
    # a tie counts half: corrupted 0.5 against clean 0.5 and 0.1
    assert auroc((torch.tensor([0.5, 0.5, 0.1]), torch.tensor([True, False, False]))) == pytest.approx(0.75)


def test_a_batch_wide_eps_reads_blind():
    corrupted = torch.tensor([True, False, False, True, False])
    assert auroc((torch.full((5,), 0.1), corrupted)) == 0.5  # one ε for every sample: all ties
    # an annealed ε changes between steps, not within one: still 0.5, though the later batch holds more corrupted
    assert auroc((torch.tensor(0.4), corrupted[:2]), (torch.tensor(0.1), corrupted[2:])) == 0.5
    assert auroc((torch.tensor(-0.2), corrupted)) == 0.5  # negative smoothing


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="^mode='train'"):
        NoiseDiagnostics(mode="train")
    with pytest.raises(ValueError, match="^every_n_epochs=0"):
        NoiseDiagnostics(every_n_epochs=0)


class Oracle(pl.LightningModule):
    """Predicts a fixed class per training sample and reports a fixed ε per sample: known diagnostics. Outside the
    training step (an eval pass) it predicts class 0."""

    def __init__(self, predict: torch.Tensor, eps: torch.Tensor, signal: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("predict", predict)
        self.register_buffer("eps", eps)
        self.register_buffer("signal", signal)
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        _, _, index = batch
        logits = F.one_hot(self.predict[index], 10).float()
        loss = self.weight.sum() * 0.0
        self.log("train/loss", loss, on_step=False, on_epoch=True)  # so that every epoch has a history row
        signal = None if self.signal is None else self.signal[index]
        return {"loss": loss, "eps": self.eps[index], "index": index, "logits": logits, "signal": signal}

    def forward(self, images):
        return torch.zeros(len(images), 10, device=images.device)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(module, datamodule, *callbacks, max_epochs: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=list(callbacks))
    trainer.fit(module, datamodule=datamodule)
    return trainer


def noisy_digits(**kw) -> DigitsDataModule:
    # 1,288 training images = 14 batches of 92: every sample is seen once per epoch (drop_last drops nothing)
    datamodule = DigitsDataModule(noise=SymmetricNoise(0.4), batch_size=92, **kw)
    datamodule.setup("fit")
    assert len(datamodule.train_index) % datamodule.batch_size == 0
    return datamodule


def test_callback_logs_known_values_from_training_outputs():
    datamodule = noisy_digits()
    train = datamodule.train_index
    corrupted = train[datamodule.is_noisy[train]]
    clean_ones = train[~datamodule.is_noisy[train]]
    predict = datamodule.clean_labels.clone()
    n = len(corrupted)
    memorised, corrected, neither = corrupted[: n // 2], corrupted[n // 2: 3 * n // 4], corrupted[3 * n // 4:]
    predict[memorised] = datamodule.noisy_labels[memorised]
    # "neither": a class that is neither the true nor the given label
    for i in neither.tolist():
        predict[i] = next(c for c in range(10) if c not in (int(datamodule.clean_labels[i]),
                                                           int(datamodule.noisy_labels[i])))
    wrong_clean = clean_ones[:100]
    predict[wrong_clean] = (datamodule.clean_labels[wrong_clean] + 1) % 10
    eps = torch.where(datamodule.is_noisy, 0.3, 0.1)

    history = EpochHistory()
    trainer = fit(Oracle(predict, eps), datamodule, NoiseDiagnostics(every_n_epochs=2), history)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("diag/")}
    assert metrics == pytest.approx({
        "diag/memorized": len(memorised) / n,
        "diag/corrected": len(corrected) / n,
        "diag/acc_clean_subset": 1 - 100 / len(clean_ones),
        "diag/eps_noisy": 0.3,
        "diag/eps_clean": 0.1,
        "diag/eps_auroc": 1.0,  # every corrupted sample has the larger ε
    })
    # every_n_epochs=2 over 3 epochs: logged after epoch 1 and after the last epoch (2), not after epoch 0
    assert ["diag/memorized" in row for row in history.history] == [False, True, True]


@pytest.mark.parametrize("mode", ["train_outputs", "eval_pass"])
def test_eps_auroc_is_known_in_both_modes(mode):
    datamodule = noisy_digits()
    train = datamodule.train_index
    clean_ones = train[~datamodule.is_noisy[train]]
    eps = torch.where(datamodule.is_noisy, 0.3, 0.1)
    eps[clean_ones[:100]] = 0.3  # ties with every corrupted sample: each counts half
    trainer = fit(Oracle(datamodule.clean_labels, eps), datamodule, NoiseDiagnostics(mode=mode), max_epochs=2)
    assert float(trainer.callback_metrics["diag/eps_auroc"]) == pytest.approx(1 - 0.5 * 100 / len(clean_ones))


@pytest.mark.parametrize("mode", ["train_outputs", "eval_pass"])
def test_signal_auroc_is_that_of_the_policy_signal_not_of_eps(mode):
    datamodule = noisy_digits()
    train = datamodule.train_index
    clean_ones = train[~datamodule.is_noisy[train]]
    signal = torch.where(datamodule.is_noisy, 0.9, 0.2)
    signal[clean_ones[:50]] = 1.0  # above every corrupted sample
    eps = torch.full_like(signal, 0.1)  # a policy that does not act on what its signal knows
    trainer = fit(Oracle(datamodule.clean_labels, eps, signal), datamodule, NoiseDiagnostics(mode=mode), max_epochs=1)
    assert float(trainer.callback_metrics["diag/signal_auroc"]) == pytest.approx(1 - 50 / len(clean_ones))
    assert float(trainer.callback_metrics["diag/eps_auroc"]) == 0.5


def test_no_signal_auroc_without_a_signal():
    datamodule = noisy_digits()
    eps = torch.where(datamodule.is_noisy, 0.3, 0.1)
    trainer = fit(Oracle(datamodule.clean_labels, eps), datamodule, NoiseDiagnostics(), max_epochs=1)
    assert "diag/eps_auroc" in trainer.callback_metrics and "diag/signal_auroc" not in trainer.callback_metrics


def test_eval_pass_matches_a_manual_pass_over_the_training_split():
    pl.seed_everything(0)
    datamodule = noisy_digits()
    module = LabelSmoothingClassifier(small_cnn(10, 1, width=8), FixedSmoothing(0.1), num_classes=10)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[NoiseDiagnostics(mode="eval_pass")])
    trainer.fit(module, datamodule=datamodule)

    module.eval()
    train = datamodule.train_index
    with torch.no_grad():
        images, _, _ = datamodule.prepare_batch((datamodule.train_images[train], None, train), augment=False)
        pred = module(images).argmax(dim=1)
    corrupted = datamodule.is_noisy[train]
    expected = {
        "diag/memorized": (pred == datamodule.noisy_labels[train])[corrupted].float().mean(),
        "diag/corrected": (pred == datamodule.clean_labels[train])[corrupted].float().mean(),
        "diag/acc_clean_subset": (pred == datamodule.clean_labels[train])[~corrupted].float().mean(),
    }
    for name, value in expected.items():
        assert float(trainer.callback_metrics[name]) == pytest.approx(float(value), abs=1e-6), name
    assert float(trainer.callback_metrics["diag/eps_noisy"]) == pytest.approx(0.1)
    assert float(trainer.callback_metrics["diag/eps_auroc"]) == 0.5  # a fixed ε tells no sample apart
    assert module.training is False  # we set it; the callback restored train mode during fit (no error above)


def test_not_applied_without_corrupted_labels():
    clean = DigitsDataModule(noise=NoNoise())
    clean.setup("fit")
    assert not NoiseDiagnostics.applies_to(clean)
    assert NoiseDiagnostics.applies_to(noisy_digits())


@pytest.mark.slow
def test_history_rows_hold_only_what_was_measured_in_their_epoch(tmp_path):
    from tests.runs import run_in

    results = run_in(tmp_path / "run", "trainer.max_epochs=5", "callbacks.diagnostics.every_n_epochs=3",
                     "+trainer.check_val_every_n_epoch=2", "noise.rate=0.4")
    history = results["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert ["diag/memorized" in row for row in history] == [False, False, True, False, True]
    assert ["diag/eps_auroc" in row for row in history] == [False, False, True, False, True]
    assert results["diag/eps_auroc"] == 0.5  # smoothing=none: one ε for all
    assert ["val/acc" in row for row in history] == [False, True, False, True, False]
    assert all("train/loss" in row for row in history)
