"""Train M jobs of a sweep as one stacked model: one pass over the members' batches instead of M small runs.

A noise sweep trains the same network on the same images many times; only the seeds, the noise and the smoothing
policy change between jobs. Small networks leave an accelerator mostly idle, so the jobs ("members") are stacked:
every parameter and buffer of the M member nets gets a leading member dimension, and one training step runs them
all: a vectorised forward on an accelerator (``torch.func.vmap`` over ``torch.func.functional_call``), the members
in turn on a CPU (see :class:`StackedNet`). Nothing else is shared: each member keeps
its own weight init, data order, augmentation, noisy labels, smoothing policy (and its memory), BatchNorm statistics
and metrics, and its gradient is the one its single job would get (the stack's loss is the sum of the members' own
batch losses, and SGD's or AdamW's update is elementwise).

- :class:`StackedNet`: the member nets stacked; per-member state dicts in the single net's format.
- :class:`StackedDataModule` (adaptive_ls.stacked_data): the members' data modules side by side; a batch is a
  list of one batch per member, each drawn, augmented and normalised by its own data module as in its single run.
- :class:`StackedClassifier`: per member, what :class:`~adaptive_ls.module.LabelSmoothingClassifier` does, with
  metrics logged under ``<member name>/`` (``member0/val/acc``).
"""
from __future__ import annotations

import copy
from functools import partial
from typing import Callable, Optional, Sequence, TypedDict

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from adaptive_ls.errors import SettingError
from adaptive_ls.metrics import ReliabilityBins
from adaptive_ls.stacked_data import StackedDataModule, member_images  # noqa: F401 (StackedDataModule: this API)
from adaptive_ls.module import (
    TrainingStepOutput,
    attached_trainer,
    best_accuracy,
    check_options,
    check_scheduler_interval,
    configure_optimization,
    epoch_training_metrics,
    init_from_data,
    log_epoch_metrics,
    smoothed_training_step,
    split_metrics,
    trainer_progress,
    training_metrics,
    tta_logits,
)
from adaptive_ls.smoothing import NoSmoothing, Progress, SmoothingPolicy


# ---------------------------------------------------------------------------------------------------------------------
# The stacked network
# ---------------------------------------------------------------------------------------------------------------------

EXECUTIONS = ("auto", "vmap", "loop")  # how a StackedNet runs its members (see StackedNet)
PROGRESS_MEMBERS = 3  # the progress bar shows the validation accuracy of this many members


