"""A stack of a sweep's jobs trained as one model (adaptive_ls.stacking), each job's folder written as its single run
writes it: what ``hydra/launcher=stacked`` (hydra_plugins/adaptive_ls_stacked) runs.

Each job is prepared in its own folder as :func:`adaptive_ls.train.run` starts (settings checked, data loaded,
``noisy_labels.npy``, ``results.json`` with status running, its callbacks built); then its loggers start (its own W&B
run, its CSV log) and the stack trains, each member's metrics going to its own loggers (:class:`MemberLogger`).
Each member's checkpoints are a single job's Lightning checkpoints (:class:`MemberCheckpoints`), and at the end its
weights go back into its own :class:`~adaptive_ls.module.LabelSmoothingClassifier`, which is tested and calibrated
by the single run's code with its own trainer, callbacks and loggers: ``results.json`` holds what a single run's does
and ``adaptive-ls-report`` reads the sweep as any other.

Jobs stack when their configs differ only in :data:`MEMBER_KEYS`; :func:`stack_refusal` names what keeps a job out
of any stack; members that turn out not to fit one (:class:`StackRefused`, before the first step) run alone.

Faults: a member whose training loss turns NaN/inf fails alone and the others go on (:class:`MemberFailures`). The
stack's own last checkpoint (``checkpoints/stack-last.ckpt`` in its first member's folder) continues an interrupted
stack when the sweep is run again with the same members and settings; a signal (SIGTERM, Ctrl-C) stops the stack at
the next step, records every member as interrupted and ends the sweep, as it does a single job.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger
from torch import Tensor

from adaptive_ls.callbacks import EpochHistory, PeriodicMetrics
from adaptive_ls.errors import NonFiniteLossError

log = logging.getLogger(__name__)

# The top-level keys in which the members of one stack may differ: everything else of their configs is shared.
MEMBER_KEYS = ("seed", "noise_seed", "noise", "smoothing")
STACK_MARKER = "stack.json"  # in each member's folder: the stack it was trained in
STACK_CHECKPOINT = "stack-last"  # the stack's last checkpoint, in its first member's checkpoints/ folder
# conf/callbacks/default.yaml: what a stack does for each member as its single run's callbacks would (and it refuses
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
    precision = str(trainer.get("precision", ""))
    if precision.startswith("16"):
        return (f"trainer.precision={precision}: a NaN member would stall the shared GradScaler for all; a stack "
                f"trains in bf16-mixed or 32-true")
    for name in ("best_checkpoint", "last_checkpoint"):
        node = OmegaConf.select(cfg, f"callbacks.{name}", default=None) or {}
        for key, allowed in (("save_top_k", (1,)), ("every_n_epochs", (1,)), ("save_last", (None, False))):
            if node.get(key, allowed[0]) not in allowed:
                return (f"callbacks.{name}.{key}={node.get(key)}: a stack writes each job's checkpoints as "
                        f"conf/callbacks does")
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
    """One job of a stack, prepared in its own folder: its config, built objects, loggers and results so far."""

    cfg: DictConfig
    datamodule: Any
    module: Any
    results: dict[str, Any]
    callbacks: list = field(default_factory=list)  # its conf/callbacks, as its single run builds them
    hydra: Any = None  # Hydra's config of its job, where it was prepared in one
    loggers: list = field(default_factory=list)  # started when the stack trains (member_loggers)
    previous: dict = field(default_factory=dict)  # its folder's results.json before this attempt
    runs_ended: bool = False  # its logger runs are finished
    global_step: int = 0  # where training ended: its test metrics are logged at this step and epoch
    epoch: int = 0
    start: float = field(default_factory=time.time)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.paths.output_dir)


def prepare_member(cfg: DictConfig, locks: ExitStack) -> Member:
    """As a single run starts: check the settings, refuse a folder with a run in it, load the data, write the noisy
    labels and results.json (running), build the callbacks. Takes the folder's lock into ``locks``. Raises where the
    job must run alone."""
    from hydra.core.hydra_config import HydraConfig

    from adaptive_ls.config import build_run
    from adaptive_ls.errors import OutputDirError
    from adaptive_ls.jsonio import read_json, write_json
    from adaptive_ls.resume import plan_resume
    from adaptive_ls.run_lock import run_lock
    from adaptive_ls.train import initial_results, instantiate_callbacks, load_data, write_noise_artifacts

    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # its ${hydra:...} values: the stack trains after Hydra has left this job
    output_dir = Path(cfg.paths.output_dir)
    locks.enter_context(run_lock(output_dir))
    datamodule, module = build_run(cfg)
    if plan_resume(cfg) is not None:
        raise OutputDirError(f"paths.output_dir={output_dir} holds an interrupted run: it resumes alone")
    previous = read_json(output_dir / "results.json") if (output_dir / "results.json").is_file() else {}
    results = initial_results(cfg, datamodule)
    callbacks = instantiate_callbacks(cfg)
    results.update(load_data(cfg, datamodule))
    write_noise_artifacts(output_dir, datamodule)
    write_json(output_dir / "results.json", results)
    hydra_cfg = HydraConfig.instance().cfg if HydraConfig.initialized() else None
    return Member(cfg, datamodule, module, results, callbacks, hydra_cfg, previous=previous)


def stacked_classifier(members: Sequence[Member], execution: str = "auto"):
    """The members' LabelSmoothingClassifiers as one StackedClassifier: their nets and policies, the first's
    optimizer, schedule and options (the same for all: their configs differ only in MEMBER_KEYS)."""
    from adaptive_ls.stacking import StackedClassifier, StackedNet

    first = members[0].module
    return StackedClassifier(
        StackedNet([m.module.net for m in members], execution), [m.module.smoothing for m in members],
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


class MemberLogger(Logger):
    """One member's logger inside a stack. The stack logs each member's metrics under ``<name>/``; the member's own
    logger (its CSV or W&B logger, built from its config) gets only its member's, named as its single run names
    them, and the keys no member owns (``epoch``). Nothing once the member has failed."""

    def __init__(self, logger: Logger, name: str, names: Sequence[str], failed: Callable[[], bool]):
        super().__init__()
        self.logger, self.prefix, self.failed = logger, f"{name}/", failed
        self.others = tuple(f"{other}/" for other in names if other != name)

    @property
    def name(self):
        return self.logger.name

    @property
    def version(self):
        return self.logger.version

    @property
    def save_dir(self):
        return self.logger.save_dir

    @property
    def log_dir(self):
        return getattr(self.logger, "log_dir", self.logger.save_dir)

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        if self.failed() or not any(key.startswith(self.prefix) for key in metrics):
            return
        own = {key[len(self.prefix):] if key.startswith(self.prefix) else key: value
               for key, value in metrics.items() if not key.startswith(self.others)}
        self.logger.log_metrics(own, step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the member's own job config went in when its loggers were built (member_loggers)

    def save(self) -> None:
        self.logger.save()

    def finalize(self, status: str) -> None:
        self.logger.finalize(status)


def member_loggers(member: "Member") -> list:
    """The member's loggers as its single run builds them (its W&B run starts here), its config logged to them."""
    from adaptive_ls.config import instantiate_group
    from adaptive_ls.train import job_config

    with member_hydra(member):
        loggers = list(instantiate_group(member.cfg, "logger").values())
        for logger in loggers:
            logger.log_hyperparams(job_config(member.cfg))
    return loggers


