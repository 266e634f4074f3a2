"""airbench's Lookahead: every few steps the weights are pulled back to a slow moving average of themselves.

Short, high-learning-rate runs end with noisy weights; averaging them late in training is worth a fraction of a
point of accuracy at no cost in steps. airbench94's schedule: every 5 optimizer steps, slow ← decay·slow +
(1 − decay)·fast and fast ← slow, with decay = 0.95⁵·(step/total)³ (near 0 early: no effect; 0.77 at the end), and
the slow weights are the result. Lightning's own ``EMAWeightAveraging`` keeps a separate average instead and never
feeds it back into training, which is a different method.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch


class Lookahead(pl.Callback):
    """Lookahead with airbench's cubic decay schedule, on the device (no host synchronisation).

    Args:
        every_n_steps: optimizer steps between two pulls (airbench: 5).
        max_decay: the decay reached at the last step (airbench: 0.95**5).
        power: decay = max_decay · (step / total)^power (airbench: 3).
    """

    def __init__(self, every_n_steps: int = 5, max_decay: float = 0.95**5, power: float = 3.0):
        if int(every_n_steps) < 1:
            raise ValueError(f"callbacks.lookahead.every_n_steps={every_n_steps}: allowed is an integer >= 1")
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"callbacks.lookahead.max_decay={max_decay}: allowed is 0 <= max_decay < 1")
        if not power > 0:
            raise ValueError(f"callbacks.lookahead.power={power}: allowed is a positive number")
        self.every_n_steps, self.max_decay, self.power = int(every_n_steps), float(max_decay), float(power)
        self.slow: dict[str, torch.Tensor] = {}

    def _floating_state(self, pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
        """The net's floating-point weights and buffers (BatchNorm statistics too, as in airbench)."""
        net = getattr(pl_module, "net", pl_module)
        return {k: v for k, v in net.state_dict().items() if v.dtype.is_floating_point}

    def on_train_start(self, trainer, pl_module) -> None:
        state = self._floating_state(pl_module)
        if not self.slow:  # a resumed run has them from its checkpoint already
            self.slow = {k: v.detach().clone() for k, v in state.items()}
        else:
            self.slow = {k: self.slow[k].to(v.device) for k, v in state.items()}

    def decay(self, step: int, total: int) -> float:
        return self.max_decay * (min(step, total) / max(total, 1)) ** self.power

    @torch.no_grad()
    def pull(self, pl_module: pl.LightningModule, decay: float) -> None:
        """slow ← decay·slow + (1 − decay)·fast; fast ← slow."""
        for name, fast in self._floating_state(pl_module).items():
            slow = self.slow[name]
            slow.lerp_(fast, 1.0 - decay)
            fast.copy_(slow)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, max(int(trainer.estimated_stepping_batches), 1)
        if step % self.every_n_steps == 0:
            self.pull(pl_module, self.decay(step, total))
        if step == total:  # the last step: the slow weights become the model (before the last checkpoint is saved)
            self.pull(pl_module, 1.0)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state_dict: dict) -> None:
        self.slow = dict(state_dict["slow"])
