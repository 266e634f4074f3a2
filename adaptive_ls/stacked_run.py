"""A stack of a sweep's jobs trained as one model (adaptive_ls.stacking), each job's folder written as its single run
writes it: what ``hydra/launcher=stacked`` (hydra_plugins/adaptive_ls_stacked) runs.

Each job is prepared in its own folder as :func:`adaptive_ls.train.run` starts (settings checked, data loaded,
``noisy_labels.npy``, ``results.json`` with status running); then the stack trains, and each member's weights go back
into its own :class:`~adaptive_ls.module.LabelSmoothingClassifier`, which is tested and calibrated by the single run's
code, so ``results.json`` holds what a single run's does and ``adaptive-ls-report`` reads the sweep as any other.

Jobs stack when their configs differ only in :data:`MEMBER_KEYS`; :func:`stack_refusal` names what keeps a job out
of any stack; members that turn out not to fit one (:class:`StackRefused`, before the first step) run alone.

Each member's best epoch is kept as a state dict (``checkpoints/best-epoch*.pt``) and tested as a single run tests
its best checkpoint. The stack's own last checkpoint (``checkpoints/stack-last.ckpt`` in its first member's folder)
continues an interrupted stack when the sweep is run again with the same members and settings. A member whose
training loss turns NaN/inf is marked failed; the others train on unharmed (each member's gradient is its own).
Not kept from a single run yet: per-job Lightning checkpoints, the loggers (CSV, W&B) and the callbacks other than
the history and the noise diagnostics (NaN guard, signals, W&B media).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from pytorch_lightning import Callback

from adaptive_ls.callbacks import PeriodicMetrics

log = logging.getLogger(__name__)

# The top-level keys in which the members of one stack may differ: everything else of their configs is shared.
MEMBER_KEYS = ("seed", "noise_seed", "noise", "smoothing")
STACK_MARKER = "stack.json"  # in each member's folder: the stack it was trained in
STACK_CHECKPOINT = "stack-last"  # the stack's last checkpoint, in its first member's checkpoints/ folder
# conf/callbacks/default.yaml: a stack keeps the history, the diagnostics and the best epoch of them (and refuses
# a job with any other callback, whose effect it could not reproduce).
KNOWN_CALLBACKS = ("best_checkpoint", "last_checkpoint", "diagnostics", "history", "nan_guard", "progress_bar",
                   "signals", "wandb_media")


def stack_key(cfg: DictConfig) -> str:
    """What the jobs of one stack share: the job's config (unresolved, without ``hydra``) less :data:`MEMBER_KEYS`."""
    node = OmegaConf.to_container(cfg, resolve=False)
    for key in ("hydra", *MEMBER_KEYS):
        node.pop(key, None)
    return json.dumps(node, sort_keys=True, default=str)


def stack_refusal(cfg: DictConfig) -> Optional[str]:
    """Why a job cannot be trained in a stack (None: it can)."""
    trainer = cfg.get("trainer") or {}
    strategy, devices = str(trainer.get("strategy", "auto")), str(trainer.get("devices", 1))
    if "ddp" in strategy.lower() or devices not in ("1", "[0]"):
        return f"trainer.strategy={strategy} trainer.devices={devices}: a stack trains on one device"
    if OmegaConf.select(cfg, "module.compile", default=False):
        return "module.compile=true: a stack is not compiled"
    extra = sorted(set(cfg.get("callbacks") or {}) - set(KNOWN_CALLBACKS))
    if extra:
        return f"callbacks.{extra[0]}: a stack runs only the callbacks of conf/callbacks/default.yaml"
    mode = OmegaConf.select(cfg, "callbacks.diagnostics.mode", default=None)
    if mode not in (None, "train_outputs"):
        return f"callbacks.diagnostics.mode={mode}: a stack measures its members' diagnostics as train_outputs only"
    if OmegaConf.select(cfg, "module._target_", default="") != "adaptive_ls.module.LabelSmoothingClassifier":
        return (f"module._target_={OmegaConf.select(cfg, 'module._target_')}: a stack trains "
                f"LabelSmoothingClassifier jobs")
    return None