@contextmanager
def member_hydra(member: "Member") -> Iterator[None]:
    """Hydra's view of the member's own job (its number, its sweep), as when it was prepared: its W&B run is named
    and grouped, and its config logged, as its single run's."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous, instance.cfg = instance.cfg, member.hydra if member.hydra is not None else instance.cfg
    try:
        yield
    finally:
        instance.cfg = previous


def member_checkpoint(stack_checkpoint: dict, stack, index: int, member: "Member", history: list[dict],
                      callbacks: Sequence[Callback]) -> dict:
    """Member ``index``'s Lightning checkpoint as its single run's trainer writes it, cut from the stack's: its
    weights and policy state, its slices of the optimizer state (elementwise, so a single job's), the loops and
    schedule (the members step together), the states of its checkpoint and history callbacks, and its settings for
    :func:`~adaptive_ls.resume.plan_resume`."""
    from adaptive_ls.resume import RunState

    size = stack.num_members

    def own(value):
        return value[index].clone() if isinstance(value, Tensor) and value.ndim and value.shape[0] == size else value

    checkpoint = {key: stack_checkpoint[key] for key in ("epoch", "global_step", "pytorch-lightning_version", "loops",
                                                         "lr_schedulers") if key in stack_checkpoint}
    checkpoint["state_dict"] = stack.member_state_dict(index)
    checkpoint["optimizer_states"] = [
        {"state": {i: {k: own(v) for k, v in state.items()} for i, state in optimizer["state"].items()},
         "param_groups": copy.deepcopy(optimizer["param_groups"])}
        for optimizer in stack_checkpoint["optimizer_states"]]
    module = member.module
    if module.hparams:
        checkpoint.update(hparams_name=getattr(module, "_hparams_name", "kwargs"),
                          hyper_parameters=dict(module.hparams))
    history_callback = EpochHistory()
    history_callback.history = history
    checkpoint["callbacks"] = {cb.state_key: cb.state_dict() for cb in (*callbacks, history_callback)}
    RunState(OmegaConf.to_container(member.cfg, resolve=True), member.results["noise/labels_hash"]) \
        .on_save_checkpoint(None, None, checkpoint)
    return checkpoint


class MemberCheckpoints(Callback):
    """Each member's checkpoints as its single run's ``callbacks.best_checkpoint`` and ``last_checkpoint`` write them:
    ``best-epoch<E>.ckpt`` when the member's monitored metric improved (after the epoch's validation; a tie keeps
    the earlier epoch; the previous best is removed, as ``save_top_k: 1``), and ``last.ckpt`` after the last epoch
    only: a job folder with a last.ckpt and no completed results is an interrupted single run (it continues alone),
    while an interrupted stack continues from its own checkpoint.
    Each file is a single job's Lightning checkpoint (:func:`member_checkpoint`): it loads into the member's
    LabelSmoothingClassifier, tests, and continues as that job. The member's ModelCheckpoint callbacks, built from
    its config, hold the paths and scores, so the single run's code tests the best one."""

    def __init__(self, members: Sequence["Member"], history):
        from pytorch_lightning.callbacks import ModelCheckpoint

        self.members, self.history = list(members), history
        self.checkpoints = [[cb for cb in m.callbacks if isinstance(cb, ModelCheckpoint)] for m in self.members]

    def state_dict(self) -> dict:
        return {"members": [[cb.state_dict() for cb in checkpoints] for checkpoints in self.checkpoints]}

    def load_state_dict(self, state_dict: dict) -> None:
        for checkpoints, states in zip(self.checkpoints, state_dict["members"]):
            for cb, state in zip(checkpoints, states):
                cb.load_state_dict(state)

    def on_train_epoch_end(self, trainer, stack) -> None:
        improved, last = [], final_epoch(trainer)
        for i, (name, checkpoints) in enumerate(zip(stack.names, self.checkpoints)):
            for cb in checkpoints:
                value = trainer.callback_metrics.get(f"{name}/{cb.monitor}") if cb.monitor else None
                if value is not None and not bool(stack.failed[i]) and better(cb, float(value)):
                    improved.append((i, cb, float(value)))
        if not improved and not last:
            return
        stack_checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        writes = []  # (member, path, file to remove): each callback's state set first, as ModelCheckpoint does
        for i, cb, value in improved:
            previous = cb.best_model_path
            metrics = {"epoch": trainer.current_epoch, "step": trainer.global_step, cb.monitor: value}
            path, score = Path(cb.format_checkpoint_name(metrics)), torch.tensor(value)
            cb.best_model_path, cb.best_model_score, cb.current_score = str(path), score, score
            cb.best_k_models, cb.kth_best_model_path, cb.kth_value = {str(path): score}, str(path), score
            writes.append((i, path, previous if previous and previous != str(path) else None))
        for i, checkpoints in enumerate(self.checkpoints):  # last.ckpt after the last epoch (none for a failed one)
            for cb in (c for c in checkpoints if last and c.monitor is None and not bool(stack.failed[i])):
                path = Path(cb.format_checkpoint_name({"epoch": trainer.current_epoch, "step": trainer.global_step}))
                cb.best_model_path = cb.last_model_path = str(path)
                writes.append((i, path, None))
        for i, path, stale in writes:
            path.parent.mkdir(parents=True, exist_ok=True)
            history = member_history(self.history.history, stack.names[i])
            trainer.strategy.checkpoint_io.save_checkpoint(  # the trainer's (atomic) writer, as ModelCheckpoint's
                member_checkpoint(stack_checkpoint, stack, i, self.members[i], history, self.checkpoints[i]), path)
            if stale is not None:
                Path(stale).unlink(missing_ok=True)


