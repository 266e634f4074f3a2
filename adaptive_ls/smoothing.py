"""Label smoothing: one loss and one small policy class per way of choosing ε.

Every policy fits one target::

    target_i = (1 − ε_i) · onehot(y_i) + ε_i · q_i
    loss_i   = (1 − ε_i) · CE(p_i, y_i) + ε_i · CE(p_i, q_i)

A policy answers one question per training step — "which ε (and which q) for this batch?" — from the detached
logits, the (possibly noisy) targets, the sample indices and the training progress. ``q = None`` means uniform
(ε/K on every class, as ``torch.nn.functional.cross_entropy(label_smoothing=ε)`` and timm do), which is the fast path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
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


def smoothed_cross_entropy(
    logits: Tensor,
    targets: Tensor,
    eps: Eps = 0.0,
    q: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy against (1 − ε)·onehot(y) + ε·q, with q uniform (ε/K on every class) when ``q`` is None.

    ``eps`` is a float or a per-sample tensor of shape [B]; ``q`` is None or a [B, K] distribution per sample.
    For scalar ε in [0, 1) this equals ``F.cross_entropy(logits, targets, label_smoothing=ε)``. Computed in float32
    so bf16 logits do not lose the small ε terms. Per-sample ε is not range-checked here (that would sync the host);
    policies clamp it.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r}: allowed are 'mean', 'sum', 'none'")
    if logits.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(logits.shape)}")
    if isinstance(eps, Tensor):
        if eps.ndim not in (0, 1) or (eps.ndim == 1 and eps.shape[0] != logits.shape[0]):
            raise ValueError(f"per-sample eps must have shape [{logits.shape[0]}], got {tuple(eps.shape)}")
        eps = eps.to(torch.float32)
    else:
        eps = _check_eps_value(eps)
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    if q is None:
        smooth = -log_probs.mean(dim=-1)  # CE(p, uniform)
    else:
        if q.shape != logits.shape:
            raise ValueError(f"q must have the logits' shape {tuple(logits.shape)}, got {tuple(q.shape)}")
        smooth = -(q.float() * log_probs).sum(dim=-1)  # CE(p, q)
    loss = (1.0 - eps) * nll + eps * smooth
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


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

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Allocate per-sample state; called once the data (and so N and K) is known."""

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



class NoSmoothing(SmoothingPolicy):
    """Plain cross-entropy (ε = 0): the baseline every sweep needs."""

    name = "none"

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(0.0)


class FixedSmoothing(SmoothingPolicy):
    """Constant ε. ε < 0 is negative label smoothing (NLS, Wei et al., ICML 2022; ``smoothing=negative``).

    Wei et al. show that positive smoothing helps at low noise but "over-smooths" at high noise, where NLS (which
    makes the model *more* confident in the given label than one-hot CE) does better; their code warms up with plain
    CE before switching to NLS at high noise (here: ``smoothing=annealed`` with ``eps_start=0``, ``hold_fraction``).
    ε is bounded below by ``EPS_NEGATIVE_BOUND`` (−1).
    """

    name = "fixed"

    def __init__(self, eps: float = 0.1):
        super().__init__()
        self.eps = _check_eps_value(eps, "eps")

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(self.eps)



ANNEAL_SCHEDULES = ("linear", "cosine", "exponential", "step", "switch")


def annealed_eps(
    fraction: float,
    eps_start: float,
    eps_end: float,
    schedule: str = "linear",
    hold_fraction: float = 0.0,
    num_steps: int = 4,
) -> float:
    """ε at a training fraction in [0, 1]: held at ``eps_start`` for ``hold_fraction``, then moved to ``eps_end``.

    ``exponential`` interpolates geometrically (needs both ends of the same sign and non-zero; ε_end = 0 is treated
    as decaying to 1e-4 of ε_start, then snapped to 0 at the end); ``step`` makes ``num_steps`` equal drops between
    ``num_steps + 1`` equal plateaus, the last at ``eps_end``. ``switch`` jumps: ``eps_start`` for the steps before
    ``hold_fraction`` of training, ``eps_end`` from that step on (CE-then-NLS, as the NLS authors train at high noise).
    """
    if schedule == "switch":  # the step at exactly hold_fraction is the first at eps_end: an exact epoch boundary
        return eps_start if fraction < hold_fraction else eps_end
    if fraction <= hold_fraction:
        return eps_start
    t = min((fraction - hold_fraction) / max(1.0 - hold_fraction, 1e-12), 1.0)
    if schedule == "linear":
        w = t
    elif schedule == "cosine":
        w = 0.5 * (1.0 - math.cos(math.pi * t))
    elif schedule == "step":  # num_steps drops between num_steps + 1 equal plateaus: the last one is eps_end
        w = min(math.floor(t * (num_steps + 1)), num_steps) / num_steps
    elif schedule == "exponential":
        if t >= 1.0:
            return eps_end
        end = eps_end if eps_end != 0 else eps_start * 1e-4
        if eps_start == 0 or end / eps_start <= 0:
            w = t  # no geometric path between ends of different sign: fall back to linear
        else:
            return eps_start * (end / eps_start) ** t
    else:
        raise SmoothingSettingError(f"schedule={schedule!r}: allowed are {', '.join(ANNEAL_SCHEDULES)}")
    return eps_start + (eps_end - eps_start) * w


