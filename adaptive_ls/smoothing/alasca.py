"""ALASCA's adaptive label smoothing (Ko et al., AAAI 2023): less label weight where the model long disbelieves it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from adaptive_ls.smoothing.policy import SmoothingPolicy, SmoothingSettingError, SmoothingTarget


class ALASCASmoothing(SmoothingPolicy):
    """Adaptive label smoothing of ALASCA (Ko et al., AAAI 2023, "A Gift from Label Smoothing: Robust Training with
    Adaptive Label Smoothing via Auxiliary Classifier under Label Noise").

    A sample whose label the model has long disbelieved is likely mislabelled, so its label gets less weight::

        m_i ← w·m_i + (1 − w)·z_i           z_i: the sample's logits this step; m_i starts at 0
        α_i = softmax(m_i / T)[y_i]          T < 1 sharpens
        ε_i = r·(1 − α_i),  r = min(1, epoch / warmup_epochs),  q_i = uniform over the K − 1 classes other than y_i

    so target_i puts 1 − ε_i = r·α_i + (1 − r) on y_i and ε_i/(K − 1) on every other class: the target of the
    authors' ``losses/ALASCA.py`` (their ``NLLLoss`` with the ramped ``alpha``). Defaults are theirs for CIFAR:
    ``ema=0.7`` (``--w2``), ``temperature=0.333`` (``--w3``), 30 ramp epochs (of 120; hard-coded ``warmup_epoch``).

    Where this differs from the authors' code:

    - No auxiliary classifiers. ALASCA trains heads on intermediate features with this target (weight ``--w1`` = 2)
      and the main head with the base loss; those heads are an architectural regulariser, not label smoothing, so
      here the target trains the model's one classifier, whose logits also feed the EMA (as the main head's do).
    - The EMA ``m`` [N, K] is a buffer: checkpointed and restored on resume (the authors' restarts from zero), and
      under DDP every process writes all processes' updates (:meth:`SmoothingPolicy._gather`).
    """

    name = "alasca"
    per_sample = True

    def __init__(self, ema: float = 0.7, temperature: float = 0.333, warmup_epochs: int = 30):
        super().__init__()
        if not 0.0 <= float(ema) < 1.0:
            raise SmoothingSettingError(f"ema={ema}: allowed is 0 <= ema < 1 (the weight of the old logits; "
                                        f"the authors use 0.7)")
        if not float(temperature) > 0.0:
            raise SmoothingSettingError(f"temperature={temperature}: allowed is temperature > 0 (< 1 sharpens; "
                                        f"the authors use 0.333)")
        if isinstance(warmup_epochs, bool) or int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise SmoothingSettingError(f"warmup_epochs={warmup_epochs}: allowed is an integer >= 0 "
                                        f"(epochs over which ε ramps up from 0)")
        self.ema, self.temperature, self.warmup_epochs = float(ema), float(temperature), int(warmup_epochs)
        self.register_buffer("logit_ema", torch.empty(0, 0))  # m, [N, K]; sized in setup()

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.logit_ema.shape != (num_samples, num_classes):
            self.logit_ema = torch.zeros(num_samples, num_classes, device=self.logit_ema.device)

    def ramp(self, epoch: int) -> float:
        """r = min(1, epoch / warmup_epochs): 0 in the first epoch (plain CE), 1 from ``warmup_epochs`` on."""
        return 1.0 if self.warmup_epochs == 0 else min(1.0, epoch / self.warmup_epochs)

    def _update(self, index: Tensor, logits: Tensor) -> Tensor:
        """m_i ← w·m_i + (1 − w)·z_i for the batch (every process's samples under DDP); the batch's new rows."""
        new = self.ema * self.logit_ema[index] + (1.0 - self.ema) * logits
        all_index, all_new = self._gather(index, new)
        self.logit_ema[all_index] = all_new
        return new

    def forward(self, logits, targets, index, progress):
        if self.logit_ema.numel() == 0:
            raise RuntimeError("ALASCASmoothing needs setup(num_samples, num_classes) before training")
        targets = targets.long()
        m = self._update(index, logits.float())
        alpha = (m / self.temperature).softmax(dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
        others = 1.0 - F.one_hot(targets, m.shape[1]).to(m.dtype)
        return SmoothingTarget(self.ramp(progress.epoch) * (1.0 - alpha), others / (m.shape[1] - 1),
                               signal=1.0 - alpha)