def final_epoch(trainer) -> bool:
    """Whether the epoch ending now is the fit's last (``max_epochs`` or ``max_steps`` reached)."""
    by_steps = 0 < (trainer.max_steps or -1) <= trainer.global_step
    return trainer.current_epoch + 1 >= (trainer.max_epochs or math.inf) or by_steps


def better(checkpoint, value: float) -> bool:
    """Whether ``value`` of ``checkpoint``'s monitor beats its best so far (a tie keeps the earlier epoch)."""
    if not math.isfinite(value):
        return False
    best = checkpoint.best_model_score
    if best is None or not checkpoint.best_model_path:
        return True
    return value > float(best) if checkpoint.mode == "max" else value < float(best)


class MemberFailures(Callback):
    """A member whose training loss turns NaN/inf fails alone, as its single run's NaN guard would stop it: flagged
    on the device at each step (no host sync), read once per epoch before the epoch's checkpoints; the member is
    then dropped from the stack's loss, logs and checkpoints, its results.json says failed and its logger runs end.
    The others train on unharmed (each member's gradient is its own)."""

    def __init__(self, members: Sequence["Member"], history):
        self.members, self.history = list(members), history
        self._bad: Optional[Tensor] = None

    def on_train_epoch_start(self, trainer, stack) -> None:
        self._bad = torch.zeros(stack.num_members, dtype=torch.bool, device=stack.device)

    def on_train_batch_end(self, trainer, stack, outputs, batch, batch_idx: int) -> None:
        if outputs is not None and self._bad is not None:
            losses = torch.stack([output["loss"] for output in outputs["members"]])
            self._bad |= ~torch.isfinite(losses)

    def on_train_epoch_end(self, trainer, stack) -> None:
        from adaptive_ls.train import history_results

        if self._bad is None:
            return
        newly = (self._bad & ~stack.failed).nonzero().flatten().tolist()  # the one host sync, once per epoch
        for i in newly:
            stack.failed[i] = True
            error = NonFiniteLossError(f"the training loss became NaN/inf in epoch {trainer.current_epoch} (a "
                                       f"stack member: the others went on); try a lower optimizer.lr")
            log.error("job %s failed: %s", self.members[i].output_dir, error)
            self.members[i].results.update(history_results(member_history(self.history.history, stack.names[i])))
            fail_member(self.members[i], error)