class AnnealedSmoothing(SmoothingPolicy):
    """ε moves from ``eps_start`` to ``eps_end`` over training, by optimizer step (not epoch).

    ``schedule="switch"`` with ``eps_start=0, eps_end=-0.4, hold_fraction=0.5`` is plain CE for the first half of the
    steps and NLS from then on.
    """

    name = "annealed"

    def __init__(
        self,
        eps_start: float = 0.3,
        eps_end: float = 0.0,
        schedule: str = "linear",
        hold_fraction: float = 0.0,
        num_steps: int = 4,
    ):
        super().__init__()
        self.eps_start = _check_eps_value(eps_start, "eps_start")
        self.eps_end = _check_eps_value(eps_end, "eps_end")
        if schedule not in ANNEAL_SCHEDULES:
            raise SmoothingSettingError(f"schedule={schedule!r}: allowed are {', '.join(ANNEAL_SCHEDULES)}")
        if not 0.0 <= hold_fraction < 1.0:
            raise SmoothingSettingError(f"hold_fraction={hold_fraction}: allowed is 0 <= hold_fraction < 1")
        if schedule == "switch" and not hold_fraction > 0.0:
            raise SmoothingSettingError(f"hold_fraction={hold_fraction}: schedule=switch needs 0 < hold_fraction < 1 "
                                        f"(the fraction of optimizer steps at eps_start)")
        if int(num_steps) < 1:
            raise SmoothingSettingError(f"num_steps={num_steps}: allowed is an integer >= 1")
        self.schedule, self.hold_fraction, self.num_steps = schedule, float(hold_fraction), int(num_steps)

    def eps_at(self, fraction: float) -> float:
        return annealed_eps(fraction, self.eps_start, self.eps_end, self.schedule, self.hold_fraction, self.num_steps)

    def forward(self, logits, targets, index, progress):
        return SmoothingTarget(self.eps_at(progress.fraction))



ADAPTIVE_SIGNALS = ("max_prob", "entropy", "true_class_prob")
ADAPTIVE_Q = ("uniform", "prediction")


def confidence_signal(probs: Tensor, targets: Tensor, signal: str) -> Tensor:
    """A per-sample score in [0, 1] where larger means "smooth this sample more".

    ``max_prob``: the model's top probability (over-confident samples get more smoothing: aims at calibration).
    ``entropy``: 1 − H(p)/log K (low entropy = confident → more smoothing; same direction as max_prob).
    ``true_class_prob``: 1 − p[y] (the less the model believes the given label, the more smoothing: aims at noise).
    """
    if signal == "max_prob":
        return probs.max(dim=-1).values
    if signal == "entropy":
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
        return 1.0 - entropy / math.log(probs.shape[-1])
    if signal == "true_class_prob":
        return 1.0 - probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    raise SmoothingSettingError(f"signal={signal!r}: allowed are {', '.join(ADAPTIVE_SIGNALS)}")


