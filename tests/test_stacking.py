"""A stack of jobs (adaptive_ls.stacking) trains each member exactly as its single job: weights, BatchNorm statistics,
policy state, eval outputs and metrics, against LabelSmoothingClassifier runs of the same settings.

Both executions are checked. vmap: bitwise nowhere (its grouped convolution's kernel depends on the CPU); the
member-vs-single checks run the nets in float64 (a first layer casts the
images), so that the float rounding in which vmap's backward differs from a single net's (~1e-7 in float32, amplified
by training) stays far below the tolerances; the float32 and bf16 gaps are measured and printed by their own test.
loop (the CPU's default): each member runs its single net's own computation, so it is checked bitwise in float32.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from adaptive_ls import AdaptiveSmoothing, FixedSmoothing, LabelSmoothingClassifier
from adaptive_ls.data import DigitsDataModule
from adaptive_ls.models import fastnet, small_cnn
from adaptive_ls.module import cosine_schedule, parameter_groups
from adaptive_ls.noise import SymmetricNoise
from adaptive_ls.smoothing import SelfAdaptiveTraining
from adaptive_ls.stacking import (
    StackedClassifier,
    StackedDataModule,
    StackedNet,
    clip_grad_norm_per_member,
    member_metrics,
    member_images,
)

WIDTH = 4  # small_cnn channels: BatchNorm in every block, a fraction of a second per epoch on digits
OPTIMIZER = partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
SCHEDULE = partial(cosine_schedule, warmup_fraction=0.1)


@dataclass(frozen=True)
class Member:
    """What differs between the jobs of a noise sweep."""

    seed: int
    noise_rate: float
    noise_seed: int
    policy: Callable

    def datamodule(self) -> DigitsDataModule:
        return DigitsDataModule(noise=SymmetricNoise(rate=self.noise_rate), noise_seed=self.noise_seed, seed=self.seed)


MEMBERS = (
    Member(seed=0, noise_rate=0.0, noise_seed=0, policy=lambda: FixedSmoothing(eps=0.1)),
    Member(seed=1, noise_rate=0.4, noise_seed=1, policy=lambda: AdaptiveSmoothing(ema=0.5, warmup_epochs=0)),
    Member(seed=2, noise_rate=0.2, noise_seed=2, policy=lambda: SelfAdaptiveTraining(warmup_epochs=0)),
)


class Float64Input(nn.Module):
    """Casts the (float32) images to float64, so that a float64 net can train on a data module's batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def build_net(seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """The net as a single job builds it: the training seed, then the net (config.build_run)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    net = small_cnn(num_classes=10, in_channels=1, width=WIDTH)
    return nn.Sequential(Float64Input(), net).double() if dtype == torch.float64 else net


def trainer(epochs: int = 2) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def max_gap(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a) if a else 0.0


# -- optimizer steps by hand, on the data modules' own batches ------------------------------------------------------


def member_batches(member: Member, steps: int) -> tuple[DigitsDataModule, list, tuple]:
    """The member's data module, its first ``steps`` training batches (augmented, as in training) and a validation
    batch."""
    datamodule = member.datamodule()
    datamodule.setup("fit")
    batches = [datamodule.prepare_batch(batch, augment=True)
               for batch, _ in zip(datamodule.train_dataloader(), range(steps))]
    val = datamodule.prepare_batch(next(iter(datamodule.val_dataloader())), augment=False)
    return datamodule, batches, val