def group_jobs(keys: Sequence[Optional[str]], max_members: Optional[int]) -> list[list[int]]:
    """Job indices grouped by equal key, in order of first appearance, at most ``max_members`` a group; a job whose
    key is None is a group of its own."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(("alone", i) if key is None else key, []).append(i)
    size = max_members or max(len(keys), 1)
    return [members[start:start + size] for members in groups.values() for start in range(0, len(members), size)]


class StackRefused(Exception):
    """The members cannot train together (their nets or data do not fit one stack, or it failed before its first
    step): each of them runs alone instead."""


@dataclass
class Member:
    """One job of a stack, prepared in its own folder: its config, built objects and results so far."""

    cfg: DictConfig
    datamodule: Any
    module: Any
    results: dict[str, Any]
    start: float = field(default_factory=time.time)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.paths.output_dir)


def prepare_member(cfg: DictConfig, locks: ExitStack) -> Member:
    """As a single run starts: check the settings, refuse a folder with a run in it, load the data, write the noisy
    labels and results.json (running). Takes the folder's lock into ``locks``. Raises where the job must run alone."""
    from adaptive_ls.config import build_run
    from adaptive_ls.errors import OutputDirError
    from adaptive_ls.jsonio import write_json
    from adaptive_ls.resume import plan_resume
    from adaptive_ls.run_lock import run_lock
    from adaptive_ls.train import initial_results, load_data, write_noise_artifacts

    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # its ${hydra:...} values: the stack trains after Hydra has left this job
    output_dir = Path(cfg.paths.output_dir)
    locks.enter_context(run_lock(output_dir))
    datamodule, module = build_run(cfg)
    if plan_resume(cfg) is not None:
        raise OutputDirError(f"paths.output_dir={output_dir} holds an interrupted run: it resumes alone")
    results = initial_results(cfg, datamodule)
    results.update(load_data(cfg, datamodule))
    write_noise_artifacts(output_dir, datamodule)
    write_json(output_dir / "results.json", results)
    return Member(cfg, datamodule, module, results)


def stacked_classifier(members: Sequence[Member]):
    """The members' LabelSmoothingClassifiers as one StackedClassifier: their nets and policies, the first's
    optimizer, schedule and options (the same for all: their configs differ only in MEMBER_KEYS)."""
    from adaptive_ls.stacking import StackedClassifier, StackedNet

    first = members[0].module
    return StackedClassifier(
        StackedNet([m.module.net for m in members]), [m.module.smoothing for m in members],
        optimizer=first.optimizer_factory, scheduler=first.scheduler_factory, num_classes=first.num_classes,
        scheduler_interval=first.scheduler_interval, ece_bins=first.ece_bins,
        norm_bias_lr_scale=first.norm_bias_lr_scale, eval_tta=first.eval_tta, channels_last=first.channels_last)


class _MemberTrainer:
    """The stack's trainer as one member's callback sees it: that member's data module, all else the stack's."""

    def __init__(self, trainer, datamodule):
        self.__dict__.update(_trainer=trainer, datamodule=datamodule)

    def __getattr__(self, name: str):
        return getattr(self._trainer, name)


class _MemberModule:
    """The stack as one member's callback sees it: what it logs goes under the member's name."""

    def __init__(self, stack, name: str):
        self.__dict__.update(_stack=stack, _prefix=f"{name}/")

    def log(self, name: str, value, **kwargs) -> None:
        self._stack.log(f"{self._prefix}{name}", value, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._stack, name)


