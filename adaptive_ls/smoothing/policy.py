"""What a smoothing policy is: the ε range, the training progress it reads, the target it returns, its base class.

Every policy fits one target, target_i = (1 − ε_i) · onehot(y_i) + ε_i · q_i (see :mod:`adaptive_ls.smoothing`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor, nn

from adaptive_ls.errors import SettingError

# Negative label smoothing (NLS; Wei et al., ICML 2022, "To Smooth or Not?") gives the non-target classes a negative
# target weight ε/K. The loss is unbounded below for any ε < 0 (it rewards driving the other classes' probabilities
# to 0), so how far to go is an empirical choice: we keep ε ≥ −1 (true class ≤ 2 − 1/K, others ≥ −1/K), where the
# paper's CIFAR gains at high noise sit. The paper's grid goes on to −8; lower this constant to explore that.
EPS_NEGATIVE_BOUND = -1.0

Eps = Union[float, Tensor]


class SmoothingSettingError(SettingError):
    """A bad policy argument; reported under the ``smoothing`` config group."""

    node = "smoothing"


def _check_eps_value(eps: float, key: str = "eps") -> float:
    eps = float(eps)
    if not (EPS_NEGATIVE_BOUND <= eps < 1.0):
        raise SmoothingSettingError(
            f"{key}={eps} is out of range: allowed is {EPS_NEGATIVE_BOUND} <= ε < 1 "
            f"(ε < 0 is negative label smoothing; ε = 1 would discard the label entirely)"
        )
    return eps


@dataclass(frozen=True)
class Progress:
    """Where training stands: what a schedule needs, in optimizer steps and epochs."""

    step: int
    total_steps: int
    epoch: int
    max_epochs: int

    @property
    def fraction(self) -> float:
        """Fraction of optimizer steps done, in [0, 1]."""
        return min(max(self.step / max(self.total_steps, 1), 0.0), 1.0)


@dataclass
class SmoothingTarget:
    """What a policy returns for a batch: ε (float or [B] tensor), q (None = uniform, or [B, K]) and optionally a
    per-sample loss weight [B] (None = the plain mean over the batch) and ``signal``.

    A weight cannot be folded into (ε, q) without giving up ε as the label's share of the target, which the
    diagnostics report; so it is a field of its own, applied by :meth:`batch_loss`.

    ``signal`` [B], where a policy has one: the raw per-sample score ε grows with (for a noise-aimed policy, larger =
    label more likely wrong), before any memory, warm-up or ramp turns it into ε. It does not enter the loss; the
    diagnostics report its AUROC next to ε's, which separates "the model can tell" from "the policy acts on it".
    """

    eps: Eps
    q: Optional[Tensor] = None
    weight: Optional[Tensor] = None
    signal: Optional[Tensor] = None

    def batch_loss(self, loss_per_sample: Tensor) -> Tensor:
        """The batch's loss: the mean, or with ``weight`` the weighted mean Σ w_i·loss_i / Σ w_i."""
        if self.weight is None:
            return loss_per_sample.mean()
        weight = self.weight.to(loss_per_sample.dtype)
        return (weight * loss_per_sample).sum() / weight.sum()


class SmoothingPolicy(nn.Module):
    """Base class. Subclasses implement ``forward``; state they keep across steps lives in buffers (checkpointed).

    ``forward(logits, targets, index, progress)`` gets *detached* logits, the (noisy) targets, the samples' indices
    into the training set and the training progress, and returns a :class:`SmoothingTarget`. Policies with memory
    override ``setup(num_samples, num_classes)`` (called before training) and roll epoch-level state forward when
    ``progress.epoch`` changes, so their state depends on the steps seen alone (and resumes exactly).
    """

    name = "base"
    per_sample = False  # True when ε differs between the samples of a batch

    needs_validation = False  # True when the policy reads the validation accuracy (on_validation_end)

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Allocate per-sample state; called once the data (and so N and K) is known."""

    def on_validation_end(self, accuracy: Tensor) -> None:
        """Called once per training epoch with the accuracy on the (noisy) validation split, a 0-dim tensor: for a
        policy that times itself by the data rather than by the schedule."""

    def forward(self, logits: Tensor, targets: Tensor, index: Tensor, progress: Progress) -> SmoothingTarget:
        raise NotImplementedError

    # Under data parallelism each process sees its own shard of every batch. A policy that keeps per-sample state
    # writes the updates of all processes, so every process keeps the same memory (and checkpoints agree):
    #     index, probs = self._gather(index, probs)          # before writing self.memory[index] = probs
    #     sums = self._all_reduce(self.sums.clone())          # sums accumulated per shard, once an epoch
    # Every process must make the same calls at the same point (the loaders give all processes the same number of
    # equally sized batches). Alone, both return their input unchanged.

    @staticmethod
    def _world_size() -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @classmethod
    def _gather(cls, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Each tensor concatenated along dim 0 over all processes (rank order)."""
        world = cls._world_size()
        if world == 1:
            return tensors
        import torch.distributed as dist

        gathered = []
        for tensor in tensors:
            parts = [torch.empty_like(tensor) for _ in range(world)]
            dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts))
        return tuple(gathered)

    @classmethod
    def _all_reduce(cls, tensor: Tensor) -> Tensor:
        """``tensor`` summed over all processes, in place."""
        if cls._world_size() > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-sample memories are sized lazily by setup(); take the checkpoint's size so a fresh policy can load it.
        for name, buf in self._buffers.items():
            key = prefix + name
            if buf is not None and key in state_dict and state_dict[key].shape != buf.shape:
                self._buffers[name] = torch.empty_like(state_dict[key], device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