def member_diagnostics(members: Sequence[Member], names: Sequence[str]) -> list:
    """Each member's noise diagnostics, its own callback (none where ``callbacks.diagnostics`` is null)."""
    from adaptive_ls.diagnostics import NoiseDiagnostics

    return [MemberDiagnostics(cb, member.datamodule, name) for member, name in zip(members, names)
            for cb in member.callbacks if isinstance(cb, NoiseDiagnostics)]


def member_trainer(member: "Member"):
    """The member's own Trainer for its tests, as its single run's after fitting: its callbacks (checkpoints with
    their paths, W&B media) and loggers, its logged step where the stack's training ended."""
    trainer = hydra.utils.instantiate(member.cfg.trainer, callbacks=member.callbacks, logger=member.loggers or False)
    trainer.fit_loop.epoch_loop._batches_that_stepped = member.global_step  # the step and epoch test metrics are
    trainer.fit_loop.epoch_progress.current.completed = member.epoch  # logged at, as after the single run's fit
    return trainer


def stack_identity(members: Sequence[Member]) -> dict[str, Any]:
    """What a stack checkpoint belongs to: the members' folders, resolved configs and noisy labels, in order."""
    return {"members": [str(m.output_dir) for m in members],
            "configs": [OmegaConf.to_container(m.cfg, resolve=True) for m in members],
            "labels_hashes": [m.results["noise/labels_hash"] for m in members]}