class MemberDiagnostics(PeriodicMetrics):
    """A member's NoiseDiagnostics (``mode=train_outputs``) in a stack: it sees the member's data module and
    training-step outputs, and logs under the member's name, so the member's history holds its ``diag/`` rows."""

    def __init__(self, diagnostics, datamodule, name: str):
        super().__init__()
        self.diagnostics, self.datamodule, self.name = diagnostics, datamodule, name
        self.metric_prefix = f"{name}/{diagnostics.metric_prefix}"

    @property
    def last_logged_epoch(self) -> int:
        return self.diagnostics.last_logged_epoch

    @last_logged_epoch.setter
    def last_logged_epoch(self, value: int) -> None:
        pass  # the member's own callback keeps it

    def _views(self, trainer, pl_module):
        return _MemberTrainer(trainer, self.datamodule), _MemberModule(pl_module, self.name)

    def on_train_start(self, trainer, pl_module) -> None:
        self.diagnostics.on_train_start(*self._views(trainer, pl_module))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.diagnostics.on_train_epoch_start(*self._views(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        index = pl_module.names.index(self.name)
        own = None if outputs is None else outputs["members"][index]
        self.diagnostics.on_train_batch_end(*self._views(trainer, pl_module), own, batch[index], batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.diagnostics.on_train_epoch_end(*self._views(trainer, pl_module))


class MemberBest(Callback):
    """Each member's weights at its best epoch by its ``callbacks.best_checkpoint`` monitor and mode, kept as the
    single run's best checkpoint is taken (after the epoch's validation; a tie keeps the earlier epoch)."""

    def __init__(self, monitor: str, mode: str):
        if mode not in ("max", "min"):
            raise ValueError(f"callbacks.best_checkpoint.mode={mode!r}: allowed are max, min")
        self.monitor, self.mode = monitor, mode
        self.best: dict[int, tuple[float, int, dict]] = {}  # member -> (value, epoch, state dict on the CPU)

    def better(self, value: float, i: int) -> bool:
        if not math.isfinite(value):
            return False
        if i not in self.best:
            return True
        return value > self.best[i][0] if self.mode == "max" else value < self.best[i][0]

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = dict(state_dict["best"])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for i, name in enumerate(pl_module.names):
            value = trainer.callback_metrics.get(f"{name}/{self.monitor}")
            if value is not None and self.better(float(value), i):
                state = {k: v.detach().cpu() if hasattr(v, "detach") else v
                         for k, v in pl_module.member_state_dict(i).items()}
                self.best[i] = (float(value), trainer.current_epoch, state)


def member_best(members: Sequence[Member]) -> Optional[MemberBest]:
    """The best-epoch keeper, where the members test their best epoch (``test_best`` and a best checkpoint)."""
    cfg = members[0].cfg
    node = OmegaConf.select(cfg, "callbacks.best_checkpoint", default=None)
    if not cfg.get("test_best", True) or node is None or node.get("monitor") is None:
        return None
    return MemberBest(str(node.monitor), str(node.get("mode", "min")))


def save_best(member: Member, best: tuple[float, int, dict]) -> Path:
    """A member's best weights as its LabelSmoothingClassifier state dict, named as its single run's checkpoint."""
    import torch

    path = member.output_dir / "checkpoints" / f"best-epoch{best[1]:03d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": best[2], "epoch": best[1], "monitor_value": best[0]}, path)
    return path


def member_diagnostics(members: Sequence[Member], names: Sequence[str]) -> list:
    """Each member's noise diagnostics as its config builds them (none where ``callbacks.diagnostics`` is null)."""
    from adaptive_ls.config import instantiate_group
    from adaptive_ls.diagnostics import NoiseDiagnostics

    built = []
    for member, name in zip(members, names):
        callbacks = instantiate_group(member.cfg, "callbacks").values()
        built += [MemberDiagnostics(cb, member.datamodule, name) for cb in callbacks
                  if isinstance(cb, NoiseDiagnostics)]
    return built


def plain_trainer(cfg: DictConfig, callbacks: list, checkpointing: bool = False):
    """The job's Trainer without its loggers (and without checkpoints unless a callback of ``callbacks`` writes
    them)."""
    import hydra

    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_checkpointing=checkpointing)


def stack_identity(members: Sequence[Member]) -> dict[str, Any]:
    """What a stack checkpoint belongs to: the members' folders and resolved configs, in order."""
    return {"members": [str(m.output_dir) for m in members],
            "configs": [OmegaConf.to_container(m.cfg, resolve=True) for m in members]}


