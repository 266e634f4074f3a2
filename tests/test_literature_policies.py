"""ALASCA's adaptive smoothing, Self-Adaptive Training and the CE-then-NLS switch: targets by hand and against a
transcription of the authors' losses, memories by index, resume, two processes, and a run each."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from adaptive_ls.smoothing import (
    ALASCASmoothing,
    AnnealedSmoothing,
    Progress,
    SelfAdaptiveTraining,
    SmoothingSettingError,
    SmoothingTarget,
    smoothed_cross_entropy,
)
from tests import runs
from tests.runs import logits_of


at_epoch = partial(runs.at_epoch, max_epochs=100)


def target_rows(target: SmoothingTarget, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(1 − ε)·onehot(y) + ε·q, written out."""
    eps = torch.as_tensor(target.eps, dtype=torch.float32).reshape(-1, 1)
    return (1 - eps) * F.one_hot(targets, num_classes).float() + eps * target.q


def random_steps(num_steps: int, n: int = 10, k: int = 4, batch: int = 6, seed: int = 0):
    """(index, logits, targets) of ``num_steps`` batches; a sample keeps its label across steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    for _ in range(num_steps):
        index = torch.randperm(n, generator=g)[:batch]
        yield index, 3.0 * torch.randn(batch, k, generator=g), labels[index]


# ------------------------------------------------------------------------------------------------ ALASCA


def test_alasca_target_over_two_steps_by_hand():
    # ema 0.7, T = 0.3: after one step m = 0.3·z, so softmax(m / T) = softmax(z) = the prediction itself
    policy = ALASCASmoothing(ema=0.7, temperature=0.3, warmup_epochs=30)
    policy.setup(num_samples=4, num_classes=3)
    p1 = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]
    targets = torch.tensor([0, 1])
    target = policy(logits_of(p1), targets, torch.tensor([2, 0]), at_epoch(15))  # ramp r = 15/30 = 0.5
    torch.testing.assert_close(target.eps, torch.tensor([0.5 * 0.4, 0.5 * 0.5]))
    torch.testing.assert_close(target.signal, torch.tensor([0.4, 0.5]))  # 1 − α, before the ramp
    torch.testing.assert_close(target.q, torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]]))
    torch.testing.assert_close(target_rows(target, targets, 3), torch.tensor([[0.8, 0.1, 0.1], [0.125, 0.75, 0.125]]))
    torch.testing.assert_close(policy.logit_ema[[2, 0]], 0.3 * logits_of(p1))
    assert torch.all(policy.logit_ema[[1, 3]] == 0)

    # second step of sample 2, ramp done: m / T = (0.7·0.3·z1 + 0.3·z2) / 0.3 = 0.7·z1 + z2, softmax ∝ p1^0.7 · p2
    p2 = [[0.2, 0.2, 0.6]]
    target = policy(logits_of(p2), torch.tensor([0]), torch.tensor([2]), at_epoch(30))
    unnormalised = [0.6 ** 0.7 * 0.2, 0.3 ** 0.7 * 0.2, 0.1 ** 0.7 * 0.6]
    alpha = unnormalised[0] / sum(unnormalised)
    assert target.eps.item() == pytest.approx(1 - alpha, rel=1e-5)
    loss = smoothed_cross_entropy(logits_of(p2), torch.tensor([0]), target.eps, target.q, reduction="none")
    expected = -(alpha * math.log(0.2) + (1 - alpha) / 2 * (math.log(0.2) + math.log(0.6)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_alasca_ramp_starts_at_plain_ce():
    policy = ALASCASmoothing(warmup_epochs=30)
    assert [policy.ramp(e) for e in (0, 3, 15, 30, 90)] == pytest.approx([0.0, 0.1, 0.5, 1.0, 1.0])
    assert ALASCASmoothing(warmup_epochs=0).ramp(0) == 1.0
    policy.setup(4, 3)
    logits, targets = logits_of([[0.6, 0.3, 0.1]]), torch.tensor([1])
    target = policy(logits, targets, torch.tensor([0]), at_epoch(0))
    assert target.eps.item() == 0.0
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, target.eps, target.q),
                               F.cross_entropy(logits, targets))
    assert policy.logit_ema.abs().sum() > 0  # the EMA is updated from the first epoch on, as in the authors' code


class AuthorsALASCATarget:
    """The target of the authors' losses/ALASCA.py (ALASCA.forward's alpha, NLLLoss's target), on the CPU."""

    def __init__(self, num_examp, num_class, w_ema=0.7, temp=0.333, warmup_epoch=30):
        self.ema = torch.zeros((num_examp, num_class)) / num_class
        self.w_ema, self.temp, self.warmup_epoch = w_ema, temp, warmup_epoch

    def loss(self, outputs, targets, epoch, indexs):
        self.ema[indexs] = self.w_ema * self.ema[indexs] + (1 - self.w_ema) * outputs.detach()
        ema_sm = F.softmax(self.ema[indexs] / self.temp, dim=-1)
        alpha = torch.gather(ema_sm, 1, targets.view(-1, 1))
        alpha = min(1., epoch / self.warmup_epoch) * alpha + (1 - min(1., epoch / self.warmup_epoch)) * torch.ones(
            alpha.size())
        onehot = torch.zeros(outputs.size()).scatter_(1, targets.view(-1, 1), 1)
        all_one = torch.ones(outputs.size()).scatter_(1, targets.view(-1, 1), 0)
        target = alpha * onehot + (1 - alpha) / (outputs.size(1) - 1) * all_one
        return -torch.sum(F.log_softmax(outputs, dim=1) * target, dim=1)