def stack_checkpointing(members: Sequence[Member]):
    """The stack's last-epoch checkpoint callback, and the checkpoint to continue from: that of an interrupted run
    of this same stack (the same members, settings equal but for those a resumed run may change), else None. A
    checkpoint of another stack, or ``resume=false`` with one there, is refused as a single run refuses its folder:
    nothing is overwritten."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from adaptive_ls.errors import OutputDirError
    from adaptive_ls.jsonio import read_json, write_json
    from adaptive_ls.resume import config_differences

    folder = members[0].output_dir / "checkpoints"
    identity, path = stack_identity(members), folder / f"{STACK_CHECKPOINT}.ckpt"
    resume = None
    if path.is_file():
        saved = read_json(folder / STACK_MARKER)
        if members[0].cfg.get("resume", "auto") is False:
            raise OutputDirError(f"resume=false but {folder} holds an interrupted stack ({path}): leave resume=auto to "
                                 f"continue it, or set hydra.sweep.dir to a new folder")
        if saved.get("members") != identity["members"]:
            raise OutputDirError(f"{path} belongs to a stack of other jobs ({saved.get('members')}): run the sweep "
                                 f"with its jobs and hydra.launcher.max_members to continue it, or set "
                                 f"hydra.sweep.dir to a new folder")
        differences = [f"job {i}: {d}" for i, (old, new) in enumerate(zip(saved["configs"], identity["configs"]))
                       for d in config_differences(old, new)]
        if differences:
            raise OutputDirError(f"{path} holds an interrupted stack with other settings ({'; '.join(differences)}): "
                                 f"re-run with its settings to continue it, or set hydra.sweep.dir to a new folder")
        changed = [f"job {i} ({member.output_dir}): hash {new}, trained on {old}" for i, (member, old, new)
                   in enumerate(zip(members, saved.get("labels_hashes", identity["labels_hashes"]),
                                                           identity["labels_hashes"])) if old != new]
        if changed:  # e.g. a changed label file: the same settings, other labels
            raise OutputDirError(f"{path} holds an interrupted stack trained on other noisy labels ({'; '.join(changed)}"
                                 f", see each job's noisy_labels.npy): check noise.* and noise_seed, or set "
                                 f"hydra.sweep.dir to a new folder")
        resume = path
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / STACK_MARKER, identity)
    last = ModelCheckpoint(dirpath=folder, filename=STACK_CHECKPOINT, monitor=None, save_top_k=1,
                           enable_version_counter=False, every_n_epochs=1, save_on_train_epoch_end=True)
    return last, resume


def member_history(history: list[dict], name: str) -> list[dict]:
    """One member's rows of the stack's history, named as its single run names them."""
    from adaptive_ls.stacking import member_metrics

    return [{"epoch": row["epoch"], **member_metrics(row, name)} for row in history]


STOPPED = ("failed", "interrupted", "preempted")  # a results.json status that ends a member's part in the stack


def finish_member(member: Member, stack, index: int, history: list[dict], names: list[str]) -> dict[str, Any]:
    """Member ``index``'s results as its single run's: the stack's history of it, then its own module loaded with
    its trained state, tested, calibrated and its best checkpoint tested by the single run's code, with its own
    trainer and loggers; writes results.json and the stack marker, and ends its logger runs. A failure here fails
    this member alone (recorded, then raised)."""
    from adaptive_ls.jsonio import write_json
    from adaptive_ls.train import fit_results, history_results, test_results

    write_json(member.output_dir / STACK_MARKER, {"index": index, "members": names})
    if member.results.get("status") in STOPPED:  # failed in training: recorded then
        return member.results
    if bool(stack.failed[index]):  # failed before the stack was interrupted and continued
        if member.previous.get("status") == "failed":  # its record from then, as it was
            member.results = dict(member.previous)
            write_json(member.output_dir / "results.json", member.results)
            end_runs(member, NonFiniteLossError(member.results.get("error", "")), failed=True)
        else:
            fail_member(member, NonFiniteLossError("the training loss became NaN/inf in the stack"))
        return member.results
    results = member.results
    try:
        results.update(history_results(member_history(history, stack.names[index])))
        member.module.load_state_dict(stack.member_state_dict(index))
        trainer = member_trainer(member)
        results.update({key: value for key, value in fit_results(trainer).items() if key != "history"})
        results.update(test_results(trainer, member.module, member.datamodule, member.cfg.get("test_best", True),
                                    member.output_dir))
        results.update(status="completed", wall_time_s=time.time() - member.start)
        write_json(member.output_dir / "results.json", results)
    except BaseException as error:
        fail_member(member, error)
        raise
    end_runs(member)
    return results


def end_runs(member: Member, error: Optional[BaseException] = None, failed: bool = False) -> None:
    """End the member's logger runs once (the single run's :func:`adaptive_ls.loggers.finishing`): with ``error``
    as the job's outcome where ``failed``, else as a clean end (a job that then runs alone continues its runs)."""
    from adaptive_ls.loggers import finishing

    if member.runs_ended:
        return
    member.runs_ended = True
    try:
        with finishing(member.loggers, member.results, member.output_dir / "results.json"):
            if failed and error is not None:
                raise error
    except BaseException as raised:
        if raised is not error:
            raise


