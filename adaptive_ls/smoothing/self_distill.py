"""Progressive self-knowledge distillation (PS-KD; Kim et al., ICCV 2021): last epoch's prediction is the teacher."""
from __future__ import annotations

import torch
from torch import Tensor

from adaptive_ls.smoothing.policy import Progress, SmoothingPolicy, SmoothingSettingError, SmoothingTarget


class SelfDistillation(SmoothingPolicy):
    """Progressive self-knowledge distillation (PS-KD; Kim et al., ICCV 2021).

    target_i = (1 − α_t)·onehot(y_i) + α_t·p_{t−1}(x_i): the model's own prediction for sample i from the previous
    epoch is the teacher, trusted more as training goes on: α_t = α_T·(t + 1)/T for epoch t of T (0-based), reaching
    ``alpha_T`` (paper: 0.8) in the last epoch. A sample with no stored prediction yet (the first epoch) gets ε = 0,
    i.e. one-hot, as in the authors' code.

    ``predictions`` [N, K] and ``seen`` [N] are buffers keyed by the sample index. One buffer is enough: each sample
    is read (last epoch's prediction) before it is overwritten (this epoch's), once per epoch, as in the authors' code;
    a second "current" buffer would double the memory (N·K floats: 5 GB for ImageNet) for the same targets.
    Predictions come from the training forward pass (augmented inputs), as in the paper.
    """

    name = "self_distill"
    per_sample = True

    def __init__(self, alpha_T: float = 0.8):
        super().__init__()
        if not 0.0 <= float(alpha_T) < 1.0:
            raise SmoothingSettingError(f"alpha_T={alpha_T}: allowed is 0 <= alpha_T < 1 (the paper uses 0.8)")
        self.alpha_T = float(alpha_T)
        self.register_buffer("predictions", torch.empty(0, 0))
        self.register_buffer("seen", torch.empty(0, dtype=torch.bool))

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.predictions.shape != (num_samples, num_classes):
            self.predictions = torch.zeros(num_samples, num_classes, device=self.predictions.device)
            self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.predictions.device)

    def alpha_at(self, progress: Progress) -> float:
        """α_t = α_T·(epoch + 1)/max_epochs; by optimizer steps when the run has no epoch limit."""
        t = (progress.epoch + 1) / progress.max_epochs if progress.max_epochs > 0 else progress.fraction
        return self.alpha_T * min(max(t, 0.0), 1.0)

    def _store(self, index: Tensor, probs: Tensor) -> None:
        """Remember this epoch's predictions (of every process's samples under DDP, so the memories stay equal)."""
        index, probs = self._gather(index, probs)
        self.predictions[index] = probs
        self.seen[index] = True

    def forward(self, logits, targets, index, progress):
        if self.predictions.numel() == 0:
            raise RuntimeError("SelfDistillation needs setup(num_samples, num_classes) before training")
        previous = self.predictions[index]  # advanced indexing copies: safe to overwrite below
        eps = self.alpha_at(progress) * self.seen[index].to(previous.dtype)
        self._store(index, logits.float().softmax(dim=-1))
        return SmoothingTarget(eps, previous)