def by_hand(module, batch_list, autocast: bool = False) -> list:
    """Optimizer steps of ``module`` without a trainer; the training-step outputs."""
    module._train_metrics_logged = True  # no trainer to log to
    optimizer, outputs = module.configure_optimizers(), []
    for step, batch in enumerate(batch_list):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            output = module.training_step(batch, step)
        output["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        outputs.append(output)
    return outputs


def train_by_hand(members, steps: int, dtype: torch.dtype, autocast: bool = False, execution: str = "vmap"):
    """Each member alone (LabelSmoothingClassifier) and all together (StackedClassifier), ``steps`` steps on the same
    batches; returns (singles, their outputs, stack, its outputs, validation batches)."""
    data = [member_batches(member, steps) for member in members]
    singles, single_outputs = [], []
    for member, (datamodule, batches, _) in zip(members, data):
        module = LabelSmoothingClassifier(build_net(member.seed, dtype), member.policy(), OPTIMIZER,
                                          channels_last=False)
        module.smoothing.setup(datamodule.num_train_total, 10)
        single_outputs.append(by_hand(module, batches, autocast))
        singles.append(module)
    stack = StackedClassifier(StackedNet([build_net(m.seed, dtype) for m in members], execution),
                              [m.policy() for m in members], OPTIMIZER, channels_last=False)
    for policy, (datamodule, _, _) in zip(stack.smoothing, data):
        policy.setup(datamodule.num_train_total, 10)
    stack_outputs = by_hand(stack, [list(step) for step in zip(*(batches for _, batches, _ in data))], autocast)
    return singles, single_outputs, stack, stack_outputs, [val for _, _, val in data]


def member_gaps(singles, single_outputs, stack, stack_outputs, val_batches) -> dict[str, float]:
    """The largest member-vs-single differences: training logits (every step), weights and buffers after the steps,
    policy state, eval-mode logits."""
    logits = max((single[step]["logits"] - stacked["members"][i]["logits"]).abs().max().item()
                 for i, single in enumerate(single_outputs) for step, stacked in enumerate(stack_outputs))
    state = max(max_gap(stack.net.member_state_dict(i), s.net.state_dict()) for i, s in enumerate(singles))
    policy = max(max_gap(stack.smoothing[i].state_dict(), s.smoothing.state_dict()) for i, s in enumerate(singles))
    stack.eval()
    with torch.no_grad():
        stacked_eval = stack.eval_logits(member_images(val_batches))
        single_eval = [s.eval().eval_logits(images) for s, (images, _, _) in zip(singles, val_batches)]
    evaluation = max((stacked_eval[i] - logits_i).abs().max().item() for i, logits_i in enumerate(single_eval))
    return {"train logits": logits, "weights and buffers": state, "policy state": policy, "eval logits": evaluation}


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_members_step_exactly_as_their_single_jobs_in_float64(execution):
    singles, single_outputs, stack, stack_outputs, val = train_by_hand(MEMBERS, steps=6, dtype=torch.float64,
                                                                       execution=execution)
    gaps = member_gaps(singles, single_outputs, stack, stack_outputs, val)
    print(f"float64 {execution} stack vs single jobs, 6 steps:", {k: f"{v:.1e}" for k, v in gaps.items()})
    assert all(gap < 1e-6 for gap in gaps.values()), gaps
    # the steps did move what must match: weights, running statistics, the per-sample memories
    for i, single in enumerate(singles):
        state = stack.net.member_state_dict(i)
        assert state["1.0.1.num_batches_tracked"].item() == 6
        assert state["1.0.1.running_mean"].abs().max() > 0
    assert int(stack.smoothing[1].seen.sum()) == int(stack.smoothing[2].seen.sum()) == 6 * 64
    assert not torch.equal(stack.net.member_state_dict(0)["1.6.weight"], stack.net.member_state_dict(1)["1.6.weight"])
    # the stack's loss is the sum of the members' own batch losses
    for step, output in enumerate(stack_outputs):
        total = sum(single[step]["loss"] for single in single_outputs)
        assert output["loss"].item() == pytest.approx(total.item(), abs=1e-9)


def test_looped_members_step_as_their_single_jobs_bitwise_in_float32():
    """execution=loop: every member's logits, weights, BatchNorm statistics and policy memory after 10 optimizer
    steps are exactly its single job's."""
    gaps = member_gaps(*train_by_hand(MEMBERS, steps=10, dtype=torch.float32, execution="loop"))
    assert gaps == {"train logits": 0.0, "weights and buffers": 0.0, "policy state": 0.0, "eval logits": 0.0}


def test_float32_and_bf16_autocast_gaps_are_rounding(capsys):
    """Measured, printed (execution=vmap): the forward pass is the members' own, vmap's backward rounds differently,
    and training amplifies the difference step by step."""
    results, singles = {}, {}
    for name, autocast in (("float32", False), ("bf16 autocast", True)):
        run = train_by_hand(MEMBERS, steps=10, dtype=torch.float32, autocast=autocast)
        results[name], singles[name] = member_gaps(*run), run[0]
    # for scale: how far bf16 autocast moves a single job from its float32 run in the same steps
    bf16_vs_float32 = max(max_gap(a.net.state_dict(), b.net.state_dict())
                          for a, b in zip(singles["float32"], singles["bf16 autocast"]))
    with capsys.disabled():
        for name, gaps in results.items():
            print(f"\n{name} stack vs single jobs, 10 steps:", {k: f"{v:.1e}" for k, v in gaps.items()})
        print(f"single jobs, bf16 autocast vs float32, 10 steps: weights and buffers {bf16_vs_float32:.1e}")
    assert all(gap < 1e-3 for gap in results["float32"].values()), results["float32"]
    assert all(gap < 0.2 for gap in results["bf16 autocast"].values()), results["bf16 autocast"]


# -- whole runs in a Lightning Trainer --------------------------------------------------------------------------------


def fit_single(member: Member, dtype: torch.dtype, **options):
    """The member's single job: its metrics after fitting, its test results, the module and data module."""
    module = LabelSmoothingClassifier(build_net(member.seed, dtype), member.policy(), OPTIMIZER, SCHEDULE, **options)
    datamodule, fit = member.datamodule(), trainer()
    fit.fit(module, datamodule=datamodule)
    metrics = {k: float(v) for k, v in fit.callback_metrics.items()}
    return metrics, fit.test(module, datamodule=datamodule, verbose=False)[0], module, datamodule


def fit_stack(members, dtype: torch.dtype, execution: str = "vmap", **options):
    """The members as one stack: per member its metrics after fitting and its test results; the stack."""
    stack = StackedClassifier(StackedNet([build_net(m.seed, dtype) for m in members], execution),
                              [m.policy() for m in members], OPTIMIZER, SCHEDULE, **options)
    datamodule, fit = StackedDataModule([m.datamodule() for m in members]), trainer()
    fit.fit(stack, datamodule=datamodule)
    metrics = {k: float(v) for k, v in fit.callback_metrics.items()}
    tested = fit.test(stack, datamodule=datamodule, verbose=False)[0]
    return ([member_metrics(metrics, name) for name in stack.names],
            [member_metrics(tested, name) for name in stack.names], stack)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_a_short_stacked_run_matches_single_runs(execution):
    options = dict(norm_bias_lr_scale=4.0, channels_last=False)  # BatchNorm shifts in a group of their own
    stacked, stacked_tests, stack = fit_stack(MEMBERS, torch.float64, execution, **options)
    for i, member in enumerate(MEMBERS):
        metrics, tested, single, datamodule = fit_single(member, torch.float64, **options)
        assert set(stacked[i]) == set(metrics)  # the names its single run logs: train/, smoothing/, val/
        assert {"val/acc", "val/nll", "val/acc_best", "train/loss", "smoothing/eps_mean"} <= set(metrics)
        assert set(stacked_tests[i]) == set(tested)
        for key, value in {**metrics, **tested}.items():
            assert {**stacked[i], **stacked_tests[i]}[key] == pytest.approx(value, abs=1e-4), (i, key)
        assert max_gap(stack.net.member_state_dict(i), single.net.state_dict()) < 1e-6
        # the member's state as a single job's checkpoint holds it: loadable into LabelSmoothingClassifier as is
        restored = LabelSmoothingClassifier(build_net(0), member.policy(), channels_last=False)
        restored.load_state_dict(stack.member_state_dict(i))
        assert restored.state_dict()["val_acc_best.max_value"].item() == pytest.approx(metrics["val/acc_best"],
                                                                                      abs=1e-4)
        retested = trainer().test(restored, datamodule=datamodule, verbose=False)[0]
        assert retested == pytest.approx(tested, abs=1e-4)
    assert len({round(m["val/nll"], 6) for m in stacked}) == len(MEMBERS)  # the members did differ


@pytest.mark.parametrize("members, execution", [(MEMBERS[1:2], "vmap"), (MEMBERS, "loop")],
                         ids=["a stack of one", "a looped stack of three"])
def test_a_stack_of_one_or_a_looped_stack_is_its_single_jobs_exactly(members, execution):
    """float32 and the module's defaults (channels_last): bitwise the same weights, metrics and policy state."""
    stacked, stacked_tests, stack = fit_stack(members, torch.float32, execution)
    for i, member in enumerate(members):
        metrics, tested, single, _ = fit_single(member, torch.float32)
        assert stacked[i] == metrics and stacked_tests[i] == tested
        state, expected = stack.net.member_state_dict(i), single.net.state_dict()
        assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in expected)
        assert all(torch.equal(a, b) for a, b in zip(stack.smoothing[i].state_dict().values(),
                                                     single.smoothing.state_dict().values()))


