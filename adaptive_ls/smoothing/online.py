"""Online label smoothing (Zhang et al., IEEE TIP 2021): q from last epoch's class-mean predictions."""
from __future__ import annotations

import torch
from torch import Tensor

from adaptive_ls.smoothing.policy import SmoothingPolicy, SmoothingSettingError, SmoothingTarget


OLS_INITS = ("uniform", "onehot")


class OnlineSmoothing(SmoothingPolicy):
    """Online label smoothing (OLS; Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021).

    q_i = S[y_i], where row S[c] is the mean softmax prediction of the training samples of (given) class c that the
    model classified correctly during the *previous* epoch: the soft target keeps the class similarities the model
    has found (a cat looks more like a dog than a truck) instead of spreading ε evenly. The loss is our formula with
    ε = ``alpha``, the weight of the soft target: ``(1 − alpha)·CE(p, y) + alpha·CE(p, S[y])``; the paper mixes the
    hard and soft losses 0.5/0.5.

    State (buffers, so checkpoints carry it): ``soft`` [K, K] = S, plus this epoch's running ``sums`` [K, K] and
    ``counts`` [K], accumulated on the device in ``forward`` (no host sync). S starts uniform (``init``; ``onehot``
    makes the first epoch plain CE, as the authors' code effectively does) and is rolled forward when ``forward``
    first sees a new epoch (the epoch is checkpointed as extra state), not in an epoch-end hook: the state is then a
    function of the steps seen alone, whatever order a trainer runs hooks and writes checkpoints in on resume. A
    class with no correctly classified sample in an epoch keeps its previous row (the authors' code resets it to
    uniform).
    """

    name = "online"

    def __init__(self, alpha: float = 0.5, init: str = "uniform"):
        super().__init__()
        if not 0.0 < float(alpha) < 1.0:
            raise SmoothingSettingError(f"alpha={alpha}: allowed is 0 < alpha < 1 (the weight of the soft target; "
                             f"the paper uses 0.5)")
        self.alpha = float(alpha)
        if init not in OLS_INITS:
            raise SmoothingSettingError(f"init={init!r}: allowed are {', '.join(OLS_INITS)}")
        self.init = init
        self._epoch = 0  # the epoch whose statistics `sums`/`counts` hold (checkpointed as extra state)
        self.register_buffer("soft", torch.empty(0, 0))
        self.register_buffer("sums", torch.empty(0, 0))
        self.register_buffer("counts", torch.empty(0))

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.soft.shape != (num_classes, num_classes):
            device = self.soft.device
            if self.init == "uniform":
                self.soft = torch.full((num_classes, num_classes), 1.0 / num_classes, device=device)
            else:
                self.soft = torch.eye(num_classes, device=device)
            self.sums = torch.zeros(num_classes, num_classes, device=device)
            self.counts = torch.zeros(num_classes, device=device)

    def _accumulate(self, probs: Tensor, targets: Tensor) -> None:
        """Add the correctly classified samples' predictions to their class's running sum."""
        correct = (probs.argmax(dim=-1) == targets).to(probs.dtype)
        self.sums.index_add_(0, targets, probs * correct.unsqueeze(1))
        self.counts.index_add_(0, targets, correct)

    def _roll(self) -> None:
        """S ← this epoch's class means (rows without a correct sample keep their value); reset the sums."""
        # Under DDP every process saw a shard: S uses all of them (summed into copies; the local sums are reset).
        sums, counts = self._all_reduce(self.sums.clone()), self._all_reduce(self.counts.clone())
        seen = (counts > 0).unsqueeze(1)
        self.soft = torch.where(seen, sums / counts.clamp_min(1.0).unsqueeze(1), self.soft)
        self.sums.zero_()
        self.counts.zero_()

    def forward(self, logits, targets, index, progress):
        if self.soft.numel() == 0:
            raise RuntimeError("OnlineSmoothing needs setup(num_samples, num_classes) before training")
        if progress.epoch != self._epoch:  # first step of a new epoch: last epoch's statistics become S
            self._roll()
            self._epoch = progress.epoch
        targets = targets.long()
        q = self.soft[targets]
        self._accumulate(logits.float().softmax(dim=-1), targets)
        return SmoothingTarget(self.alpha, q)

    def get_extra_state(self) -> dict:
        return {"epoch": self._epoch}

    def set_extra_state(self, state: dict) -> None:
        self._epoch = int(state["epoch"])
