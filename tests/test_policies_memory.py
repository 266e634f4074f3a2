"""Online label smoothing, PS-KD and negative label smoothing: targets by hand, memories across epochs, resume."""
from __future__ import annotations

import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from adaptive_ls.data import DigitsDataModule
from adaptive_ls.models import small_cnn
from adaptive_ls.module import LabelSmoothingClassifier
from adaptive_ls.noise import SymmetricNoise
from adaptive_ls.smoothing import (
    EPS_NEGATIVE_BOUND,
    ALASCASmoothing,
    AdaptiveSmoothing,
    FixedSmoothing,
    OnlineSmoothing,
    Progress,
    SelfAdaptiveTraining,
    SelfDistillation,
    smoothed_cross_entropy,
)
from tests import runs
from tests.runs import logits_of


at_epoch = partial(runs.at_epoch, max_epochs=4)


def loss_against(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against explicit target rows, written out: -sum_k t_k log p_k."""
    return -(target_probs * logits.float().log_softmax(dim=-1)).sum(dim=-1)


# ------------------------------------------------------------------------------------------------ online (OLS)

EPOCH0_PROBS = [[0.7, 0.2, 0.1],   # y=0, correct
                [0.5, 0.3, 0.2],   # y=0, correct
                [0.6, 0.3, 0.1],   # y=1, wrong: not counted
                [0.1, 0.1, 0.8]]   # y=2, correct
EPOCH0_TARGETS = [0, 0, 1, 2]


def test_online_first_epoch_target_is_half_onehot_half_uniform():
    policy = OnlineSmoothing(alpha=0.5)
    policy.setup(num_samples=4, num_classes=3)
    logits, targets = logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS)
    target = policy(logits, targets, torch.arange(4), at_epoch(0))
    assert target.eps == 0.5
    torch.testing.assert_close(target.q, torch.full((4, 3), 1 / 3))
    # by hand: 0.5 * (-log p_y) + 0.5 * mean_k(-log p_k)
    p = torch.tensor(EPOCH0_PROBS)
    expected = 0.5 * -p[torch.arange(4), targets].log() + 0.5 * -p.log().mean(dim=1)
    loss = smoothed_cross_entropy(logits, targets, target.eps, target.q, reduction="none")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_online_memory_over_two_epochs_by_hand():
    policy = OnlineSmoothing(alpha=0.5)
    policy.setup(num_samples=6, num_classes=3)
    policy(logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS), torch.arange(4), at_epoch(0))
    torch.testing.assert_close(policy.counts, torch.tensor([2.0, 0.0, 1.0]))
    torch.testing.assert_close(policy.sums[0], torch.tensor([1.2, 0.5, 0.3]))
    torch.testing.assert_close(policy.soft, torch.full((3, 3), 1 / 3))  # not rolled within the epoch

    # Epoch 1: S[0] = mean of the two correct class-0 predictions, S[2] = the one class-2 prediction, and class 1
    # (no correct sample) keeps its uniform row.
    epoch1_probs = [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]  # y=1 correct; y=2 correct
    target = policy(logits_of(epoch1_probs), torch.tensor([1, 2]), torch.tensor([4, 5]), at_epoch(1))
    s_after_epoch0 = torch.tensor([[0.6, 0.25, 0.15], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(policy.soft, s_after_epoch0)
    torch.testing.assert_close(target.q, s_after_epoch0[[1, 2]])
    torch.testing.assert_close(policy.counts, torch.tensor([0.0, 1.0, 1.0]))  # reset, then epoch 1's samples

    # Epoch 2: classes 1 and 2 take epoch 1's means; class 0 (no sample in epoch 1) keeps its row.
    target = policy(logits_of([[0.9, 0.05, 0.05]]), torch.tensor([0]), torch.tensor([0]), at_epoch(2))
    expected = torch.tensor([[0.6, 0.25, 0.15], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    torch.testing.assert_close(policy.soft, expected)
    torch.testing.assert_close(target.q, expected[[0]])
    # target = 0.5 onehot + 0.5 S[y]: the loss equals CE against that explicit row
    loss = smoothed_cross_entropy(logits_of([[0.9, 0.05, 0.05]]), torch.tensor([0]), target.eps, target.q,
                                  reduction="none")
    explicit = 0.5 * torch.tensor([[1.0, 0.0, 0.0]]) + 0.5 * expected[[0]]
    torch.testing.assert_close(loss, loss_against(logits_of([[0.9, 0.05, 0.05]]), explicit), rtol=1e-5, atol=1e-6)


def test_online_onehot_init_makes_first_epoch_plain_ce():
    policy = OnlineSmoothing(alpha=0.5, init="onehot")
    policy.setup(4, 3)
    logits, targets = logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS)
    target = policy(logits, targets, torch.arange(4), at_epoch(0))
    loss = smoothed_cross_entropy(logits, targets, target.eps, target.q)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "^alpha=0.0"), ({"alpha": 1.0}, "^alpha=1.0"),
    ({"init": "zeros"}, "^init='zeros'"),
])
def test_online_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnlineSmoothing(**kwargs)


def test_online_needs_setup():
    with pytest.raises(RuntimeError, match="setup"):
        OnlineSmoothing()(logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS), torch.arange(4), at_epoch(0))


# ------------------------------------------------------------------------------------------------ PS-KD


def test_self_distill_alpha_schedule():
    policy = SelfDistillation(alpha_T=0.8)
    assert [policy.alpha_at(at_epoch(t)) for t in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    no_epoch_limit = Progress(step=25, total_steps=100, epoch=0, max_epochs=-1)
    assert policy.alpha_at(no_epoch_limit) == pytest.approx(0.8 * 0.25)


def test_self_distill_memory_over_two_epochs_by_hand():
    policy = SelfDistillation(alpha_T=0.8)
    policy.setup(num_samples=5, num_classes=3)
    p0 = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]
    index0 = torch.tensor([0, 2, 4])
    target = policy(logits_of(p0), torch.tensor([0, 1, 2]), index0, at_epoch(0))
    # epoch 0: nothing stored yet -> eps 0 (one-hot), whatever alpha_0 is
    torch.testing.assert_close(target.eps, torch.zeros(3))
    torch.testing.assert_close(policy.predictions[index0], torch.tensor(p0))
    assert policy.seen.tolist() == [True, False, True, False, True]

    # epoch 1 (alpha = 0.8 * 2/4 = 0.4): samples 0 and 4 get their epoch-0 prediction, sample 1 was never seen
    p1 = [[0.5, 0.4, 0.1], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]
    index1, targets1 = torch.tensor([4, 1, 0]), torch.tensor([2, 1, 0])
    target = policy(logits_of(p1), targets1, index1, at_epoch(1))
    torch.testing.assert_close(target.eps, torch.tensor([0.4, 0.0, 0.4]))
    torch.testing.assert_close(target.q[[0, 2]], torch.tensor([p0[2], p0[0]]))
    onehot = F.one_hot(targets1, 3).float()
    explicit = (1 - target.eps[:, None]) * onehot + target.eps[:, None] * target.q
    loss = smoothed_cross_entropy(logits_of(p1), targets1, target.eps, target.q, reduction="none")
    torch.testing.assert_close(loss, loss_against(logits_of(p1), explicit), rtol=1e-5, atol=1e-6)
    # ... and the memory now holds epoch 1's predictions for the samples seen in epoch 1
    torch.testing.assert_close(policy.predictions[index1], torch.tensor(p1))
    torch.testing.assert_close(policy.predictions[2], torch.tensor(p0[1]))  # not seen in epoch 1: kept

    # epoch 2 (alpha = 0.6): teacher = epoch 1's prediction
    target = policy(logits_of([[0.3, 0.3, 0.4]]), torch.tensor([0]), torch.tensor([0]), at_epoch(2))
    torch.testing.assert_close(target.eps, torch.tensor([0.6]))
    torch.testing.assert_close(target.q, torch.tensor([p1[2]]))


def test_self_distill_rejects_bad_alpha():
    with pytest.raises(ValueError, match="^alpha_T=1.0"):
        SelfDistillation(alpha_T=1.0)


# ------------------------------------------------------------------------------------------------ negative (NLS)


def test_negative_smoothing_target_by_hand():
    policy = FixedSmoothing(eps=-0.2)
    logits, targets = logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS)
    target = policy(logits, targets, torch.arange(4), at_epoch(0))
    explicit = 1.2 * F.one_hot(targets, 3).float() - 0.2 / 3  # (1 - eps) onehot + eps / K, eps = -0.2
    loss = smoothed_cross_entropy(logits, targets, target.eps, target.q, reduction="none")
    torch.testing.assert_close(loss, loss_against(logits, explicit), rtol=1e-5, atol=1e-6)


def test_negative_smoothing_bound():
    FixedSmoothing(eps=EPS_NEGATIVE_BOUND)
    with pytest.raises(ValueError, match=r"^eps=-1.5 is out of range"):
        FixedSmoothing(eps=-1.5)


def test_negative_preset_composes():
    from tests.runs import compose

    cfg = compose("smoothing=negative")
    assert cfg.smoothing.eps < 0
    from hydra.utils import instantiate

    assert instantiate(cfg.smoothing).eps == pytest.approx(-0.2)


# ------------------------------------------------------------------------------------------------ state and resume

MEMORY_POLICIES = {
    "online": lambda: OnlineSmoothing(alpha=0.5),
    "self_distill": lambda: SelfDistillation(alpha_T=0.8),
    "adaptive_ema": lambda: AdaptiveSmoothing(ema=0.9, warmup_epochs=0),
    "alasca": lambda: ALASCASmoothing(warmup_epochs=1),
    "self_adaptive": lambda: SelfAdaptiveTraining(warmup_epochs=1),  # targets adapt from epoch 1 on
}
STATE = {"online": ("soft", "sums", "counts"), "self_distill": ("predictions", "seen"),
         "adaptive_ema": ("memory", "seen"), "alasca": ("logit_ema",), "self_adaptive": ("soft_labels", "seen")}


class StopAfter(pl.Callback):
    """Interrupt a run after ``epochs`` epochs, as a crash or a time limit would."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def tiny_fit(policy, max_epochs: int, tmp_path=None, ckpt_path=None, seed: int = 0, stop_after=None):
    """Train small_cnn on noisy digits for a few short epochs; returns (module, trainer)."""
    pl.seed_everything(seed, workers=True)
    datamodule = DigitsDataModule(noise=SymmetricNoise(0.4), batch_size=128)
    module = LabelSmoothingClassifier(small_cnn(10, 1, width=8), policy, num_classes=10)
    callbacks = [StopAfter(stop_after)] if stop_after else []
    if tmp_path is not None:
        # saved in on_validation_end, i.e. before LightningModule.on_train_epoch_end (as with
        # check_val_every_n_epoch > 1 or a fractional val_check_interval)
        # (no monitor: Lightning 2.6 refreshes last.ckpt only when a monitored top-k checkpoint is saved)
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, save_on_train_epoch_end=False))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=tmp_path is not None,
                         callbacks=callbacks, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize("name", list(MEMORY_POLICIES))