# -- the parts -------------------------------------------------------------------------------------------------------


def same_outputs(execution: str):
    """How a stack's forward is compared with a single net's. loop runs each member through the single net's own
    computation, the same kernels by construction: bitwise. vmap runs one grouped convolution whose kernel (and so
    its summation order) depends on the CPU's vector instructions: bitwise on AVX-512 machines, not on AVX2 ones; a
    float32 rounding tolerance there (the outputs are O(1), a reordered sum moves them by ~1e-7)."""
    if execution == "loop":
        return torch.equal
    return lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("execution", ["vmap", "loop"])
def test_member_state_dicts_are_single_nets(execution):
    nets = [build_net(seed, torch.float32) for seed in (0, 1)]
    stack = StackedNet(copy.deepcopy(nets), execution).eval()
    x = torch.randn(2, 5, 1, 8, 8)
    same = same_outputs(execution)
    for i, net in enumerate(nets):
        plain = build_net(7, torch.float32).eval()
        plain.load_state_dict(stack.member_state_dict(i))  # strict: the single net's keys and shapes
        assert same(plain(x[i]), stack(x)[i]) and same(net.eval()(x[i]), stack(x)[i])
        assert torch.equal(stack.member(i)(x[i]), plain(x[i]))  # both single nets: the same kernels
    stack.load_member_state_dict(0, nets[1].state_dict())  # member 0 becomes member 1's twin; member 1 unchanged
    assert same(stack(x)[0], nets[1](x[0])) and same(stack(x)[1], nets[1](x[1]))
    with pytest.raises(KeyError, match="missing"):
        stack.load_member_state_dict(1, {})
    with pytest.raises(IndexError, match="i=2: allowed is a member index 0 <= i < 2"):
        stack.member_state_dict(2)


