"""Tests for adaptive_ls.smoothing: the smoothed loss, the annealing schedules and the adaptive policy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaptive_ls.smoothing import (
    SmoothingSettingError,
    EPS_NEGATIVE_BOUND,
    AdaptiveSmoothing,
    AnnealedSmoothing,
    FixedSmoothing,
    NoSmoothing,
    Progress,
    annealed_eps,
    smoothed_cross_entropy,
)

B, K = 16, 7


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return 3.0 * torch.randn(B, K, generator=g), torch.randint(0, K, (B,), generator=g)


def explicit_loss(logits, targets, eps, q=None):
    """The definition, written out: −Σ_k [(1−ε)·onehot + ε·q]_k · log p_k per sample (q uniform when None)."""
    eps = torch.as_tensor(eps, dtype=torch.float64).reshape(-1, 1)
    onehot = F.one_hot(targets, logits.shape[1]).double()
    q = torch.full_like(onehot, 1.0 / logits.shape[1]) if q is None else q.double()
    target = (1 - eps) * onehot + eps * q
    return -(target * F.log_softmax(logits.double(), dim=1)).sum(dim=1)


def at(step, total=100, epoch=0, max_epochs=10):
    return Progress(step=step, total_steps=total, epoch=epoch, max_epochs=max_epochs)


# ---------------------------------------------------------------------------------------------------------------------
# smoothed_cross_entropy
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3, 0.9, 0.999])
def test_scalar_eps_equals_torch_label_smoothing(batch, eps, reduction):
    logits, targets = batch
    ours = smoothed_cross_entropy(logits, targets, eps, reduction=reduction)
    torch_ = F.cross_entropy(logits, targets, label_smoothing=eps, reduction=reduction)
    assert ours.shape == torch_.shape
    torch.testing.assert_close(ours, torch_, rtol=1e-5, atol=1e-6)


def test_zero_eps_is_plain_cross_entropy(batch):
    logits, targets = batch
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets), F.cross_entropy(logits, targets))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_per_sample_eps_equals_a_loop_of_torch_losses(batch, reduction):
    logits, targets = batch
    eps = torch.linspace(0.0, 0.95, B)
    ours = smoothed_cross_entropy(logits, targets, eps, reduction=reduction)
    per_sample = torch.stack([
        F.cross_entropy(logits[i:i + 1], targets[i:i + 1], label_smoothing=float(eps[i])) for i in range(B)
    ])
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_per_sample_eps_gradient_matches_explicit_targets(batch):
    logits, targets = batch
    eps = torch.rand(B, generator=torch.Generator().manual_seed(1)) * 0.5
    a = logits.clone().requires_grad_()
    smoothed_cross_entropy(a, targets, eps).backward()
    b = logits.double().clone().requires_grad_()
    explicit_loss(b, targets, eps).mean().backward()
    torch.testing.assert_close(a.grad, b.grad.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [-0.1, -0.5, EPS_NEGATIVE_BOUND])
def test_negative_eps_equals_explicit_target_formula(batch, eps):
    logits, targets = batch
    ours = smoothed_cross_entropy(logits, targets, eps, reduction="none")
    torch.testing.assert_close(ours.double(), explicit_loss(logits, targets, eps), rtol=1e-5, atol=1e-6)
    # Negative smoothing rewards confidence beyond plain CE: the loss is below CE whenever log p_y > mean log p.
    ce = F.cross_entropy(logits, targets, reduction="none")
    above_mean = F.log_softmax(logits, 1).gather(1, targets[:, None]).squeeze(1) > F.log_softmax(logits, 1).mean(1)
    assert torch.all(ours[above_mean] < ce[above_mean])


def test_negative_per_sample_eps_equals_explicit_target_formula(batch):
    logits, targets = batch
    eps = torch.linspace(-0.8, 0.4, B)
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, eps, reduction="none").double(),
                               explicit_loss(logits, targets, eps), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eps", [1.0, 1.5, -1.01, -3.0])
def test_out_of_range_eps_is_rejected_naming_the_key(batch, eps):
    logits, targets = batch
    with pytest.raises(ValueError, match=r"^eps=") as info:
        smoothed_cross_entropy(logits, targets, eps)
    assert str(eps) in str(info.value) and "-1.0 <= ε < 1" in str(info.value)


def test_non_uniform_q_equals_explicit_target_formula(batch):
    logits, targets = batch
    q = torch.distributions.Dirichlet(torch.ones(K)).sample((B,))
    eps = torch.linspace(0.0, 0.9, B)
    for e in (0.3, eps):
        ours = smoothed_cross_entropy(logits, targets, e, q=q, reduction="none")
        torch.testing.assert_close(ours.double(), explicit_loss(logits, targets, e, q), rtol=1e-5, atol=1e-6)
    # q uniform given explicitly is the same as the fast path
    uniform = torch.full((B, K), 1.0 / K)
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, 0.3, q=uniform),
                               smoothed_cross_entropy(logits, targets, 0.3))


def test_bf16_logits(batch):
    logits, targets = batch
    low = logits.bfloat16().requires_grad_()
    loss = smoothed_cross_entropy(low, targets, 0.1)
    assert loss.dtype == torch.float32  # computed in float32
    torch.testing.assert_close(loss, F.cross_entropy(low.float(), targets, label_smoothing=0.1))
    loss.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()


def test_bad_shapes_and_reduction_are_rejected(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match="per-sample eps must have shape"):
        smoothed_cross_entropy(logits, targets, torch.zeros(B + 1))
    with pytest.raises(ValueError, match="q must have the logits' shape"):
        smoothed_cross_entropy(logits, targets, 0.1, q=torch.ones(B, K + 1) / (K + 1))
    with pytest.raises(ValueError, match="reduction='avg'"):
        smoothed_cross_entropy(logits, targets, 0.1, reduction="avg")


# ---------------------------------------------------------------------------------------------------------------------
# none / fixed
# ---------------------------------------------------------------------------------------------------------------------


def test_none_and_fixed_policies(batch):
    logits, targets = batch
    index = torch.arange(B)
    assert NoSmoothing()(logits, targets, index, at(0)).eps == 0.0
    fixed = FixedSmoothing(eps=-0.2)
    assert fixed(logits, targets, index, at(0)).eps == -0.2 == fixed(logits, targets, index, at(100, epoch=9)).eps
    with pytest.raises(SmoothingSettingError, match=r"^eps=1\.5 is out of range") as error:
        FixedSmoothing(eps=1.5)
    assert error.value.node == "smoothing"  # the config layer reports it as smoothing.eps


# ---------------------------------------------------------------------------------------------------------------------
# annealed
# ---------------------------------------------------------------------------------------------------------------------

# (schedule, extra kwargs, eps_start, eps_end, [(fraction, expected ε), ...]) — expected values worked out by hand.
SCHEDULE_CASES = [
    ("linear", {}, 0.4, 0.0, [(0.0, 0.4), (0.25, 0.3), (0.5, 0.2), (1.0, 0.0)]),
    ("linear", {}, -0.2, 0.2, [(0.0, -0.2), (0.5, 0.0), (1.0, 0.2)]),  # towards, and beyond, zero: NLS → LS
    ("cosine", {}, 0.4, 0.0, [(0.0, 0.4), (0.25, 0.4 - 0.2 * (1 - math.sqrt(0.5))), (0.5, 0.2), (1.0, 0.0)]),
    ("exponential", {}, 0.4, 0.004, [(0.0, 0.4), (0.5, 0.04), (1.0, 0.004)]),  # geometric mean at the middle
    ("exponential", {}, 0.4, 0.0, [(0.0, 0.4), (0.5, 0.4 * 1e-2), (0.999999, 0.4e-4), (1.0, 0.0)]),  # ends at 0
    # num_steps drops between num_steps + 1 equal plateaus, the last at eps_end
    ("step", {"num_steps": 4}, 0.4, 0.0, [(0.0, 0.4), (0.19, 0.4), (0.25, 0.3), (0.5, 0.2), (0.7, 0.1), (0.85, 0.0),
                                          (1.0, 0.0)]),
    ("step", {"num_steps": 2}, 0.4, 0.0, [(0.3, 0.4), (0.4, 0.2), (0.6, 0.2), (0.7, 0.0), (1.0, 0.0)]),
    ("step", {"num_steps": 1}, 0.4, 0.1, [(0.49, 0.4), (0.51, 0.1), (1.0, 0.1)]),
    ("linear", {"hold_fraction": 0.5}, 0.4, 0.0, [(0.0, 0.4), (0.25, 0.4), (0.5, 0.4), (0.75, 0.2), (1.0, 0.0)]),
    ("cosine", {"hold_fraction": 0.2}, 0.4, 0.0, [(0.2, 0.4), (0.6, 0.2), (1.0, 0.0)]),
    ("exponential", {"hold_fraction": 0.5}, 0.4, 0.004, [(0.3, 0.4), (0.75, 0.04), (1.0, 0.004)]),
    ("step", {"hold_fraction": 0.5, "num_steps": 2}, 0.4, 0.0, [(0.5, 0.4), (0.66, 0.4), (0.7, 0.2), (0.9, 0.0),
                                                                 (1.0, 0.0)]),
    # CE then NLS: eps_start before hold_fraction, eps_end from it on (the step at exactly 0.5 is the first NLS one)
    ("switch", {"hold_fraction": 0.5}, 0.0, -0.4, [(0.0, 0.0), (0.499, 0.0), (0.5, -0.4), (0.75, -0.4), (1.0, -0.4)]),
    ("switch", {"hold_fraction": 0.25}, 0.3, 0.1, [(0.2, 0.3), (0.25, 0.1), (1.0, 0.1)]),
]


@pytest.mark.parametrize("schedule, kwargs, start, end, points", SCHEDULE_CASES,
                         ids=[f"{c[0]}-{'-'.join(f'{k}{v}' for k, v in c[1].items()) or 'plain'}-{c[3]}"
                              for c in SCHEDULE_CASES])
def test_annealing_schedule_values(schedule, kwargs, start, end, points):
    policy = AnnealedSmoothing(eps_start=start, eps_end=end, schedule=schedule, **kwargs)
    for fraction, expected in points:
        assert policy.eps_at(fraction) == pytest.approx(expected, abs=1e-9), (schedule, fraction)
        assert annealed_eps(fraction, start, end, schedule, **kwargs) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "exponential", "step"])
def test_annealing_is_monotone_between_its_ends(schedule):
    policy = AnnealedSmoothing(eps_start=0.3, eps_end=0.01, schedule=schedule)
    values = [policy.eps_at(i / 200) for i in range(201)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[0] == 0.3 and values[-1] == pytest.approx(0.01)


def test_annealed_policy_follows_optimizer_steps_not_epochs(batch):
    logits, targets = batch
    policy = AnnealedSmoothing(eps_start=0.4, eps_end=0.0, schedule="linear")
    index = torch.arange(B)
    # half of the optimizer steps done → halfway, whatever the epoch says
    assert policy(logits, targets, index, at(50, total=100, epoch=0, max_epochs=10)).eps == pytest.approx(0.2)
    assert policy(logits, targets, index, at(50, total=100, epoch=9, max_epochs=10)).eps == pytest.approx(0.2)
    assert policy(logits, targets, index, at(0, total=100, epoch=9, max_epochs=10)).eps == pytest.approx(0.4)
    assert policy(logits, targets, index, at(100, total=100, epoch=0, max_epochs=10)).eps == pytest.approx(0.0)
    assert policy(logits, targets, index, at(250, total=100)).eps == pytest.approx(0.0)  # past the end: clamped


def test_annealed_argument_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^schedule='poly'.*linear, cosine, exponential, step, switch"):
        AnnealedSmoothing(schedule="poly")
    with pytest.raises(ValueError, match=r"^hold_fraction=0\.0: schedule=switch needs 0 < hold_fraction < 1"):
        AnnealedSmoothing(schedule="switch", hold_fraction=0.0)
    with pytest.raises(ValueError, match=r"^eps_start=1\.0"):
        AnnealedSmoothing(eps_start=1.0)
    with pytest.raises(ValueError, match=r"^eps_end=-2\.0"):
        AnnealedSmoothing(eps_end=-2.0)
    with pytest.raises(ValueError, match=r"^hold_fraction=1\.0"):
        AnnealedSmoothing(hold_fraction=1.0)
    with pytest.raises(ValueError, match=r"^num_steps=0"):
        AnnealedSmoothing(schedule="step", num_steps=0)


# ---------------------------------------------------------------------------------------------------------------------
# adaptive
# ---------------------------------------------------------------------------------------------------------------------


def confidence_ladder():
    """Three samples whose prediction grows more confident in class 0 (and so in their label, 0)."""
    logits = torch.zeros(3, K)
    logits[:, 0] = torch.tensor([0.5, 2.0, 6.0])
    return logits, torch.zeros(3, dtype=torch.long), torch.arange(3)


@pytest.mark.parametrize("signal", ["max_prob", "entropy"])
def test_confidence_signals_smooth_confident_samples_more(signal):
    logits, targets, index = confidence_ladder()
    eps = AdaptiveSmoothing(eps_min=0.05, eps_max=0.5, signal=signal, warmup_epochs=0)(
        logits, targets, index, at(10, epoch=3)).eps
    assert eps.shape == (3,)
    assert eps[0] < eps[1] < eps[2]


def test_true_class_prob_smooths_disbelieved_labels_more():
    logits, targets, index = confidence_ladder()
    policy = AdaptiveSmoothing(eps_min=0.05, eps_max=0.5, signal="true_class_prob", warmup_epochs=0)
    eps = policy(logits, targets, index, at(10, epoch=3)).eps
    assert eps[0] > eps[1] > eps[2]  # more belief in the given label → less smoothing
    # the same confident prediction, but the label says class 1: the model disbelieves it → near eps_max
    eps_wrong = policy(logits, torch.ones(3, dtype=torch.long), index, at(10, epoch=3)).eps
    assert torch.all(eps_wrong > eps) and eps_wrong[2] > 0.49


def test_adaptive_eps_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    targets = torch.tensor([0, 2, 0])
    probs = logits.softmax(1)
    index, progress = torch.arange(3), at(10, epoch=5)
    lo, hi = 0.1, 0.5
    got = {s: AdaptiveSmoothing(eps_min=lo, eps_max=hi, signal=s, warmup_epochs=0)(logits, targets, index, progress).eps
           for s in ("max_prob", "entropy", "true_class_prob")}
    torch.testing.assert_close(got["max_prob"], lo + (hi - lo) * probs.max(1).values)
    entropy = -(probs * probs.log()).sum(1)
    torch.testing.assert_close(got["entropy"], lo + (hi - lo) * (1 - entropy / math.log(3)))
    torch.testing.assert_close(got["true_class_prob"], lo + (hi - lo) * (1 - probs[torch.arange(3), targets]))
    assert got["entropy"][1].item() == pytest.approx(lo)  # uniform prediction: maximal entropy → eps_min


@pytest.mark.parametrize("signal", ["max_prob", "entropy", "true_class_prob"])
def test_adaptive_eps_stays_within_bounds(signal):
    g = torch.Generator().manual_seed(3)
    logits = torch.cat([20 * torch.randn(200, K, generator=g), torch.zeros(1, K)])  # extremes and a uniform one
    logits[0] = 0.0
    logits[1, 2] = 100.0
    targets = torch.randint(0, K, (201,), generator=g)
    eps = AdaptiveSmoothing(eps_min=-0.1, eps_max=0.3, signal=signal, warmup_epochs=0)(
        logits, targets, torch.arange(201), at(0, epoch=1)).eps
    assert eps.min() >= -0.1 - 1e-6 and eps.max() <= 0.3 + 1e-6
    assert eps.max() - eps.min() > 0.2  # and uses the range


def test_adaptive_warmup_uses_warmup_eps():
    logits, targets, index = confidence_ladder()
    policy = AdaptiveSmoothing(eps_min=0.0, eps_max=0.4, signal="max_prob", warmup_epochs=2, warmup_eps=0.15)
    for epoch in (0, 1):
        eps = policy(logits, targets, index, at(5, epoch=epoch)).eps
        assert eps.shape == (3,) and torch.all(eps == torch.tensor(0.15))
    eps = policy(logits, targets, index, at(5, epoch=2)).eps
    assert eps[0] < eps[1] < eps[2]


def test_adaptive_ema_memory_is_updated_by_index():
    policy = AdaptiveSmoothing(eps_min=0.0, eps_max=1 - 1e-6, signal="true_class_prob", warmup_epochs=0, ema=0.75)
    policy.setup(num_samples=6, num_classes=3)
    assert policy.memory.shape == (6, 3) and not policy.seen.any()
    logits1 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    logits2 = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    p1, p2 = logits1.softmax(1), logits2.softmax(1)
    targets = torch.tensor([0, 2])

    eps1 = policy(logits1, targets, torch.tensor([1, 4]), at(0)).eps
    torch.testing.assert_close(policy.memory[[1, 4]], p1)  # first sighting: the prediction itself
    torch.testing.assert_close(eps1, (1 - 1e-6) * (1 - p1[torch.arange(2), targets]))

    eps2 = policy(logits2, targets, torch.tensor([4, 5]), at(1)).eps
    expected4 = 0.75 * p1[1] + 0.25 * p2[0]  # sample 4 was seen: moving average
    torch.testing.assert_close(policy.memory[4], expected4)
    torch.testing.assert_close(policy.memory[5], p2[1])  # sample 5 is new
    torch.testing.assert_close(policy.memory[1], p1[0])  # untouched
    assert torch.all(policy.memory[[0, 2, 3]] == 0)
    assert policy.seen.tolist() == [False, True, False, False, True, True]
    # ε comes from the averaged prediction, not this step's
    torch.testing.assert_close(eps2, (1 - 1e-6) * (1 - torch.stack([expected4[0], p2[1, 2]])))


def test_adaptive_frozen_memory_keeps_the_belief_before_the_freeze():
    policy = AdaptiveSmoothing(eps_min=0.0, eps_max=0.8, warmup_epochs=0, ema=0.5, freeze_fraction=0.5)
    policy.setup(num_samples=4, num_classes=3)
    targets, index = torch.tensor([0, 1]), torch.tensor([0, 2])
    early = torch.tensor([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]])  # sample 0's label disbelieved, sample 2's believed
    late = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])   # later both labels are fitted (memorised)
    p_early, p_late = early.softmax(1), late.softmax(1)
    policy(early, targets, index, at(4, total=10))  # 40% of training: the memory still learns
    target = policy(late, targets, index, at(5, total=10))  # 50%: frozen from here on
    torch.testing.assert_close(policy.memory[index], p_early)  # the late prediction did not enter the memory
    torch.testing.assert_close(target.eps, 0.8 * (1 - p_early[[0, 1], targets]))
    torch.testing.assert_close(target.signal, 1 - p_late[[0, 1], targets])  # the raw signal follows the prediction
    # a sample first seen after the freeze has no memory: its current prediction is used, and none is stored
    new = policy(late[:1], targets[:1], torch.tensor([3]), at(6, total=10))
    torch.testing.assert_close(new.eps, 0.8 * (1 - p_late[:1, 0]))
    assert not policy.seen[3] and torch.all(policy.memory[3] == 0)


def test_adaptive_freeze_without_ema_remembers_the_last_prediction():
    policy = AdaptiveSmoothing(eps_max=0.5, warmup_epochs=0, freeze_fraction=0.5)
    policy.setup(num_samples=2, num_classes=3)
    targets, index = torch.tensor([0]), torch.tensor([1])
    first, second = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    policy(first, targets, index, at(1, total=10))
    policy(second, targets, index, at(2, total=10))
    eps = policy(torch.tensor([[9.0, 0.0, 0.0]]), targets, index, at(8, total=10)).eps
    torch.testing.assert_close(eps, 0.5 * (1 - second.softmax(1)[:, 0]))


def test_adaptive_freeze_patience_freezes_the_memory_of_the_best_validation_epoch():
    policy = AdaptiveSmoothing(eps_max=0.8, warmup_epochs=0, ema=0.0, freeze_patience=2)
    policy.setup(num_samples=2, num_classes=3)
    targets, index = torch.tensor([0]), torch.tensor([1])
    beliefs = [torch.tensor([[float(k), 0.0, 0.0]]) for k in range(6)]  # the label fitted more every epoch
    for epoch, accuracy in enumerate([0.30, 0.50, 0.45, 0.48]):  # the peak at epoch 1, two epochs without a rise
        policy(beliefs[epoch], targets, index, at(epoch, total=10))
        assert not policy.frozen_now, epoch
        policy.on_validation_end(torch.tensor(accuracy))
    assert policy.frozen_now and bool(policy.frozen)
    torch.testing.assert_close(policy.memory[1], beliefs[1].softmax(1)[0])  # back to the peak's memory
    eps = policy(beliefs[5], targets, index, at(5, total=10)).eps  # and it stays there
    torch.testing.assert_close(eps, 0.8 * (1 - beliefs[1].softmax(1)[:, 0]))
    # a checkpoint keeps the freeze: a fresh policy loads it frozen
    fresh = AdaptiveSmoothing(eps_max=0.8, warmup_epochs=0, ema=0.0, freeze_patience=2)
    fresh.load_state_dict(policy.state_dict())
    assert fresh.frozen_now
    torch.testing.assert_close(fresh(beliefs[5], targets, index, at(6, total=10)).eps, eps)


def test_adaptive_without_freeze_patience_keeps_its_checkpoint_format():
    """Runs saved before freeze_patience existed still load: its state appears only when it is on."""
    assert set(AdaptiveSmoothing(ema=0.5).state_dict()) == {"memory", "seen"}
    policy = AdaptiveSmoothing(ema=0.5)
    policy.on_validation_end(torch.tensor(0.5))  # off: nothing happens
    assert not policy.frozen_now


@pytest.mark.parametrize("patience", [-1, 1.5, True])
def test_adaptive_freeze_patience_is_checked(patience):
    with pytest.raises(SmoothingSettingError, match=rf"^freeze_patience={patience}: allowed is an integer >= 0"):
        AdaptiveSmoothing(freeze_patience=patience)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_adaptive_freeze_fraction_is_checked(fraction):
    with pytest.raises(SmoothingSettingError, match=rf"^freeze_fraction={fraction}: allowed is 0 < freeze_fraction"):
        AdaptiveSmoothing(freeze_fraction=fraction)


def test_adaptive_ema_needs_setup():
    policy = AdaptiveSmoothing(ema=0.5, warmup_epochs=0)
    logits, targets, index = confidence_ladder()
    with pytest.raises(RuntimeError, match="setup"):
        policy(logits, targets, index, at(0))


def test_adaptive_state_dict_round_trip_into_a_fresh_policy():
    policy = AdaptiveSmoothing(signal="max_prob", warmup_epochs=0, ema=0.5)
    policy.setup(num_samples=10, num_classes=K)
    g = torch.Generator().manual_seed(0)
    policy(torch.randn(4, K, generator=g), torch.zeros(4, dtype=torch.long), torch.tensor([0, 3, 5, 9]), at(0))
    state = policy.state_dict()
    assert set(state) == {"memory", "seen"} and state["memory"].shape == (10, K)

    fresh = AdaptiveSmoothing(signal="max_prob", warmup_epochs=0, ema=0.5)  # not set up: buffers still empty
    assert fresh.memory.numel() == 0
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.memory, policy.memory)
    assert torch.equal(fresh.seen, policy.seen) and fresh.seen.dtype == torch.bool
    fresh.setup(num_samples=10, num_classes=K)  # setup after loading keeps the loaded memory
    torch.testing.assert_close(fresh.memory, policy.memory)
    # and both continue identically
    logits, targets, index = torch.randn(2, K, generator=g), torch.tensor([1, 2]), torch.tensor([3, 4])
    torch.testing.assert_close(fresh(logits, targets, index, at(1)).eps, policy(logits, targets, index, at(1)).eps)


def test_adaptive_argument_errors_name_the_key():
    with pytest.raises(ValueError, match=r"^eps_min=0\.5 > eps_max=0\.2"):
        AdaptiveSmoothing(eps_min=0.5, eps_max=0.2)
    with pytest.raises(ValueError, match=r"^signal='margin'.*max_prob, entropy, true_class_prob"):
        AdaptiveSmoothing(signal="margin")
    with pytest.raises(ValueError, match=r"^eps_max=1\.0"):
        AdaptiveSmoothing(eps_max=1.0)
    with pytest.raises(ValueError, match=r"^warmup_eps=1\.2"):
        AdaptiveSmoothing(warmup_eps=1.2)
    with pytest.raises(ValueError, match=r"^ema=1\.0"):
        AdaptiveSmoothing(ema=1.0)
    with pytest.raises(ValueError, match=r"^warmup_epochs=-1"):
        AdaptiveSmoothing(warmup_epochs=-1)


def test_adaptive_q_prediction_gives_eps_to_the_remembered_prediction():
    policy = AdaptiveSmoothing(eps_max=0.9, warmup_epochs=0, freeze_fraction=0.5, q="prediction")
    policy.setup(num_samples=2, num_classes=3)
    targets, index = torch.tensor([0]), torch.tensor([1])
    early = torch.tensor([[0.0, 2.0, 0.0]])  # the model believes class 1, the label says 0
    p_early = early.softmax(1)
    policy(early, targets, index, at(1, total=10))
    target = policy(torch.tensor([[5.0, 0.0, 0.0]]), targets, index, at(8, total=10))  # the label is memorised
    eps = 0.9 * (1 - p_early[0, 0])
    torch.testing.assert_close(target.eps, eps.reshape(1))
    torch.testing.assert_close(target.q, p_early)
    row = (1 - eps) * torch.tensor([1.0, 0.0, 0.0]) + eps * p_early[0]
    assert row.argmax() == 1  # the target now teaches the believed class, not the given one
    loss = smoothed_cross_entropy(torch.tensor([[5.0, 0.0, 0.0]]), targets, target.eps, target.q, reduction="none")
    expected = -(row * torch.tensor([[5.0, 0.0, 0.0]]).log_softmax(1)[0]).sum()
    torch.testing.assert_close(loss[0], expected)


def test_adaptive_q_is_checked():
    with pytest.raises(SmoothingSettingError, match=r"^q='memory': allowed are uniform, prediction"):
        AdaptiveSmoothing(q="memory")
