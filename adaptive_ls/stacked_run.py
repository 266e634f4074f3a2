"""A stack of a sweep's jobs trained as one Lightning run (adaptive_ls.stacking), each job's folder written as its
single run writes it: what ``hydra/launcher=stacked`` (hydra_plugins/adaptive_ls_stacked) runs.

Each member is opened as :func:`adaptive_ls.train.run` opens a job (an :class:`~adaptive_ls.job.Job`: settings
checked, folder refused or continued, loggers started, data loaded); then the stack trains in one ordinary Lightning
fit with its own checkpoint (``checkpoints/stack-last.ckpt`` in its first member's folder, through Lightning's
``ModelCheckpoint``), is tested in one Lightning test, and each member's results are written by the single run's
export step (:func:`adaptive_ls.train.test_record`, :meth:`~adaptive_ls.job.Job.complete`).

**Callbacks per member.** A member's callbacks run in the stack through :class:`PerMember`: in every hook a callback
sees the member's view of the trainer (:class:`MemberTrainer`: the member's metrics named as its single run names
them, its data module, its loggers and callbacks, ``save_checkpoint`` writing the member's single-job checkpoint,
``should_stop`` stopping the member alone) and of the module (:class:`MemberModule`: ``log`` goes under the member's
name, ``test_reliability`` is the member's). A callback whose class sets ``per_member = True`` (or Lightning's
``ModelCheckpoint`` and ``EarlyStopping``) runs so; a job with any other callback runs alone. A member whose
callback raises (the NaN guard) fails alone; a member that is stopped (early stopping) is masked from the stack's
loss, logs and callbacks, and is tested with its weights of the epoch it stopped in.
"""
from __future__ import annotations

import copy
import json
import logging
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from pytorch_lightning.loggers import Logger

from adaptive_ls.callbacks import StopOnSignal
from adaptive_ls.errors import JobInterrupted, NonFiniteLossError, OutputDirError, one_line

log = logging.getLogger(__name__)
member_log = logging.getLogger(f"{__name__}.members")  # a member's own lines: only into its job log
member_log.propagate = False

# The top-level keys in which the members of one stack may differ: everything else of their configs is shared.
MEMBER_KEYS = ("seed", "noise_seed", "noise", "smoothing")
STACK_MARKER = "stack.json"  # in each member's folder: the stack it is trained in
STACK_CHECKPOINT = "stack-last"  # the stack's last checkpoint, in its first member's checkpoints/ folder
PER_MEMBER = (ModelCheckpoint, EarlyStopping)  # Lightning's callbacks that work through a member's view
STACK_LEVEL = (ProgressBar, StopOnSignal)  # one for the whole stack (the first member's)


def stack_key(cfg: DictConfig) -> str:
    """What the jobs of one stack share: the job's config (unresolved, without ``hydra``) less :data:`MEMBER_KEYS`."""
    node = OmegaConf.to_container(cfg, resolve=False)
    for key in ("hydra", *MEMBER_KEYS):
        node.pop(key, None)
    return json.dumps(node, sort_keys=True, default=str)


def runs_per_member(cls: type) -> bool:
    """Whether a callback class works per member in a stack (the protocol of :class:`PerMember`)."""
    return issubclass(cls, PER_MEMBER) or bool(getattr(cls, "per_member", False))