def stack_checkpointing(members: Sequence[Member]):
    """The stack's last-epoch checkpoint callback, and the checkpoint to continue from: the one of an interrupted
    run of this same stack (same members, same settings), else None."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from adaptive_ls.jsonio import read_json, write_json

    folder = members[0].output_dir / "checkpoints"
    identity, path = stack_identity(members), folder / f"{STACK_CHECKPOINT}.ckpt"
    same = json.loads(json.dumps(identity, default=str)) == read_json(folder / STACK_MARKER)
    allowed = members[0].cfg.get("resume", "auto") is not False
    resume = path if path.is_file() and same and allowed else None
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / STACK_MARKER, identity)
    last = ModelCheckpoint(dirpath=folder, filename=STACK_CHECKPOINT, monitor=None, save_top_k=1,
                           enable_version_counter=False, every_n_epochs=1, save_on_train_epoch_end=True)
    return last, resume


def member_history(history: list[dict], name: str) -> list[dict]:
    """One member's rows of the stack's history, named as its single run names them."""
    from adaptive_ls.stacking import member_metrics

    return [{"epoch": row["epoch"], **member_metrics(row, name)} for row in history]


def finite_training(history: list[dict]) -> bool:
    """Whether the member's training loss stayed finite (a NaN member does not disturb the others' gradients)."""
    return all(math.isfinite(row.get("train/loss", 0.0)) for row in history)


def test_best_epoch(member: Member, trainer, best: Optional[MemberBest], index: int) -> dict[str, Any]:
    """``test/acc_at_best_val`` of the member's best epoch, as a single run's test of its best checkpoint."""
    if best is None or index not in best.best:
        return {}
    path = save_best(member, best.best[index])
    member.module.load_state_dict(best.best[index][2])
    tested = trainer.test(member.module, datamodule=member.datamodule, verbose=False)[0]
    return {"test/acc_at_best_val": float(tested["test/acc"]), "checkpoint/best": str(path),
            "checkpoint/monitor": best.monitor}


def finish_member(member: Member, stack, index: int, history: list[dict], names: list[str],
                  best: Optional[MemberBest] = None) -> dict[str, Any]:
    """Member ``index``'s results as its single run's: the stack's history of it, then its own module loaded with
    its trained state, tested and calibrated by the single run's code (and its best epoch tested); writes
    results.json and the stack marker."""
    from adaptive_ls.jsonio import write_json
    from adaptive_ls.train import history_results, test_results

    results = member.results
    own = member_history(history, stack.names[index])
    results.update({**history_results(own), "world_size": 1, "checkpoint/last": ""})
    if not finite_training(own):
        results.update(status="failed", error="NonFiniteLossError: the training loss became NaN/inf in the stack")
    else:
        member.module.load_state_dict(stack.member_state_dict(index))
        trainer = plain_trainer(member.cfg, callbacks=[])
        results.update(test_results(trainer, member.module, member.datamodule, False, member.output_dir))
        results.update(test_best_epoch(member, trainer, best, index))
        results.update(status="completed", wall_time_s=time.time() - member.start)
    write_json(member.output_dir / "results.json", results)
    write_json(member.output_dir / STACK_MARKER, {"index": index, "members": names})
    return results


def train_stack(members: Sequence[Member]) -> list[dict[str, Any]]:
    """Train the members as one stack and write each one's folder; returns their results, in order."""
    from adaptive_ls.callbacks import EpochHistory
    from adaptive_ls.stacking import StackedDataModule

    from adaptive_ls.errors import one_line

    try:
        stack = stacked_classifier(members)
    except (ValueError, TypeError) as error:
        raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
    history, best = EpochHistory(), member_best(members)
    last, resume = stack_checkpointing(members)
    callbacks = [*member_diagnostics(members, stack.names), history, *([best] if best else []), last]
    trainer = plain_trainer(members[0].cfg, callbacks=callbacks, checkpointing=True)
    log.info("training %d jobs as one stack: %s%s", len(members), ", ".join(str(m.output_dir) for m in members),
             f" (continuing from {resume})" if resume else "")
    if resume:
        from adaptive_ls.resume import read_run_state

        for member in members:
            member.results.update({"resumed_from_epoch": read_run_state(resume)["epoch"],
                                   "checkpoint/resumed_from": str(resume)})
    try:
        trainer.fit(stack, datamodule=StackedDataModule([m.datamodule for m in members]), ckpt_path=resume)
    except Exception as error:
        if trainer.global_step == 0 and resume is None:  # nothing trained yet: the members can still run alone
            raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
        raise
    names = [str(m.output_dir) for m in members]
    return [finish_member(m, stack, i, history.history, names, best) for i, m in enumerate(members)]


def record_stack_failure(members: Sequence[Member], error: BaseException) -> None:
    """Mark every member of a stack that failed as failed in its results.json, keeping what it had measured."""
    from adaptive_ls.jsonio import write_json

    for member in members:
        write_json(member.output_dir / "results.json",
                   {**member.results, "status": "failed", "error": f"{type(error).__name__}: {error}"})
