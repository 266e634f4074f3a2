"""Self-Adaptive Training (SAT; Huang et al., NeurIPS 2020): the target becomes the model's moving-average prediction."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive_ls.smoothing.policy import SmoothingPolicy, SmoothingSettingError, SmoothingTarget


class SelfAdaptiveTraining(SmoothingPolicy):
    """Self-Adaptive Training (SAT; Huang et al., NeurIPS 2020): the target is the model's own moving-average
    prediction, started at the given label, so labels the model keeps contradicting are gradually replaced.

    After ``warmup_epochs`` of plain CE, each step updates, for the samples of the batch::

        t_i ← m·t_i + (1 − m)·p_i          p_i = softmax(z_i), t_i starts at onehot(y_i)

    and trains on CE(p_i, t_i), as the authors' ``losses/loss.py`` (``SelfAdaptiveTrainingCE``) does. t_i is a
    distribution (a convex mix of onehot(y_i) and softmaxes), so it is the package's target with

        ε_i = 1 − t_i[y_i],   q_i = (t_i − t_i[y_i]·onehot(y_i)) / ε_i

    since t_i − t_i[y_i]·onehot(y_i) is ≥ 0 with sum 1 − t_i[y_i] = ε_i, so q_i is a distribution (q_i[y_i] = 0) and
    (1 − ε_i)·onehot(y_i) + ε_i·q_i = t_i[y_i]·onehot(y_i) + (t_i − t_i[y_i]·onehot(y_i)) = t_i. When ε_i = 0,
    t_i = onehot(y_i) and q_i does not matter (uniform here).

    ``sample_weighting`` (the paper's and the authors' code's, always on there): w_i = max_k t_i[k], the batch's
    loss Σ w_i·loss_i / Σ w_i, so samples whose target is still ambiguous count less (returned as
    ``SmoothingTarget.weight``; the warm-up is unweighted). Defaults are the authors' CIFAR scripts: momentum 0.9
    (``--sat-alpha``), 60 warm-up epochs of 200 (``--sat-es``).

    Where this differs from the authors' code: ``t`` [N, K] and ``seen`` [N] are buffers set lazily (a sample not
    yet seen reads as onehot(y_i), which is the authors' initial value, since a sample's given label does not
    change), so the policy needs no labels up front; they are checkpointed (the authors' restarts from the labels)
    and under DDP every process writes all processes' updates. Under DDP the weights are normalised over each
    process's batch.
    """

    name = "self_adaptive"
    per_sample = True

    def __init__(self, momentum: float = 0.9, warmup_epochs: int = 60, sample_weighting: bool = True):
        super().__init__()
        if not 0.0 <= float(momentum) < 1.0:
            raise SmoothingSettingError(f"momentum={momentum}: allowed is 0 <= momentum < 1 (the weight of the old "
                                        f"target; the authors use 0.9)")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise SmoothingSettingError(f"warmup_epochs={warmup_epochs}: allowed is an integer >= 0 "
                                        f"(epochs of plain CE before the targets adapt; the authors use 60 of 200)")
        if not isinstance(sample_weighting, bool):
            raise SmoothingSettingError(f"sample_weighting={sample_weighting!r}: allowed are true, false")
        self.momentum, self.warmup_epochs, self.sample_weighting = float(momentum), int(warmup_epochs), sample_weighting
        self.register_buffer("soft_labels", torch.empty(0, 0))  # t, [N, K]; sized in setup()
        self.register_buffer("seen", torch.empty(0, dtype=torch.bool))

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.soft_labels.shape != (num_samples, num_classes):
            self.soft_labels = torch.zeros(num_samples, num_classes, device=self.soft_labels.device)
            self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.soft_labels.device)

    def _update(self, index: Tensor, onehot: Tensor, probs: Tensor) -> Tensor:
        """t_i ← m·t_i + (1 − m)·p_i for the batch (every process's samples under DDP); the batch's new rows."""
        old = torch.where(self.seen[index].unsqueeze(1), self.soft_labels[index], onehot)
        new = self.momentum * old + (1.0 - self.momentum) * probs
        all_index, all_new = self._gather(index, new)
        self.soft_labels[all_index] = all_new
        self.seen[all_index] = True
        return new

    def forward(self, logits, targets, index, progress):
        if self.soft_labels.numel() == 0:
            raise RuntimeError("SelfAdaptiveTraining needs setup(num_samples, num_classes) before training")
        targets = targets.long()
        probs = logits.float().softmax(dim=-1)
        signal = 1.0 - probs.gather(1, targets.unsqueeze(1)).squeeze(1)  # 1 − p_i[y_i]: what t_i moves towards
        if progress.epoch < self.warmup_epochs:
            return SmoothingTarget(torch.zeros(logits.shape[0], device=logits.device), signal=signal)
        onehot = F.one_hot(targets, logits.shape[1]).float()
        t = self._update(index, onehot, probs)
        rest = t * (1.0 - onehot)  # t without the label's share: sums to ε
        mass = rest.sum(dim=1, keepdim=True)
        q = torch.where(mass > 0, rest / mass.clamp_min(1e-30), torch.full_like(rest, 1.0 / rest.shape[1]))
        eps = (1.0 - t.gather(1, targets.unsqueeze(1)).squeeze(1)).clamp(0.0, 1.0)
        weight = t.max(dim=1).values if self.sample_weighting else None
        return SmoothingTarget(eps, q, weight, signal)