def stack_refusal(cfg: DictConfig) -> Optional[str]:
    """Why a job cannot be trained in a stack (None: it can)."""
    trainer = cfg.get("trainer") or {}
    strategy, devices = str(trainer.get("strategy", "auto")), str(trainer.get("devices", 1))
    if "ddp" in strategy.lower() or devices not in ("1", "[0]"):
        return f"trainer.strategy={strategy} trainer.devices={devices}: a stack trains on one device"
    if OmegaConf.select(cfg, "module.compile", default=False):
        return "module.compile=true: a stack is not compiled"
    for name, node in (cfg.get("callbacks") or {}).items():
        target = node.get("_target_") if node is not None else None
        try:
            cls = hydra.utils.get_class(str(target)) if target else None
        except Exception:  # not importable: the job reports that itself, alone
            return f"callbacks.{name}._target_={target}: not found"
        if cls is not None and not issubclass(cls, STACK_LEVEL) and not runs_per_member(cls):
            return (f"callbacks.{name}: {cls.__name__} does not declare per_member = True, so it cannot run per "
                    f"member in a stack (adaptive_ls.stacked_run)")
    mode = OmegaConf.select(cfg, "callbacks.diagnostics.mode", default=None)
    if mode not in (None, "train_outputs"):
        return f"callbacks.diagnostics.mode={mode}: a stack measures its members' diagnostics as train_outputs only"
    precision = str(trainer.get("precision", ""))
    if precision.startswith("16"):
        return (f"trainer.precision={precision}: a NaN member would stall the shared GradScaler for all; a stack "
                f"trains in bf16-mixed or 32-true")
    if OmegaConf.select(cfg, "logger.wandb.log_model", default=False):
        return "logger.wandb.log_model=true: a stack does not upload its jobs' checkpoints to W&B"
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
    """One job of a stack, opened in its own folder: its job, module and callbacks, and where it stands."""

    job: Any  # adaptive_ls.job.Job
    module: Any
    callbacks: list = field(default_factory=list)  # those that run per member, as its single run builds them
    shared: list = field(default_factory=list)  # its progress bar and signal handler (the first member's serve all)
    log_file: Optional[Path] = None  # Hydra's job log of it
    log_format: Optional[str] = None
    index: int = 0
    status: str = "active"  # active | stopping (in the epoch it was stopped) | stopped | failed
    snapshot: Optional[dict] = None  # a stopped member's state
    testing: bool = False

    @property
    def output_dir(self) -> Path:
        return self.job.output_dir

    @property
    def name(self) -> str:
        return f"member{self.index}"

    def silent(self) -> bool:
        """Nothing of it is logged or called back: failed, or stopped while the stack still trains."""
        return self.status == "failed" or (self.status == "stopped" and not self.testing)

    def fail(self, stack, error: BaseException) -> None:
        """It fails alone: masked from the stack, its results.json and its logger runs say why."""
        from adaptive_ls.train import fit_results

        if self.status == "failed":
            return
        self.status = "failed"
        stack.failed[self.index] = True
        log.error("job %s failed: %s: %s; the other jobs of the stack go on", self.output_dir, type(error).__name__,
                  one_line(error))
        self.job.results.update({k: v for k, v in fit_results(self.callbacks).items() if k != "checkpoint/last"})
        self.job.fail(error)


def prepare_member(cfg: DictConfig, locks: ExitStack) -> Member:
    """Open the job as a single run opens it (its checks, its folder, its loggers, its data); raise where it must run
    alone. Takes the folder's lock into ``locks``."""
    from hydra.core.hydra_config import HydraConfig

    from adaptive_ls.config import build_run
    from adaptive_ls.job import Job
    from adaptive_ls.resume import RunState, plan_resume
    from adaptive_ls.run_lock import run_lock
    from adaptive_ls.train import instantiate_callbacks

    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # its ${hydra:...} values: the stack trains after Hydra has left this job
    output_dir = Path(cfg.paths.output_dir)
    locks.enter_context(run_lock(output_dir))
    datamodule, module = build_run(cfg)
    if plan_resume(cfg) is not None and not stack_checkpoint_of(output_dir).is_file():
        raise OutputDirError(f"paths.output_dir={output_dir} holds an interrupted run: it resumes alone")
    callbacks = instantiate_callbacks(cfg)
    job = Job(cfg, datamodule)
    job.load()
    callbacks.append(RunState(OmegaConf.to_container(cfg, resolve=True), job.results["noise/labels_hash"]))
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    return Member(job, module, [cb for cb in callbacks if not isinstance(cb, STACK_LEVEL)],
                  [cb for cb in callbacks if isinstance(cb, STACK_LEVEL)],
                  output_dir / f"{hydra_cfg.job.name}.log" if hydra_cfg is not None else None,
                  OmegaConf.select(hydra_cfg, "job_logging.formatters.simple.format") if hydra_cfg else None)