def test_alasca_matches_the_authors_target_over_many_steps():
    policy, authors = ALASCASmoothing(), AuthorsALASCATarget(10, 4)
    policy.setup(10, 4)
    for step, (index, logits, targets) in enumerate(random_steps(40)):
        epoch = step  # through the ramp (30 epochs) and beyond
        target = policy(logits, targets, index, at_epoch(epoch))
        ours = smoothed_cross_entropy(logits, targets, target.eps, target.q, reduction="none")
        torch.testing.assert_close(ours, authors.loss(logits, targets, epoch, index), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(policy.logit_ema, authors.ema)


def test_alasca_needs_setup():
    with pytest.raises(RuntimeError, match="setup"):
        ALASCASmoothing()(logits_of([[0.5, 0.5]]), torch.tensor([0]), torch.tensor([0]), at_epoch(0))


@pytest.mark.parametrize("kwargs, match", [
    ({"ema": 1.0}, r"^ema=1\.0: allowed is 0 <= ema < 1"), ({"ema": -0.1}, r"^ema=-0\.1"),
    ({"temperature": 0.0}, r"^temperature=0\.0: allowed is temperature > 0"),
    ({"warmup_epochs": -1}, r"^warmup_epochs=-1: allowed is an integer >= 0"),
    ({"warmup_epochs": 2.5}, r"^warmup_epochs=2\.5"),
])
def test_alasca_rejects_bad_settings(kwargs, match):
    with pytest.raises(SmoothingSettingError, match=match):
        ALASCASmoothing(**kwargs)


# ------------------------------------------------------------------------------------------------ Self-Adaptive Training


def test_self_adaptive_target_over_two_steps_by_hand():
    policy = SelfAdaptiveTraining(momentum=0.9, warmup_epochs=2)
    policy.setup(num_samples=3, num_classes=3)
    logits, targets, index = logits_of([[0.2, 0.5, 0.3]]), torch.tensor([0]), torch.tensor([1])
    # t = 0.9·onehot(0) + 0.1·p = [0.92, 0.05, 0.03]: ε = 0.08, q = [0, 0.05, 0.03] / 0.08, weight = max t = 0.92
    target = policy(logits, targets, index, at_epoch(2))
    torch.testing.assert_close(policy.soft_labels[1], torch.tensor([0.92, 0.05, 0.03]))
    torch.testing.assert_close(target.eps, torch.tensor([0.08]))
    torch.testing.assert_close(target.q, torch.tensor([[0.0, 0.625, 0.375]]))
    torch.testing.assert_close(target.weight, torch.tensor([0.92]))
    torch.testing.assert_close(target_rows(target, targets, 3), torch.tensor([[0.92, 0.05, 0.03]]))
    assert policy.seen.tolist() == [False, True, False]

    # second step: t = 0.9·[0.92, 0.05, 0.03] + 0.1·[0.1, 0.8, 0.1] = [0.838, 0.125, 0.037]
    target = policy(logits_of([[0.1, 0.8, 0.1]]), targets, index, at_epoch(3))
    torch.testing.assert_close(policy.soft_labels[1], torch.tensor([0.838, 0.125, 0.037]))
    torch.testing.assert_close(target.eps, torch.tensor([0.162]))
    torch.testing.assert_close(target.q, torch.tensor([[0.0, 0.125 / 0.162, 0.037 / 0.162]]))
    loss = smoothed_cross_entropy(logits_of([[0.1, 0.8, 0.1]]), targets, target.eps, target.q, reduction="none")
    expected = -(0.838 * math.log(0.1) + 0.125 * math.log(0.8) + 0.037 * math.log(0.1))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_self_adaptive_warmup_is_plain_ce_and_leaves_the_targets_alone():
    policy = SelfAdaptiveTraining(warmup_epochs=2)
    policy.setup(3, 3)
    logits, targets = logits_of([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]), torch.tensor([0, 2])
    for epoch in (0, 1):
        target = policy(logits, targets, torch.tensor([0, 2]), at_epoch(epoch))
        assert target.q is None and target.weight is None and torch.all(target.eps == 0)
        torch.testing.assert_close(target.signal, torch.tensor([0.8, 0.2]))  # 1 − p[y], known during warm-up too
    assert not policy.seen.any() and torch.all(policy.soft_labels == 0)


def test_self_adaptive_certain_target_has_zero_eps_and_no_nan():
    policy = SelfAdaptiveTraining(warmup_epochs=0)
    policy.setup(2, 3)
    logits = torch.tensor([[200.0, 0.0, 0.0]])  # softmax is exactly onehot(0) in float32: t stays onehot
    target = policy(logits, torch.tensor([0]), torch.tensor([0]), at_epoch(0))
    assert target.eps.item() == 0.0
    torch.testing.assert_close(target.q, torch.full((1, 3), 1 / 3))
    assert torch.isfinite(smoothed_cross_entropy(logits, torch.tensor([0]), target.eps, target.q))


class AuthorsSATLoss:
    """The authors' losses/loss.py SelfAdaptiveTrainingCE, on the CPU."""

    def __init__(self, labels, num_classes, momentum=0.9, es=60):
        self.soft_labels = torch.zeros(labels.shape[0], num_classes, dtype=torch.float)
        self.soft_labels[torch.arange(labels.shape[0]), labels] = 1
        self.momentum, self.es = momentum, es

    def __call__(self, logits, targets, index, epoch):
        if epoch < self.es:
            return F.cross_entropy(logits, targets)
        prob = F.softmax(logits.detach(), dim=1)
        self.soft_labels[index] = self.momentum * self.soft_labels[index] + (1 - self.momentum) * prob
        weights, _ = self.soft_labels[index].max(dim=1)
        weights *= logits.shape[0] / weights.sum()
        loss = torch.sum(-F.log_softmax(logits, dim=1) * self.soft_labels[index], dim=1)
        return (loss * weights).mean()


@pytest.mark.parametrize("sample_weighting", [True, False])
def test_self_adaptive_matches_the_authors_loss(sample_weighting):
    labels = torch.randint(0, 4, (10,), generator=torch.Generator().manual_seed(0))
    policy, authors = SelfAdaptiveTraining(warmup_epochs=3, sample_weighting=sample_weighting), AuthorsSATLoss(
        labels, 4, es=3)
    policy.setup(10, 4)
    for step, (index, logits, targets) in enumerate(random_steps(12)):
        epoch = step // 2
        target = policy(logits, targets, index, at_epoch(epoch))
        ours = target.batch_loss(smoothed_cross_entropy(logits, targets, target.eps, target.q, reduction="none"))
        theirs = authors(logits, targets, index, epoch)
        if not sample_weighting and epoch >= 3:  # the same targets, averaged without weights
            t = authors.soft_labels[index]
            theirs = torch.sum(-F.log_softmax(logits, dim=1) * t, dim=1).mean()
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    seen = policy.seen
    torch.testing.assert_close(policy.soft_labels[seen], authors.soft_labels[seen])
    assert 0 < seen.sum() < 10 or seen.all()


def test_batch_loss_is_the_weighted_mean():
    losses = torch.tensor([1.0, 2.0, 4.0])
    assert SmoothingTarget(0.0).batch_loss(losses).item() == pytest.approx(7 / 3)
    weighted = SmoothingTarget(0.0, weight=torch.tensor([0.5, 1.0, 0.5]))
    assert weighted.batch_loss(losses).item() == pytest.approx((0.5 + 2.0 + 2.0) / 2.0)


def test_training_step_applies_the_policy_weight():
    from adaptive_ls.models import small_cnn
    from adaptive_ls.module import LabelSmoothingClassifier

    torch.manual_seed(0)
    policy = SelfAdaptiveTraining(warmup_epochs=0)
    policy.setup(8, 10)
    module = LabelSmoothingClassifier(small_cnn(10, 1, width=4), policy, num_classes=10)
    module._train_metrics_logged = True  # no trainer to log to
    images, targets, index = torch.randn(4, 1, 8, 8), torch.tensor([0, 3, 3, 9]), torch.tensor([0, 2, 5, 7])
    out = module.training_step((images, targets, index), 0)
    logits = out["logits"]
    t = policy.soft_labels[index]
    per_sample = -(t * logits.log_softmax(1)).sum(1)
    weight = t.max(1).values
    torch.testing.assert_close(out["loss"], (weight * per_sample).sum() / weight.sum())


def test_self_adaptive_needs_setup():
    with pytest.raises(RuntimeError, match="setup"):
        SelfAdaptiveTraining(warmup_epochs=0)(logits_of([[0.5, 0.5]]), torch.tensor([0]), torch.tensor([0]),
                                              at_epoch(0))


@pytest.mark.parametrize("kwargs, match", [
    ({"momentum": 1.0}, r"^momentum=1\.0: allowed is 0 <= momentum < 1"),
    ({"warmup_epochs": -1}, r"^warmup_epochs=-1: allowed is an integer >= 0"),
    ({"sample_weighting": "yes"}, r"^sample_weighting='yes': allowed are true, false"),
])
def test_self_adaptive_rejects_bad_settings(kwargs, match):
    with pytest.raises(SmoothingSettingError, match=match):
        SelfAdaptiveTraining(**kwargs)


# ------------------------------------------------------------------------------------------------ state, resume, DDP

POLICIES = {
    "alasca": (lambda: ALASCASmoothing(warmup_epochs=2), ("logit_ema",)),
    "self_adaptive": (lambda: SelfAdaptiveTraining(warmup_epochs=1), ("soft_labels", "seen")),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_fresh_policy_loads_the_state_and_continues_identically(name):
    make, buffers = POLICIES[name]
    policy = make()
    policy.setup(10, 4)
    steps = list(random_steps(8))
    for i, (index, logits, targets) in enumerate(steps[:4]):
        policy(logits, targets, index, at_epoch(i // 2))
    state = policy.state_dict()
    assert set(state) == set(buffers) and state[buffers[0]].shape == (10, 4)

    fresh = make()  # not set up: buffers still empty
    assert all(getattr(fresh, b).numel() == 0 for b in buffers)
    fresh.load_state_dict(state)
    fresh.setup(10, 4)  # setup after loading keeps the loaded state
    for i, (index, logits, targets) in enumerate(steps[4:], start=4):
        a, b = policy(logits, targets, index, at_epoch(i // 2)), fresh(logits, targets, index, at_epoch(i // 2))
        torch.testing.assert_close(a.eps, b.eps)
        torch.testing.assert_close(a.q, b.q)
        assert (a.weight is None) == (b.weight is None)
    for buffer in buffers:
        assert torch.equal(getattr(fresh, buffer), getattr(policy, buffer))


WORLD = 2


def policies_on_rank(rank: int, init_file: str, out: str) -> None:
    """Each of two processes feeds its half of every batch; saves what its policies hold."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    saved = {}
    for name, (make, buffers) in POLICIES.items():
        policy = make()
        policy.setup(10, 4)
        eps = []
        for i, (index, logits, targets) in enumerate(random_steps(6, batch=6)):
            mine = slice(rank * 3, rank * 3 + 3)
            eps.append(policy(logits[mine], targets[mine], index[mine], at_epoch(i // 2)).eps)
        saved[name] = {**{b: getattr(policy, b) for b in buffers}, "eps": torch.cat(eps)}
    torch.save(saved, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_memories_are_the_same_on_every_process(tmp_path):
    mp.spawn(policies_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, (make, buffers) in POLICIES.items():
        single = make()
        single.setup(10, 4)
        eps = [single(logits, targets, index, at_epoch(i // 2)).eps
               for i, (index, logits, targets) in enumerate(random_steps(6, batch=6))]
        for r, state in enumerate(ranks):
            for buffer in buffers:
                torch.testing.assert_close(state[name][buffer], getattr(single, buffer), msg=f"{name} {buffer} {r}")
            mine = torch.cat([e[r * 3:r * 3 + 3] for e in eps])
            torch.testing.assert_close(state[name]["eps"], mine)


# ------------------------------------------------------------------------------------------------ switch (CE then NLS)


def test_switch_is_exact_in_optimizer_steps():
    policy = AnnealedSmoothing(eps_start=0.0, eps_end=-0.4, schedule="switch", hold_fraction=0.5)
    logits, targets, index = torch.zeros(2, 3), torch.tensor([0, 1]), torch.arange(2)
    eps = [policy(logits, targets, index, Progress(step, 100, step // 50, 2)).eps for step in range(100)]
    assert eps == [0.0] * 50 + [-0.4] * 50
    assert policy(logits, targets, index, Progress(130, 100, 2, 2)).eps == -0.4  # past the end


def test_switch_needs_a_hold_fraction():
    with pytest.raises(SmoothingSettingError, match=r"^hold_fraction=0\.0: schedule=switch needs 0 < hold_fraction"):
        AnnealedSmoothing(eps_start=0.0, eps_end=-0.4, schedule="switch")


# ------------------------------------------------------------------------------------------------ runs


def check_run(results: dict, name: str, params: dict) -> list[float]:
    """The run completed with the policy's name and settings recorded and finite metrics; its ε per epoch."""
    assert results["status"] == "completed"
    assert results["smoothing"] == name
    assert {k: results[k] for k in params} == params
    for key in ("test/acc", "test/nll", "test/ece", "val/acc"):
        assert math.isfinite(results[key]), key
    assert all(math.isfinite(row["train/loss"]) for row in results["history"])
    return [row["smoothing/eps_mean"] for row in results["history"]]


@pytest.mark.slow
def test_alasca_run(tmp_path):
    from tests.runs import run_in

    results = run_in(tmp_path, "smoothing=alasca", "smoothing.warmup_epochs=1", "noise=symmetric")
    first, second = check_run(results, "alasca", {"smoothing/ema": 0.7, "smoothing/temperature": 0.333,
                                                  "smoothing/warmup_epochs": 1})
    assert first == 0.0 and 0.0 < second < 1.0  # the ramp: plain CE in epoch 0, full ALASCA from epoch 1
    assert all(0.0 <= row["smoothing/eps_min"] <= row["smoothing/eps_max"] < 1.0 for row in results["history"])


@pytest.mark.slow
def test_self_adaptive_run(tmp_path):
    from tests.runs import run_in

    results = run_in(tmp_path, "smoothing=self_adaptive", "smoothing.warmup_epochs=1", "noise=symmetric")
    first, second = check_run(results, "self_adaptive", {"smoothing/momentum": 0.9, "smoothing/warmup_epochs": 1,
                                                         "smoothing/sample_weighting": True})
    assert first == 0.0 and 0.0 < second <= 0.1 + 1e-6  # first update: ε_i = 0.1·(1 − p_i[y_i])


@pytest.mark.slow
def test_switch_run(tmp_path):
    from tests.runs import run_in

    results = run_in(tmp_path, "smoothing=annealed", "smoothing.schedule=switch", "smoothing.eps_start=0",
                     "smoothing.eps_end=-0.4", "smoothing.hold_fraction=0.5")
    eps = check_run(results, "annealed", {"smoothing/schedule": "switch", "smoothing/hold_fraction": 0.5})
    assert eps == pytest.approx([0.0, -0.4])  # CE in the first of two epochs, NLS in the second