def fail_member(member: Member, error: BaseException) -> None:
    """Record the member failed (or interrupted) in its results.json, as its single run's entry point records it,
    and end its logger runs with that outcome; once."""
    from adaptive_ls.cli import record_failure
    from adaptive_ls.jsonio import read_json, write_json

    if member.results.get("status") in STOPPED:
        return
    write_json(member.output_dir / "results.json", member.results)  # what it had measured
    with member_hydra(member):  # how to continue it names its own sweep
        record_failure(member.cfg, error)
    member.results.update(read_json(member.output_dir / "results.json"))
    end_runs(member, error, failed=True)


class StackHistory(EpochHistory):
    """The stack's :class:`~adaptive_ls.callbacks.EpochHistory`: a member's ``val/`` and ``test/`` keys (under its
    name) are left out of an epoch that did not measure them, as a single run's are."""

    def __init__(self, names: Sequence[str]):
        super().__init__()
        self.names = list(names)

    def _stale_prefixes(self, trainer) -> tuple[str, ...]:
        stale = super()._stale_prefixes(trainer)
        return (*stale, *(f"{name}/{prefix}" for name in self.names for prefix in stale
                          if prefix in ("val/", "test/")))


def train_stack(members: Sequence[Member], execution: str = "auto") -> list[dict[str, Any]]:
    """Train the members as one stack (``execution``: :class:`~adaptive_ls.stacking.StackedNet`'s) and write each
    one's folder; returns their results, in order. A member that fails in its tests fails alone."""
    from adaptive_ls.callbacks import StopOnSignal
    from adaptive_ls.errors import one_line
    from adaptive_ls.resume import keep_previous_logs, read_run_state
    from adaptive_ls.stacking import StackedDataModule

    try:
        stack = stacked_classifier(members, execution)
    except (ValueError, TypeError) as error:
        raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
    last, resume = stack_checkpointing(members)
    epoch = read_run_state(resume)["epoch"] if resume else None
    for member in members:
        member.loggers = member_loggers(member)
        if resume:
            keep_previous_logs(member.loggers, epoch)
            member.results.update({"resumed_from_epoch": epoch, "checkpoint/resumed_from": str(resume)})
    history = StackHistory(stack.names)
    checkpoints, failures = MemberCheckpoints(members, history), MemberFailures(members, history)
    callbacks = [*member_diagnostics(members, stack.names), history, failures, checkpoints, last, StopOnSignal()]
    loggers = [MemberLogger(logger, name, stack.names, lambda i=i: bool(stack.failed[i]))
               for i, (member, name) in enumerate(zip(members, stack.names)) for logger in member.loggers]
    trainer = hydra.utils.instantiate(members[0].cfg.trainer, callbacks=callbacks, logger=loggers or False)
    with member_logs(members):
        log.info("training %d jobs as one stack: %s%s", len(members), ", ".join(str(m.output_dir) for m in members),
                 f" (continuing from {resume})" if resume else "")
        try:
            with warnings.catch_warnings():  # the first member's checkpoints/ holds the stack's marker from the start
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                trainer.fit(stack, datamodule=StackedDataModule([m.datamodule for m in members]), ckpt_path=resume)
        except StackRefused:
            raise
        except BaseException as error:
            if trainer.global_step == 0 and resume is None and isinstance(error, Exception):
                for member in members:  # nothing trained yet: the members can still run alone, continuing these runs
                    end_runs(member)
                    member.runs_ended, member.loggers = False, []
                raise StackRefused(f"{type(error).__name__}: {one_line(error)}") from error
            for member in members:
                fail_member(member, error)
            raise
        names = [str(m.output_dir) for m in members]
        results = []
        for i, member in enumerate(members):
            member.global_step, member.epoch = trainer.global_step, trainer.current_epoch
            try:
                results.append(finish_member(member, stack, i, history.history, names))
            except Exception:  # recorded in its results.json and its runs; the others still finish
                log.exception("job %s failed in its tests; the other jobs of the stack go on", member.output_dir)
                results.append(member.results)
    if all(r.get("status") == "completed" for r in results):  # the members' own checkpoints hold it all now
        (members[0].output_dir / "checkpoints" / f"{STACK_CHECKPOINT}.ckpt").unlink(missing_ok=True)
    return results


@contextmanager
def member_logs(members: Sequence[Member]) -> Iterator[None]:
    """The stack's log lines (training, tests, results, failures) also in each member's own job log (``<job
    name>.log`` in its folder, where Hydra wrote its preparation), as a single run's are."""
    root, handlers = logging.getLogger(), []
    for member in members:
        name = OmegaConf.select(member.hydra, "hydra.job.name", default=None) if member.hydra is not None else None
        if name:  # in the format of Hydra's own job log (hydra.job_logging)
            form = OmegaConf.select(member.hydra, "hydra.job_logging.formatters.simple.format", default=None)
            handler = logging.FileHandler(member.output_dir / f"{name}.log")
            handler.setFormatter(logging.Formatter(form))
            handlers.append(handler)
            root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def record_stack_failure(members: Sequence[Member], error: BaseException) -> None:
    """Mark every member of a stack that failed as failed in its results.json, keeping what it had measured."""
    for member in members:
        fail_member(member, error)