def stack_checkpoint_of(output_dir: Path) -> Path:
    """The checkpoint of the stack the job's folder was trained in (it may not exist)."""
    marker = output_dir / STACK_MARKER
    return Path(json.loads(marker.read_text()).get("checkpoint", "")) if marker.is_file() else output_dir / "-"


# ---------------------------------------------------------------------------------------------------------------------
# The per-member view of the trainer and the module
# ---------------------------------------------------------------------------------------------------------------------


class MemberTrainer:
    """The stack's trainer as a member's callback sees it: the member's metrics, data, loggers and callbacks, its own
    checkpoints and its own stop; everything else is the stack's."""

    def __init__(self, trainer: pl.Trainer, member: Member):
        self.__dict__.update(trainer=trainer, member=member, datamodule=member.job.datamodule,
                             loggers=member.job.loggers, callbacks=member.callbacks)

    @property
    def logger(self):
        return self.loggers[0] if self.loggers else None

    @property
    def callback_metrics(self) -> dict:
        prefix = f"{self.member.name}/"
        return {k[len(prefix):]: v for k, v in self.trainer.callback_metrics.items() if k.startswith(prefix)}

    @property
    def should_stop(self) -> bool:
        return self.member.status != "active"

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        if value and self.member.status == "active":
            self.member.status = "stopping"
            log.info("job %s stops after epoch %d (the others go on)", self.member.output_dir,
                     self.trainer.current_epoch)

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options: Any = None) -> None:
        """The member's single-job Lightning checkpoint: its weights and policy state, its slices of the optimizer
        state (elementwise, so a single job's), the loops and schedule (the members step together), its callbacks'
        states and what they add (its settings for :func:`~adaptive_ls.resume.plan_resume`)."""
        trainer, member, stack = self.trainer, self.member, self.trainer.lightning_module
        size, i = stack.num_members, member.index

        def own(value):
            return value[i].clone() if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == size \
                else value

        checkpoint = {"epoch": trainer.current_epoch, "global_step": trainer.global_step,
                      "pytorch-lightning_version": pl.__version__, "state_dict": stack.member_state_dict(i),
                      "loops": {loop: getattr(trainer, loop).state_dict()
                                for loop in ("fit_loop", "validate_loop", "test_loop", "predict_loop")}}
        if not weights_only:
            checkpoint["callbacks"] = {cb.state_key: cb.state_dict() for cb in member.callbacks if cb.state_dict()}
            checkpoint["optimizer_states"] = [
                {"state": {k: {name: own(v) for name, v in s.items()} for k, s in state["state"].items()},
                 "param_groups": copy.deepcopy(state["param_groups"])}
                for state in map(trainer.strategy.optimizer_state, trainer.optimizers)]
            checkpoint["lr_schedulers"] = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
        if member.module.hparams:
            checkpoint.update({pl.LightningModule.CHECKPOINT_HYPER_PARAMS_NAME: "kwargs",
                               pl.LightningModule.CHECKPOINT_HYPER_PARAMS_KEY: dict(member.module.hparams)})
        if not weights_only:
            for cb in member.callbacks:
                cb.on_save_checkpoint(self, MemberModule(stack, member), checkpoint)
        trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def __getattr__(self, name: str):
        return getattr(self.trainer, name)