def whitening_net(seed: int) -> nn.Module:
    """fastnet with airbench's patch-whitening stem (set from training images) and frozen BatchNorm scales."""
    pl.seed_everything(seed, workers=True, verbose=False)
    return fastnet(num_classes=10, in_channels=1, widths=(8, 8, 8), stem="whiten", bn_scale=False)


def test_layers_set_from_data_see_their_own_members_images_and_shifts_get_their_own_group():
    members = [Member(seed=s, noise_rate=0.4, noise_seed=s, policy=lambda: None) for s in (0, 1)]
    datamodules = [member.datamodule() for member in members]  # other noise seeds: other training splits
    for datamodule in datamodules:
        datamodule.setup("fit")
    stack = StackedClassifier(StackedNet([whitening_net(m.seed) for m in members]), [None, None],
                              partial(torch.optim.SGD, lr=0.1), norm_bias_lr_scale=64.0)
    stack.init_members_from_data(datamodules)
    for i, (member, datamodule) in enumerate(zip(members, datamodules)):
        single = LabelSmoothingClassifier(whitening_net(member.seed))
        single.init_from_data(datamodule)
        state = stack.net.member_state_dict(i)
        assert all(torch.equal(state[k], v) for k, v in single.net.state_dict().items())
    assert not torch.equal(*(stack.net.member_state_dict(i)["0.weight"] for i in (0, 1)))
    # the optimizer's groups are a single job's, over the stacked tensors: BatchNorm shifts at 64x, frozen scales out
    groups = parameter_groups(stack, stack.optimizer_factory, 64.0)
    single_groups = parameter_groups(single, stack.optimizer_factory, 64.0)
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in single_groups]
    assert [g.get("lr") for g in groups] == [None, 6.4]
    assert all(p.shape[0] == 2 and p.requires_grad for g in groups for p in g["params"])
    logits = stack(torch.randn(2, 3, 1, 16, 16))  # the 2x2 whitening and three pools need more than 8x8
    logits.sum().backward()
    assert logits.shape == (2, 3, 10) and stack.net.stacked[0].weight.grad is None  # the whitening stays frozen