class AdaptiveSmoothing(SmoothingPolicy):
    """Per-sample ε = eps_min + (eps_max − eps_min) · signal(p_i), from the model's own detached prediction.

    For ``warmup_epochs`` the predictions are not trusted yet and ε = ``warmup_eps`` for every sample. With
    ``ema > 0`` the signal is computed from an exponential moving average of each sample's predicted distribution
    across epochs (a [N, K] buffer keyed by sample index, so it is checkpointed and stays on the device).

    ``freeze_fraction < 1`` stops updating that memory once this fraction of training is done: the signal then keeps
    what the model believed in its early-learning phase. Without it, 1 − p[y] falls as a wrong label is memorised, so
    ε falls exactly when it should resist (early-learning regularisation, Liu et al., NeurIPS 2020, anchors its
    targets the same way). With ``ema = 0`` the frozen memory is each sample's last prediction before the freeze.

    ``q``: ``uniform`` spreads ε evenly, which lowers the label's share but never moves the target's argmax off the
    given label while ε < (K − 1)/K, so a wrong label is still the class the model is taught. ``prediction`` gives
    ε to the prediction the signal reads (the memory where there is one): target = (1 − ε)·onehot(y) + ε·p̃, soft
    bootstrapping (Reed et al., 2015) with a per-sample weight, which hands a disbelieved label's mass to the class
    the model believed in instead.
    """

    name = "adaptive"
    per_sample = True

    def __init__(
        self,
        eps_min: float = 0.0,
        eps_max: float = 0.4,
        signal: str = "true_class_prob",
        warmup_epochs: int = 1,
        warmup_eps: float = 0.1,
        ema: float = 0.0,
        freeze_fraction: float = 1.0,
        q: str = "uniform",
    ):
        super().__init__()
        self.eps_min = _check_eps_value(eps_min, "eps_min")
        self.eps_max = _check_eps_value(eps_max, "eps_max")
        if self.eps_min > self.eps_max:
            raise SmoothingSettingError(f"eps_min={eps_min} > eps_max={eps_max}: need eps_min <= eps_max")
        if signal not in ADAPTIVE_SIGNALS:
            raise SmoothingSettingError(f"signal={signal!r}: allowed are {', '.join(ADAPTIVE_SIGNALS)}")
        if int(warmup_epochs) < 0:
            raise SmoothingSettingError(f"warmup_epochs={warmup_epochs}: allowed is an integer >= 0")
        if not 0.0 <= ema < 1.0:
            raise SmoothingSettingError(f"ema={ema}: allowed is 0 <= ema < 1 (0 turns the moving average off)")
        if not 0.0 < freeze_fraction <= 1.0:
            raise SmoothingSettingError(f"freeze_fraction={freeze_fraction}: allowed is 0 < freeze_fraction <= 1 "
                                        f"(1 never freezes the memory)")
        self.signal, self.warmup_epochs, self.ema = signal, int(warmup_epochs), float(ema)
        self.freeze_fraction = float(freeze_fraction)
        if q not in ADAPTIVE_Q:
            raise SmoothingSettingError(f"q={q!r}: allowed are {', '.join(ADAPTIVE_Q)}")
        self.q = q
        self.warmup_eps = _check_eps_value(warmup_eps, "warmup_eps")
        # Each sample's moving-average prediction and whether it has been seen; sized in setup().
        self.register_buffer("memory", torch.empty(0, 0))
        self.register_buffer("seen", torch.empty(0, dtype=torch.bool))

    @property
    def remembers(self) -> bool:
        """Whether the signal comes from a per-sample memory rather than the current prediction alone."""
        return self.ema > 0 or self.freeze_fraction < 1

    def setup(self, num_samples: int, num_classes: int) -> None:
        if self.remembers and self.memory.shape != (num_samples, num_classes):
            self.memory = torch.zeros(num_samples, num_classes, device=self.memory.device)
            self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.memory.device)

    def _smoothed_probs(self, probs: Tensor, index: Tensor, progress: Progress) -> Tensor:
        if not self.remembers:
            return probs
        if self.memory.numel() == 0:
            raise RuntimeError("AdaptiveSmoothing with ema > 0 or freeze_fraction < 1 needs "
                               "setup(num_samples, num_classes) before training")
        old = self.memory[index]
        seen = self.seen[index].unsqueeze(1)
        if progress.fraction >= self.freeze_fraction:
            # Frozen: the early-learning belief; a sample never seen before the freeze uses its current prediction.
            return torch.where(seen, old, probs)
        new = torch.where(seen, self.ema * old + (1.0 - self.ema) * probs, probs)
        all_index, all_new = self._gather(index, new)  # every process's samples, so the memories stay equal
        self.memory[all_index] = all_new
        self.seen[all_index] = True
        return new

    def forward(self, logits, targets, index, progress):
        current = logits.float().softmax(dim=-1)
        signal = confidence_signal(current, targets, self.signal)
        probs = self._smoothed_probs(current, index, progress)
        if progress.epoch < self.warmup_epochs:
            return SmoothingTarget(torch.full_like(probs[:, 0], self.warmup_eps), signal=signal)
        score = signal if probs is current else confidence_signal(probs, targets, self.signal)
        q = probs if self.q == "prediction" else None
        return SmoothingTarget(self.eps_min + (self.eps_max - self.eps_min) * score, q, signal=signal)



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