class MemberModule:
    """The stack as a member's callback sees it: what it logs goes under the member's name; its test reliability."""

    def __init__(self, stack, member: Member):
        self.__dict__.update(stack=stack, member=member)

    def log(self, name: str, value, **kwargs) -> None:
        self.stack.log(f"{self.member.name}/{name}", value, **kwargs)

    @property
    def test_reliability(self):
        reliability = self.stack.test_reliability
        return None if reliability is None else reliability[self.member.index]

    def __getattr__(self, name: str):
        return getattr(self.stack, name)


BATCH_HOOKS = ("on_train_batch_start", "on_validation_batch_start", "on_validation_batch_end",
               "on_test_batch_start", "on_test_batch_end")
HOOKS = ("setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_validation_epoch_start",
         "on_validation_epoch_end", "on_validation_end", "on_train_epoch_end", "on_test_start", "on_test_epoch_start",
         "on_test_epoch_end", "on_test_end", "on_train_end", "on_fit_end", "teardown")


class PerMember(pl.Callback):
    """One member's callback in the stack: each hook is called with the member's views (:class:`MemberTrainer`,
    :class:`MemberModule`), its own batch and training-step output; never for a failed member, and for a stopped
    one only in the stack's tests. An exception from it fails the member alone (a signal stops the stack)."""

    def __init__(self, callback: pl.Callback, member: Member):
        self.callback, self.member = callback, member

    @property
    def state_key(self) -> str:
        return f"{self.member.name}:{self.callback.state_key}"

    def state_dict(self) -> dict:
        return self.callback.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.callback.load_state_dict(state_dict)

    def call(self, hook: str, trainer, stack, *args, **kwargs) -> None:
        if self.member.silent():
            return
        try:
            getattr(self.callback, hook)(MemberTrainer(trainer, self.member), MemberModule(stack, self.member), *args,
                                         **kwargs)
        except (JobInterrupted, KeyboardInterrupt):
            raise
        except Exception as error:
            self.member.fail(stack, error)

    def on_train_batch_end(self, trainer, stack, outputs, batch, batch_idx: int) -> None:
        own = None if outputs is None else outputs["members"][self.member.index]
        self.call("on_train_batch_end", trainer, stack, own, batch[self.member.index], batch_idx)

    def on_exception(self, trainer, stack, exception: BaseException) -> None:
        self.callback.on_exception(MemberTrainer(trainer, self.member), MemberModule(stack, self.member), exception)


def _hook(name: str, batch: bool):
    def hook(self, trainer, stack, *args, **kwargs):
        if batch:  # (batch, batch_idx) or (outputs, batch, batch_idx[, dataloader_idx]): the member's batch
            position = 0 if name.endswith("_start") else 1
            args = (*args[:position], args[position][self.member.index], *args[position + 1:])
        self.call(name, trainer, stack, *args, **kwargs)
    hook.__name__ = name
    return hook


for _name in HOOKS + BATCH_HOOKS:
    setattr(PerMember, _name, _hook(_name, _name in BATCH_HOOKS))