def test_gradient_norm_clipping_is_per_member():
    """Trainer(gradient_clip_val=..., "norm") clips each member by its own gradient's norm, as its single job would."""
    stack = StackedNet([build_net(seed, torch.float32) for seed in (0, 1, 2)])
    scales = torch.tensor([1e-3, 1.0, 10.0])  # member 0 within the limit, the others above it
    torch.manual_seed(0)
    for p in stack.parameters():
        p.grad = torch.randn_like(p) * scales.view(-1, *[1] * (p.ndim - 1))
    expected = []
    for i in range(3):
        alone = [nn.Parameter(torch.zeros_like(p[i])) for p in stack.parameters()]
        for q, p in zip(alone, stack.parameters()):
            q.grad = p.grad[i].clone()
        torch.nn.utils.clip_grad_norm_(alone, max_norm=1.0)
        expected.append([q.grad for q in alone])
    module = StackedClassifier(stack, [None, None, None])
    module.configure_gradient_clipping(torch.optim.SGD(stack.parameters(), lr=0.1), 1.0, "norm")
    for i in range(3):
        for p, grad in zip(stack.parameters(), expected[i]):
            torch.testing.assert_close(p.grad[i], grad)
    norms = clip_grad_norm_per_member(list(stack.parameters()), 1.0)
    assert norms[0].item() < 1.0 and norms[1:].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_bad_stacks_are_refused():
    net = build_net(0, torch.float32)
    with pytest.raises(ValueError, match=r"members=\[\]: allowed is a list of one or more nets"):
        StackedNet([])
    with pytest.raises(ValueError, match="the same net object appears twice"):
        StackedNet([net, net])
    with pytest.raises(ValueError, match=r"members\[1\] differs from members\[0\]"):
        StackedNet([net, small_cnn(10, 1, width=WIDTH + 1)])
    with pytest.raises(ValueError, match="execution='grouped': allowed are auto, vmap, loop"):
        StackedNet([net, build_net(1, torch.float32)], execution="grouped")
    with pytest.raises(ValueError, match="momentum=None"):
        StackedNet([nn.BatchNorm2d(3, momentum=None), nn.BatchNorm2d(3, momentum=None)])
    stack = StackedNet([net, build_net(1, torch.float32)])
    with pytest.raises(ValueError, match=r"x has shape \(3, 4, 1, 8, 8\): allowed is \[2, batch, \.\.\.\]"):
        stack(torch.zeros(3, 4, 1, 8, 8))
    with pytest.raises(TypeError, match="net=Sequential: allowed is a StackedNet"):
        StackedClassifier(net, [None])
    with pytest.raises(ValueError, match=r"smoothing has 1 policies: allowed is one per member \(2\)"):
        StackedClassifier(stack, [None])
    policy = FixedSmoothing(0.1)
    with pytest.raises(ValueError, match="the same policy object appears twice"):
        StackedClassifier(stack, [policy, policy])
    with pytest.raises(ValueError, match="names=\\['a', 'a'\\]: allowed are 2 distinct"):
        StackedClassifier(stack, [None, None], names=["a", "a"])
    with pytest.raises(ValueError, match="eval_tta='vflip'"):
        StackedClassifier(stack, [None, None], eval_tta="vflip")
    small, large = DigitsDataModule(batch_size=64), DigitsDataModule(batch_size=32)
    for datamodule in (small, large):
        datamodule.setup("fit")
    with pytest.raises(ValueError, match=r"the members' train loaders have \[20, 40\] batches"):
        StackedDataModule([small, large]).train_dataloader()
    with pytest.raises(ValueError, match="the same data module appears twice"):
        StackedDataModule([small, small])