def _architecture(net: nn.Module) -> list[tuple]:
    """What two nets must share to be stacked: their layers' names and types, and every parameter's and buffer's
    name, shape, dtype and trainability."""
    layers = [("layer", name, type(module).__name__) for name, module in net.named_modules()]
    params = [("parameter", name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in net.named_parameters()]
    buffers = [("buffer", name, tuple(b.shape), b.dtype) for name, b in net.named_buffers()]
    return layers + params + buffers


def check_members(members: Sequence[nn.Module]) -> list[nn.Module]:
    """The member nets as a list: at least one, distinct objects of one type and one architecture."""
    members = list(members)
    if not members:
        raise ValueError("members=[]: allowed is a list of one or more nets of the same architecture")
    for i, net in enumerate(members):
        if not isinstance(net, nn.Module):
            raise TypeError(f"members[{i}]={type(net).__name__}: allowed are torch.nn.Module instances")
    if len({id(net) for net in members}) != len(members):
        raise ValueError("members: the same net object appears twice; allowed are distinct nets (build one per job)")
    reference = _architecture(members[0])
    for i, net in enumerate(members[1:], start=1):
        if _architecture(net) != reference:
            differing = next((a for a, b in zip(_architecture(net), reference) if a != b), "a different length")
            raise ValueError(f"members[{i}] differs from members[0] at {differing}: allowed are nets of one "
                             f"architecture (same layers, parameters, buffers, shapes and dtypes)")
    for name, module in members[0].named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats \
                and module.momentum is None:
            raise ValueError(f"members: {name or 'the net'} is a BatchNorm with momentum=None (a cumulative average "
                             f"read on the host every step): allowed in a stack is a numeric momentum")
    if len(list(members[0].named_parameters(remove_duplicate=False))) != len(list(members[0].named_parameters())):
        raise ValueError("members: the nets tie parameters (one parameter at two places), which a stack does not "
                         "keep: allowed are nets without tied parameters")
    if any(key.endswith("_extra_state") for key in members[0].state_dict()):
        raise ValueError("members: the nets keep extra state (get_extra_state), which cannot be stacked: allowed "
                         "are nets whose state is tensors (parameters and buffers)")
    return members


def _assign(module: nn.Module, key: str, tensor: Tensor, parameter: bool) -> None:
    """Put ``tensor`` at ``key`` (``"0.1.weight"``) of ``module``, as a parameter or a buffer, replacing the old one."""
    *path, name = key.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if parameter:
        owner._parameters[name] = tensor
    else:
        owner._buffers[name] = tensor


class StackedNet(nn.Module):
    """M nets of one architecture as one module: each parameter and buffer stacked along a new dimension 0.

    ``forward(x)`` takes ``x`` of shape ``[M, B, ...]`` (member ``i``'s batch at ``x[i]``) and returns ``[M, B, K]``,
    member ``i``'s logits computed with member ``i``'s weights alone, in the train or eval mode of this module.
    BatchNorm works per member as in M separate nets: in training mode each member normalises with its own batch's
    statistics and updates its own running statistics (the in-place updates land in the stacked buffers), in eval
    mode each uses its own running statistics.

    The stacked tensors live in ``stacked``, a copy of the members' architecture whose parameters and buffers have the
    leading member dimension: a Lightning optimizer and checkpoint see them as plain parameters and buffers, and
    :func:`~adaptive_ls.module.parameter_groups` finds the BatchNorm shifts by their layers as in a single net.
    ``stacked`` holds state only and is run through :meth:`forward`. :meth:`member_state_dict` and
    :meth:`load_member_state_dict` speak the single net's format, so each member's checkpoint is a single job's.

    ``execution`` says how the members run:

    - ``"vmap"``: one vectorised call for all members (convolutions become one grouped convolution). What an
      accelerator wants: one kernel launch per layer instead of M. The forward pass is the members' own to float
      rounding (bitwise where the grouped convolution picks the single one's kernel, as on AVX-512 CPUs; not on AVX2);
      vmap's backward sums some gradients (a linear layer's weight) in another order, so members match their single
      runs to float rounding, which training then amplifies (measured on a small CNN: float32 weights ~5e-7 apart
      after 10 steps, up to ~5e-3 after 40; float64 ~5e-16 after 6).
    - ``"loop"``: each member's slice of the stacked tensors through the single net's own computation, one member
      after the other, in one training step. A CPU's compute is the same either way, and vmap's regrouping copies
      cost more than they save there (a stack of 8 small CNNs on 2 cores: 74 ms a step with vmap, 51 ms looped,
      8 x 6.4 ms alone); looping keeps what stacking saves (one process, one data load, one Lightning step and
      optimizer step for all members) and gives each member exactly its single job's numbers.
    - ``"auto"`` (default): ``loop`` on a CPU, ``vmap`` on an accelerator.

    A stack of one always runs the single net's computation, so it is its single job exactly.

    Random layers (dropout) draw different masks per member (``vmap(randomness="different")``, or in turn when
    looped), not the masks of the member's single run. A BatchNorm's running statistics need a numeric momentum (not
    None); tied parameters and extra (non-tensor) state are refused.
    """

    def __init__(self, members: Sequence[nn.Module], execution: str = "auto"):
        super().__init__()
        if execution not in EXECUTIONS:
            raise ValueError(f"execution={execution!r}: allowed are {', '.join(EXECUTIONS)}")
        members = check_members(members)
        self.execution = execution
        params, buffers = stack_module_state(members)  # detached copies, requires_grad as the members'
        stacked = copy.deepcopy(members[0]).to("meta")  # the architecture; its tensors are replaced below
        for key, value in params.items():
            _assign(stacked, key, nn.Parameter(value, requires_grad=value.requires_grad), parameter=True)
        for key, value in buffers.items():
            _assign(stacked, key, value, parameter=False)
        self.stacked = stacked
        self.num_members = len(members)
        self.memory_format = torch.contiguous_format  # of a stack of one's images and conv weights
        # A meta copy of one member: the template :meth:`member` fills in. Not a submodule (no tensors of its own).
        self.__dict__["_template"] = copy.deepcopy(members[0]).to("meta")

    def _member_forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.stacked, (params, buffers), (x,))

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """Member ``i``'s batch at ``x[i]``: a tensor ``[M, B, ...]`` or M tensors ``[B, ...]``."""
        if isinstance(x, Tensor) and (x.ndim < 2 or x.shape[0] != self.num_members):
            raise ValueError(f"x has shape {tuple(x.shape)}: allowed is [{self.num_members}, batch, ...], one batch "
                             f"per member along dimension 0")
        if not isinstance(x, Tensor) and len(x) != self.num_members:
            raise ValueError(f"x holds {len(x)} batches: allowed is one per member ({self.num_members})")
        params, buffers = dict(self.stacked.named_parameters()), dict(self.stacked.named_buffers())
        if self.num_members == 1 or self.resolved_execution(x[0].device) == "loop":
            # unbind: one backward node that stacks the members' gradients (slicing would add M zero-padded copies)
            slices = {key: value.unbind(0) for key, value in params.items()}
            return torch.stack([self._single_forward({key: value[i] for key, value in slices.items()},
                                                     {key: value[i] for key, value in buffers.items()}, x[i])
                                for i in range(self.num_members)])
        x = x if isinstance(x, Tensor) else torch.stack(list(x))
        return vmap(self._member_forward, randomness="different")(params, buffers, x.contiguous())

    def resolved_execution(self, device: torch.device) -> str:
        """``loop`` or ``vmap``: what ``execution`` means on ``device``."""
        if self.execution != "auto":
            return self.execution
        return "loop" if device.type == "cpu" else "vmap"

    def _single_forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """One member alone (its slices of the stacked tensors), its images and conv weights in ``memory_format`` as
        a single run's (LabelSmoothingClassifier's ``channels_last``); the buffers' in-place updates (BatchNorm's
        running statistics) land in the stack's."""
        def member_tensor(value: Tensor) -> Tensor:  # as nn.Module.to(memory_format=...) sets a single net's
            return value.to(memory_format=self.memory_format) if value.ndim == 4 else value

        if x.ndim == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return self._member_forward({key: member_tensor(value) for key, value in params.items()}, buffers, x)

    def _check_member(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_members:
            raise IndexError(f"i={i!r}: allowed is a member index 0 <= i < {self.num_members}")
        return i

    def member_state_dict(self, i: int) -> dict[str, Tensor]:
        """Member ``i``'s state dict in the single net's format (its keys, its shapes): loadable into a plain net.
        The tensors are copies, so saving them does not save the whole stack."""
        i = self._check_member(i)
        return {key: value[i].detach().clone() for key, value in self.stacked.state_dict().items()}

    @torch.no_grad()
    def load_member_state_dict(self, i: int, state_dict: dict[str, Tensor]) -> None:
        """Set member ``i`` from a single net's state dict (every key of it, none other)."""
        i = self._check_member(i)
        own = self.stacked.state_dict(keep_vars=True)
        missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise KeyError(f"state_dict does not fit the members' architecture: missing {missing}, unexpected "
                           f"{unexpected}")
        for key, value in state_dict.items():
            if tuple(value.shape) != tuple(own[key].shape[1:]):
                raise ValueError(f"state_dict[{key!r}] has shape {tuple(value.shape)}: allowed is "
                                 f"{tuple(own[key].shape[1:])}, the member's")
            own[key][i].copy_(value)

    def member(self, i: int) -> nn.Module:
        """Member ``i`` as a plain net of its own (copies of its tensors, this module's train/eval mode): e.g. for
        layers that set themselves from data; write it back with :meth:`set_member`."""
        i = self._check_member(i)
        net = copy.deepcopy(self._template)
        for key, value in self.stacked.named_parameters():
            _assign(net, key, nn.Parameter(value[i].detach().clone(), requires_grad=value.requires_grad), True)
        for key, value in self.stacked.named_buffers():
            _assign(net, key, value[i].clone(), parameter=False)
        return net.train(self.training)

    @torch.no_grad()
    def set_member(self, i: int, net: nn.Module) -> None:
        """Copy every parameter and buffer of ``net`` (a member's architecture) into member ``i``."""
        i = self._check_member(i)
        own = {**dict(self.stacked.named_parameters()), **dict(self.stacked.named_buffers())}
        theirs = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        if set(own) != set(theirs):
            raise KeyError(f"net does not fit the members' architecture: missing {sorted(set(own) - set(theirs))}, "
                           f"unexpected {sorted(set(theirs) - set(own))}")
        for key, value in theirs.items():
            own[key][i].copy_(value)


# ---------------------------------------------------------------------------------------------------------------------
# The LightningModule
# ---------------------------------------------------------------------------------------------------------------------


class StackedStepOutput(TypedDict):
    """What a stack's training step hands Lightning and the callbacks."""

    loss: Tensor  # the sum of the members' (finite) losses, which Lightning backpropagates: each gets its own gradient
    members: list[TrainingStepOutput]  # per member, what its single job's training step returns (loss detached)


class MemberMetrics(nn.Module):
    """One member's metrics: those of a :class:`~adaptive_ls.module.LabelSmoothingClassifier`."""

    def __init__(self, num_classes: int, ece_bins: int):
        super().__init__()
        self.train_metrics = nn.ModuleDict(training_metrics(num_classes))
        self.val_metrics = split_metrics(num_classes, ece_bins, "val/")
        self.test_metrics = split_metrics(num_classes, ece_bins, "test/")
        self.test_bins = ReliabilityBins(ece_bins, sync_on_compute=False)
        self.val_acc_best = best_accuracy()


def check_names(names: Optional[Sequence[str]], num_members: int) -> list[str]:
    """The members' log prefixes: ``member0`` ... by default, else distinct non-empty strings without ``/``."""
    if names is None:
        return [f"member{i}" for i in range(num_members)]
    names = list(names)
    if len(names) != num_members or len(set(names)) != len(names) \
            or not all(isinstance(n, str) and n and "/" not in n for n in names):
        raise SettingError(f"names={names!r}: allowed are {num_members} distinct non-empty strings without '/' "
                           f"(one log prefix per member), or None")
    return names


def check_policies(smoothing: Sequence[Optional[SmoothingPolicy]], num_members: int) -> list[SmoothingPolicy]:
    """One policy object per member (None: plain cross-entropy); never one object twice, which would share state."""
    policies = [NoSmoothing() if policy is None else policy for policy in smoothing]
    if len(policies) != num_members:
        raise SettingError(f"smoothing has {len(policies)} policies: allowed is one per member ({num_members})")
    for i, policy in enumerate(policies):
        if not isinstance(policy, SmoothingPolicy):
            raise TypeError(f"smoothing[{i}]={type(policy).__name__}: allowed are SmoothingPolicy instances or None")
    if len({id(p) for p in policies}) != len(policies):
        raise SettingError("smoothing: the same policy object appears twice; allowed are distinct policies (one "
                           "per member: a policy keeps per-run state)")
    return policies


@torch.no_grad()
def clip_grad_norm_per_member(parameters: Sequence[Tensor], max_norm: float) -> Tensor:
    """Clip each member's gradient to total 2-norm ``max_norm``, as ``torch.nn.utils.clip_grad_norm_`` clips a single
    net's: the norm over one member's slices ``[i]`` of all stacked parameters. Returns the members' norms [M]."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in grads]).norm(2, dim=0)  # [M]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.ndim - 1))).to(g.dtype))
    return norms


class StackedClassifier(pl.LightningModule):
    """M label-smoothing jobs trained as one: per member, what
    :class:`~adaptive_ls.module.LabelSmoothingClassifier` does in its single run.

    Args:
        net: a :class:`StackedNet` of the members' nets, each built as its single job builds it
            (``pl.seed_everything(seed)``, then the net).
        smoothing: one policy per member (None: plain cross-entropy); distinct objects.
        optimizer, scheduler, num_classes, scheduler_interval, ece_bins, norm_bias_lr_scale, eval_tta: as
            LabelSmoothingClassifier's, shared by all members. The optimizer's state is per member anyway (it is
            elementwise over the stacked parameters).
        channels_last: as LabelSmoothingClassifier's, for a stack of one and looped members (which then are their
            single jobs exactly); vmap runs its grouped convolution on contiguous images whatever this says.
        names: the members' log prefixes (default ``member0``, ``member1``, ...).

    Fit it with a :class:`StackedDataModule` of the members' data modules. The training step runs the members'
    batches through the stacked net (:class:`StackedNet`'s ``execution``), then each member's policy on its own
    logits, labels, indices and progress, and backpropagates the sum of the members' finite batch losses (member
    ``i``'s gradient is its single job's; a member marked ``failed`` is left out).
    Gradient clipping by norm (``Trainer(gradient_clip_val=...)``) clips each member by its own norm.

    Logged per member under ``<name>/``: ``train/loss``, ``train/acc``, ``smoothing/eps_*``, ``val/*``,
    ``val/acc_best``, ``test/*``, the names a single run logs. :func:`member_metrics` picks one member's out of a
    Lightning result; :meth:`member_state_dict` is member ``i``'s LabelSmoothingClassifier state dict.

    Not supported yet: DDP and ``compile``.
    """

    def __init__(
        self,
        net: StackedNet,
        smoothing: Sequence[Optional[SmoothingPolicy]],
        optimizer: Optional[Callable] = None,
        scheduler: Optional[Callable] = None,
        num_classes: int = 10,
        scheduler_interval: str = "step",
        ece_bins: int = 15,
        norm_bias_lr_scale: float = 1.0,
        eval_tta: str = "none",
        channels_last: bool = True,
        names: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        if not isinstance(net, StackedNet):
            raise TypeError(f"net={type(net).__name__}: allowed is a StackedNet (adaptive_ls.stacking) of the "
                            f"members' nets")
        check_scheduler_interval(scheduler_interval)
        check_options(channels_last, False, norm_bias_lr_scale, eval_tta)
        self.save_hyperparameters(ignore=["net", "smoothing", "optimizer", "scheduler"])
        self.net = net
        self.smoothing = nn.ModuleList(check_policies(smoothing, net.num_members))
        self.names = check_names(names, net.num_members)
        self.optimizer_factory = optimizer or partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                                      nesterov=True)
        self.scheduler_factory = scheduler
        self.num_classes, self.scheduler_interval, self.ece_bins = num_classes, scheduler_interval, ece_bins
        self.norm_bias_lr_scale, self.eval_tta = float(norm_bias_lr_scale), eval_tta
        self.channels_last = channels_last
        self.net.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.members = nn.ModuleList(MemberMetrics(num_classes, ece_bins) for _ in range(net.num_members))
        # members dropped from the loss, in the checkpoint: a member that failed (a NaN/inf loss), one that was stopped
        # (early stopping: adaptive_ls.stacked_run's per-member callbacks)
        self.register_buffer("failed", torch.zeros(net.num_members, dtype=torch.bool))
        self.register_buffer("stopped", torch.zeros(net.num_members, dtype=torch.bool))
        self._total_steps = 1
        self._train_metrics_logged = False
        self.test_reliability: Optional[list[dict]] = None  # per member, of the last test run

    @property
    def num_members(self) -> int:
        return self.net.num_members

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """Logits ``[M, B, K]`` of images ``[M, B, ...]`` (or M tensors ``[B, ...]``, member i's at ``x[i]``)."""
        return self.net(x)

    # -- training -----------------------------------------------------------------------------------------------------

    def _member_datamodules(self) -> list:
        datamodule = getattr(self.trainer, "datamodule", None)
        datamodule = getattr(datamodule, "datamodule", datamodule)  # calibration's view of the stack's
        members = getattr(datamodule, "members", None)
        if members is None or len(members) != self.num_members:
            raise ValueError(f"StackedClassifier of {self.num_members} members: fit it with "
                             f"datamodule=StackedDataModule([...]) of {self.num_members} data modules, one per member")
        return members

    def setup(self, stage: str) -> None:
        if self.trainer.world_size > 1:
            raise SettingError(f"trainer.devices={self.trainer.world_size}: a stack trains on one device; allowed "
                               f"is 1 (stack fewer members per device instead)")
        datamodules = self._member_datamodules()
        for policy, datamodule in zip(self.smoothing, datamodules):
            if hasattr(datamodule, "num_train_total"):
                policy.setup(datamodule.num_train_total, self.num_classes)
        if stage == "fit":
            self.init_members_from_data(datamodules)

    def init_members_from_data(self, datamodules: Sequence) -> None:
        """Each member's layers that set themselves from data see that member's own training images."""
        if not any(callable(getattr(m, "init_from_data", None)) for m in self.net.stacked.modules()):
            return
        for i, datamodule in enumerate(datamodules):
            net = self.net.member(i)
            init_from_data(net, datamodule)
            self.net.set_member(i, net)

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)

    def progress(self) -> Progress:
        """Training progress, the same for every member: they take their steps together."""
        return trainer_progress(attached_trainer(self), self._total_steps)

    def training_step(self, batch, batch_idx: int) -> StackedStepOutput:
        logits = self(member_images(batch))
        progress = self.progress()
        outputs = [smoothed_training_step(policy, metrics.train_metrics, logits[i], targets, index, progress)
                   for i, (policy, metrics, (_, targets, index)) in enumerate(zip(self.smoothing, self.members,
                                                                                    batch))]
        if not self._train_metrics_logged:  # the first step of this epoch (also when a run resumed mid-epoch)
            self._log_train_metrics()
        losses = torch.stack([output["loss"] for output in outputs])
        active = torch.isfinite(losses) & ~self.failed & ~self.stopped
        loss = torch.where(active, losses, 0.0).sum()  # a NaN, failed or stopped member's left out
        return StackedStepOutput(loss=loss, members=[{**output, "loss": output["loss"].detach()} for output in outputs])

    def _log_train_metrics(self) -> None:
        for name, policy, metrics in zip(self.names, self.smoothing, self.members):
            log_epoch_metrics(self, epoch_training_metrics(metrics.train_metrics, policy.per_sample), f"{name}/")
        self._train_metrics_logged = True

    def on_train_epoch_start(self) -> None:
        self._train_metrics_logged = False

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clipping by value is elementwise, so per member already; clipping by norm uses each member's own norm."""
        if not gradient_clip_val or str(gradient_clip_algorithm or "norm").lower() != "norm":
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        clip_grad_norm_per_member([p for group in optimizer.param_groups for p in group["params"]],
                                  float(gradient_clip_val))

    def configure_optimizers(self):
        return configure_optimization(self, self.optimizer_factory, self.scheduler_factory, self.scheduler_interval,
                                      self.norm_bias_lr_scale)

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def eval_logits(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """Logits ``[M, B, K]`` of the members' images for evaluation (``eval_tta`` as a single run's)."""
        return tta_logits(self, images, self.eval_tta)

    def _evaluate(self, batch, batch_idx: int, split: str) -> Tensor:
        logits = self.eval_logits(member_images(batch))
        for i, (metrics, (_, targets, _)) in enumerate(zip(self.members, batch)):
            getattr(metrics, f"{split}_metrics").update(logits[i], targets)
        if batch_idx == 0:  # handed to Lightning once; it computes them at the epoch's end and resets them
            for i, (name, metrics) in enumerate(zip(self.names, self.members)):  # the bar shows the first three
                log_epoch_metrics(self, getattr(metrics, f"{split}_metrics"), f"{name}/",
                                  prog_bar=("val/acc",) if i < PROGRESS_MEMBERS else ())
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        for name, policy, metrics in zip(self.names, self.smoothing, self.members):
            accuracy = metrics.val_metrics["acc"].compute()
            metrics.val_acc_best.update(accuracy)
            self.log(f"{name}/val/acc_best", metrics.val_acc_best.compute())
            policy.on_validation_end(accuracy)

    def test_step(self, batch, batch_idx: int) -> None:
        logits = self._evaluate(batch, batch_idx, "test")
        for i, (metrics, (_, targets, _)) in enumerate(zip(self.members, batch)):
            metrics.test_bins.update(logits[i], targets)

    def on_test_epoch_end(self) -> None:
        if all(metrics.test_bins.update_count for metrics in self.members):
            self.test_reliability = [metrics.test_bins.compute() for metrics in self.members]
        for metrics in self.members:
            metrics.test_bins.reset()

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> tuple[Tensor, Tensor]:
        """(float32 logits [M, B, K], targets [M, B]) of a batch as evaluation sees it."""
        return self.eval_logits(member_images(batch)).float(), torch.stack([targets for _, targets, _ in batch])

    # -- one member as a single job -----------------------------------------------------------------------------------

    def member_state_dict(self, i: int) -> dict:
        """Member ``i``'s state as its single run's LabelSmoothingClassifier holds it (net, policy, best validation
        accuracy): ``LabelSmoothingClassifier(net, policy).load_state_dict(...)`` takes it as it is."""
        state = {f"net.{key}": value for key, value in self.net.member_state_dict(i).items()}
        state.update({f"smoothing.{key}": (value.clone() if isinstance(value, Tensor) else copy.deepcopy(value))
                      for key, value in self.smoothing[i].state_dict().items()})
        state.update({f"val_acc_best.{key}": value.clone()
                      for key, value in self.members[i].val_acc_best.state_dict().items()})
        return state


    @torch.no_grad()
    def load_member_state_dict(self, i: int, state: dict) -> None:
        """Set member ``i`` from its single job's state dict (:meth:`member_state_dict`'s format, e.g. a member's
        checkpoint's ``state_dict``)."""
        self.net.load_member_state_dict(i, {k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.smoothing[i].load_state_dict({k[10:]: v for k, v in state.items() if k.startswith("smoothing.")})
        self.members[i].val_acc_best.load_state_dict(
            {k[13:]: v for k, v in state.items() if k.startswith("val_acc_best.")})


def member_metrics(metrics: dict, name: str) -> dict:
    """One member's metrics out of a stack's (``trainer.callback_metrics``, a ``trainer.test`` result): the keys
    under ``<name>/``, named as its single run names them."""
    prefix = f"{name}/"
    return {key[len(prefix):]: value for key, value in metrics.items() if key.startswith(prefix)}