class MemberLogger(Logger):
    """One member's logger inside a stack: it gets only its member's metrics (logged under ``<name>/``), named as
    its single run names them, and the keys no member owns (``epoch``); nothing while the member is silent."""

    def __init__(self, logger: Logger, member: Member, names: Sequence[str]):
        super().__init__()
        self.logger, self.member, self.prefix = logger, member, f"{member.name}/"
        self.others = tuple(f"{other}/" for other in names if other != member.name)

    name = property(lambda self: self.logger.name)
    version = property(lambda self: self.logger.version)
    save_dir = property(lambda self: self.logger.save_dir)
    log_dir = property(lambda self: getattr(self.logger, "log_dir", self.logger.save_dir))

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        if self.member.silent() or not any(key.startswith(self.prefix) for key in metrics):
            return
        self.logger.log_metrics({key.removeprefix(self.prefix): value for key, value in metrics.items()
                                 if not key.startswith(self.others)}, step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the member's job logged its config when it was opened

    def save(self) -> None:
        self.logger.save()

    def finalize(self, status: str) -> None:
        self.logger.finalize(status)


class StackMembers(pl.Callback):
    """Where the members stand, once per epoch after their own callbacks: a member stopped in this epoch is masked
    from the next on (its state kept for its tests); the fit ends when none is left; one line per epoch in each
    member's job log and one for the stack, with a few members' metrics."""

    KEYS = ("train/loss", "val/acc", "val/nll")

    def __init__(self, members: Sequence[Member]):
        self.members = list(members)

    def on_train_start(self, trainer, stack) -> None:  # a continued stack: who had failed or stopped
        for member, failed, stopped in zip(self.members, stack.failed.tolist(), stack.stopped.tolist()):
            member.status = "failed" if failed else "stopped" if stopped else member.status

    def on_train_epoch_end(self, trainer, stack) -> None:
        lines = []
        for member in self.members:
            if member.status not in ("active", "stopping"):
                continue
            if member.status == "stopping":
                member.status, member.snapshot = "stopped", stack.member_state_dict(member.index)
                stack.stopped[member.index] = True
            own = MemberTrainer(trainer, member).callback_metrics
            text = "  ".join(f"{key} {float(own[key]):.4f}" for key in self.KEYS if key in own)
            member_log.info("epoch %d/%d: %s%s", trainer.current_epoch + 1, trainer.max_epochs, text,
                            " (stopped)" if member.status == "stopped" else "", extra={"member": member.index})
            lines.append(f"{member.output_dir.name}: {text}")
        shown = "; ".join(lines[:3]) + (f"; {len(lines) - 3} more" if len(lines) > 3 else "")
        log.info("stack epoch %d/%d: %s", trainer.current_epoch + 1, trainer.max_epochs, shown or "no job left")
        if all(member.status in ("failed", "stopped") for member in self.members):
            trainer.should_stop = True


# ---------------------------------------------------------------------------------------------------------------------
# The stack's checkpoint, training and tests
# ---------------------------------------------------------------------------------------------------------------------


def stack_identity(members: Sequence[Member]) -> dict[str, Any]:
    """What a stack checkpoint belongs to: the members' folders, resolved configs and noisy labels, in order."""
    return {"members": [str(m.output_dir) for m in members],
            "configs": [OmegaConf.to_container(m.job.cfg, resolve=True) for m in members],
            "labels_hashes": [m.job.results["noise/labels_hash"] for m in members]}


def stack_checkpointing(members: Sequence[Member]) -> tuple[ModelCheckpoint, Optional[Path]]:
    """The stack's last-epoch checkpoint callback, and the checkpoint to continue from: that of an interrupted run
    of this same stack (the same members, settings equal but for those a resumed run may change), else None. A
    checkpoint of another stack, or ``resume=false`` with one there, is refused as a single run refuses its folder."""
    from adaptive_ls.jsonio import read_json, write_json
    from adaptive_ls.resume import config_differences

    folder = members[0].output_dir / "checkpoints"
    identity, path = stack_identity(members), folder / f"{STACK_CHECKPOINT}.ckpt"
    resume, again = None, "or set hydra.sweep.dir to a new folder"
    if path.is_file():
        saved = read_json(folder / STACK_MARKER)
        if members[0].job.cfg.get("resume", "auto") is False:
            raise OutputDirError(f"resume=false but {folder} holds an interrupted stack ({path}): leave resume=auto to "
                                 f"continue it, {again}")
        if saved.get("members") != identity["members"]:
            raise OutputDirError(f"{path} belongs to a stack of other jobs ({saved.get('members')}): run the sweep "
                                 f"with its jobs and hydra.launcher.max_members to continue it, {again}")
        differences = [f"job {i}: {d}" for i, (old, new) in enumerate(zip(saved["configs"], identity["configs"]))
                       for d in config_differences(old, new)]
        if differences:
            raise OutputDirError(f"{path} holds an interrupted stack with other settings ({'; '.join(differences)}): "
                                 f"re-run with its settings to continue it, {again}")
        changed = [f"job {i} ({m.output_dir}): hash {new}, trained on {old}" for i, (m, old, new) in enumerate(zip(
            members, saved.get("labels_hashes", identity["labels_hashes"]), identity["labels_hashes"])) if old != new]
        if changed:  # e.g. a changed label file: the same settings, other labels
            raise OutputDirError(f"{path} holds an interrupted stack trained on other noisy labels ({'; '.join(changed)}"
                                 f", see each job's noisy_labels.npy): check noise.* and noise_seed, {again}")
        resume = path
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / STACK_MARKER, identity)
    for member in members:
        write_json(member.output_dir / STACK_MARKER, {"index": member.index, "members": identity["members"],
                                                      "checkpoint": str(path)})
    last = ModelCheckpoint(dirpath=folder, filename=STACK_CHECKPOINT, monitor=None, save_top_k=1,
                           enable_version_counter=False, every_n_epochs=1, save_on_train_epoch_end=True)
    return last, resume