def test_policy_state_dict_loads_into_fresh_module(name):
    module, _ = tiny_fit(MEMORY_POLICIES[name](), max_epochs=2)
    state = module.state_dict()
    fresh = LabelSmoothingClassifier(small_cnn(10, 1, width=8), MEMORY_POLICIES[name](), num_classes=10)
    assert all(getattr(fresh.smoothing, b).numel() == 0 for b in STATE[name])  # lazily sized: not set up yet
    fresh.load_state_dict(state, strict=True)
    for buffer in STATE[name]:
        torch.testing.assert_close(getattr(fresh.smoothing, buffer), getattr(module.smoothing, buffer))
    assert getattr(module.smoothing, STATE[name][0]).abs().sum() > 0  # the memory did learn something
    if name == "online":
        assert fresh.smoothing._epoch == module.smoothing._epoch == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["online", "self_distill", "alasca", "self_adaptive"])
def test_resume_from_lightning_checkpoint_matches_uninterrupted_run(name, tmp_path):
    """A 3-epoch run interrupted after 2 and resumed from last.ckpt ends with the memory of an uninterrupted run.

    The checkpoint is written in on_validation_end, before LightningModule.on_train_epoch_end.
    """
    full, _ = tiny_fit(MEMORY_POLICIES[name](), max_epochs=3)
    _, interrupted = tiny_fit(MEMORY_POLICIES[name](), max_epochs=3, tmp_path=tmp_path, stop_after=2)
    assert interrupted.current_epoch == 2
    resumed, trainer = tiny_fit(MEMORY_POLICIES[name](), max_epochs=3, tmp_path=tmp_path / "resumed",
                                ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.current_epoch == 3
    for buffer in STATE[name]:
        torch.testing.assert_close(getattr(resumed.smoothing, buffer), getattr(full.smoothing, buffer),
                                   rtol=1e-4, atol=1e-5)


def test_online_class_statistics_are_all_reduced_under_distributed(tmp_path):
    """With a process group, the epoch roll sums every rank's statistics (world size 1 here: values unchanged)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        policy = OnlineSmoothing()
        policy.setup(4, 3)
        policy(logits_of(EPOCH0_PROBS), torch.tensor(EPOCH0_TARGETS), torch.arange(4), at_epoch(0))
        policy(logits_of(EPOCH0_PROBS[:1]), torch.tensor([0]), torch.tensor([0]), at_epoch(1))
        torch.testing.assert_close(policy.soft[0], torch.tensor([0.6, 0.25, 0.15]))
    finally:
        dist.destroy_process_group()
    assert math.isclose(float(policy.soft[2, 2]), 0.8, rel_tol=1e-6)