def stacked_classifier(members: Sequence[Member], execution: str = "auto"):
    """The members' LabelSmoothingClassifiers as one StackedClassifier: their nets and policies, the first's
    optimizer, schedule and options (the same for all: their configs differ only in MEMBER_KEYS)."""
    from adaptive_ls.stacking import StackedClassifier, StackedNet

    first = members[0].module
    return StackedClassifier(
        StackedNet([m.module.net for m in members], execution), [m.module.smoothing for m in members],
        optimizer=first.optimizer_factory, scheduler=first.scheduler_factory, num_classes=first.num_classes,
        scheduler_interval=first.scheduler_interval, ece_bins=first.ece_bins,
        norm_bias_lr_scale=first.norm_bias_lr_scale, eval_tta=first.eval_tta, channels_last=first.channels_last,
        names=[m.name for m in members])


def train_stack(members: Sequence[Member], execution: str = "auto",
                callbacks: Sequence[pl.Callback] = ()) -> list[dict[str, Any]]:
    """Train the members as one stack (``execution``: :class:`~adaptive_ls.stacking.StackedNet`'s), test it, and
    write each one's folder; returns their results, in order. ``callbacks``: more for the whole stack."""
    from adaptive_ls.resume import RunState, read_run_state
    from adaptive_ls.stacking import StackedDataModule

    for index, member in enumerate(members):
        member.index = index
    try:
        stack = stacked_classifier(members, execution)
    except (ValueError, TypeError) as error:
        raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
    last, resume = stack_checkpointing(members)
    if resume:
        epoch = read_run_state(resume)["epoch"]
        for member in members:
            member.job.results.update({"resumed_from_epoch": epoch, "checkpoint/resumed_from": str(resume)})
    own = [PerMember(cb, m) for m in members for cb in m.callbacks]
    own.sort(key=lambda cb: isinstance(cb.callback, ModelCheckpoint))  # as Lightning orders a job's: checkpoints last
    trainer = hydra.utils.instantiate(
        members[0].job.cfg.trainer, logger=[MemberLogger(lg, m, stack.names) for m in members for lg in m.job.loggers]
        or False, callbacks=[*members[0].shared, *callbacks, *own, StackMembers(members),
                             RunState(stack_identity(members), None), last])
    datamodule = StackedDataModule([m.job.datamodule for m in members])
    with member_logs(members):
        log.info("training %d jobs as one stack: %s%s", len(members), ", ".join(str(m.output_dir) for m in members),
                 f" (continuing from {resume})" if resume else "")
        try:
            with warnings.catch_warnings():  # the first member's checkpoints/ holds the stack's marker from the start
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                trainer.fit(stack, datamodule=datamodule, ckpt_path=resume)
        except BaseException as error:
            if trainer.global_step == 0 and resume is None and isinstance(error, Exception):
                for member in members:  # nothing trained yet: the members can still run alone, continuing these runs
                    member.job.close()
                raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
            for member in members:
                member.job.fail(error)  # once: a member that had failed keeps its record
            raise
        results = test_stack(trainer, stack, datamodule, members)
    if all(r.get("status") == "completed" for r in results):  # the members' own checkpoints hold it all now
        last_path = Path(last.dirpath) / f"{STACK_CHECKPOINT}.ckpt"
        last_path.unlink(missing_ok=True)
    return results


def test_stack(trainer: pl.Trainer, stack, datamodule, members: Sequence[Member]) -> list[dict[str, Any]]:
    """The members' tests as their single runs': the final weights (a stopped member's from its last epoch) tested
    and calibrated, then each member's best checkpoint; each member's folder written by the single run's export step.
    A member that fails here fails alone."""
    from adaptive_ls.calibration import calibration_metrics, evaluation_logits
    from adaptive_ls.stacking import member_metrics
    from adaptive_ls.train import best_checkpoint, fit_results, test_record

    for member in members:
        member.testing = True
        if member.status == "stopped":
            snapshot = member.snapshot or torch.load(fit_results(member.callbacks)["checkpoint/last"],
                                                     map_location="cpu", weights_only=False)["state_dict"]
            stack.load_member_state_dict(member.index, snapshot)
    tested = trainer.test(stack, datamodule=datamodule, verbose=False)[0]
    reliability = stack.test_reliability or [None] * len(members)
    logits = evaluation_logits(trainer, stack, datamodule) if members[0].job.datamodule.val_size else None
    best = [best_checkpoint(m.callbacks) if m.job.cfg.get("test_best", True) else None for m in members]
    tested_best = {}
    if any(b is not None for b in best):
        for member, checkpoint in zip(members, best):
            if checkpoint is not None:
                state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
                stack.load_member_state_dict(member.index, state)
        tested_best = trainer.test(stack, datamodule=datamodule, verbose=False)[0]
    for member in members:
        job, i = member.job, member.index
        if member.status == "failed":
            if not job.ended:  # it had failed before the stack was interrupted and continued: its record stands
                job.restore_previous() if job.previous.get("status") == "failed" else \
                    job.fail(NonFiniteLossError("the training loss became NaN/inf in the stack"))
            continue
        try:
            calibration = {} if logits is None else calibration_metrics(
                job.datamodule, stack.ece_bins, *(tensor[i] for split in logits for tensor in split))
            job.results.update(fit_results(member.callbacks, 1, trainer.precision))
            job.results.update(test_record(member_metrics(tested, member.name), calibration, reliability[i],
                                           best[i], member_metrics(tested_best, member.name) if best[i] else None,
                                           job.output_dir))
            job.complete()
        except Exception as error:  # recorded in its results.json and its runs; the others still finish
            log.exception("job %s failed in its tests; the other jobs of the stack go on", member.output_dir)
            job.fail(error)
    return [member.job.results for member in members]


@contextmanager
def member_logs(members: Sequence[Member]) -> Iterator[None]:
    """The stack's log lines, and each member's own epoch lines, in the member's job log (``<job name>.log`` in its
    folder, where Hydra wrote its preparation), in the format of Hydra's job log."""
    handlers = []
    for member in members:
        if member.log_file is None:
            continue
        handler = logging.FileHandler(member.log_file)
        handler.setFormatter(logging.Formatter(member.log_format))
        handler.addFilter(lambda record, i=member.index: getattr(record, "member", i) == i)
        handlers.append(handler)
        logging.getLogger().addHandler(handler)
        member_log.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            member_log.removeHandler(handler)
            handler.close()


def record_stack_failure(members: Sequence[Member], error: BaseException) -> None:
    """Mark every member of a stack that failed as failed in its results.json, keeping what it had measured."""
    for member in members:
        member.job.fail(error)
