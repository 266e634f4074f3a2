"""``hydra/launcher=stacked``: the jobs of a multirun that differ only in ``seed``, ``noise_seed``, ``noise.*`` and
``smoothing.*`` are trained as one stacked model (adaptive_ls.stacked_run), up to ``max_members`` a stack.

Every job still gets its own folder with what its single run writes there (``.hydra/``, ``noisy_labels.npy``,
``results.json``, its CSV log and W&B run, its checkpoints), and the sweeper gets each job's ``optimized_metric``. A
job alone in its group, or one a stack refuses (DDP, ``module.compile``, a folder holding an interrupted run, a
setting that fails its check), runs as the basic launcher runs it, after one log line saying why. A signal stops
the sweep as it stops a job's. Torch loads only when a stack is launched: Hydra imports this module on every start.
"""

import logging
import math
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.adaptive_ls_stacked.stacked_launcher.StackedLauncher"
    max_members: Optional[int] = None  # jobs per stack at most; null: all the jobs that can share one
    execution: str = "auto"  # auto (loop on a CPU, vmap on an accelerator) | vmap | loop: adaptive_ls.stacking.StackedNet


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf)


def check_max_members(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"hydra.launcher.max_members={value!r}: allowed is null (all) or an integer >= 1")
    return value


EXECUTIONS = ("auto", "vmap", "loop")  # adaptive_ls.stacking.EXECUTIONS, without importing torch here


def check_execution(value: Any) -> str:
    if value not in EXECUTIONS:
        raise ValueError(f"hydra.launcher.execution={value!r}: allowed are {', '.join(EXECUTIONS)}")
    return value


def prepared_or_error(prepare, cfg: DictConfig, locks: ExitStack) -> Any:
    """The prepared member, or the error that keeps the job out of the stack (it then runs alone and reports it)."""
    try:
        return prepare(cfg, locks)
    except Exception as error:
        return error


class StackedLauncher(Launcher):
    """Composes every job's config, groups the stackable ones and runs each group as one training."""

    def __init__(self, max_members: Optional[int] = None, execution: str = "auto") -> None:
        self.max_members = check_max_members(max_members)
        self.execution = check_execution(execution)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def job_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        """Job ``idx``'s composed config, numbered as the basic launcher numbers it."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return sweep_config

    def run_alone(self, sweep_config: DictConfig) -> JobReturn:
        """One job as the basic launcher runs it."""
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from adaptive_ls.stacked_run import group_jobs, stack_key, stack_refusal

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        configs = [self.job_config(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        refusals = [stack_refusal(c) for c in configs]
        groups = group_jobs([None if r else stack_key(c) for c, r in zip(configs, refusals)], self.max_members)
        log.info("Launching %d jobs in %d group(s) of stackable jobs", len(configs), len(groups))
        runs: dict[int, JobReturn] = {}
        alone = (f"no other job left to stack it with (jobs differing only in seeds, noise and smoothing, at most "
                 f"max_members={self.max_members} a stack)")
        for group in groups:
            if len(group) == 1:
                i = group[0]
                log.info("job #%d runs alone: %s", initial_job_idx + i, refusals[i] or alone)
                runs[i] = self.run_alone(configs[i])
                continue
            log.info("stack of %d (%s): %s", len(group), ", ".join(f"#{initial_job_idx + i}" for i in group),
                     " | ".join(" ".join(filter_overrides(job_overrides[i])) for i in group))
            runs.update(zip(group, self.run_stack([configs[i] for i in group])))
        return [runs[i] for i in range(len(configs))]

    def run_stack(self, configs: list[DictConfig]) -> list[JobReturn]:
        """Prepare each job in its folder, train the prepared ones as one stack, run the others alone."""
        from adaptive_ls.stacked_run import StackRefused, prepare_member, record_stack_failure, train_stack

        prepared: dict[int, tuple[JobReturn, Any]] = {}
        locks: dict[int, ExitStack] = {}
        alone: list[int] = []
        for i, sweep_config in enumerate(configs):
            locks[i] = ExitStack()
            ret = run_job(hydra_context=self.hydra_context, config=sweep_config,
                          task_function=lambda cfg, held=locks[i]: prepared_or_error(prepare_member, cfg, held),
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
            if ret.status == JobStatus.COMPLETED and not isinstance(ret.return_value, BaseException):
                prepared[i] = (ret, ret.return_value)
            else:
                log.info("job #%s runs alone: %s", sweep_config.hydra.job.num,
                         ret.return_value if ret.status == JobStatus.COMPLETED else "it failed to start")
                alone.append(i)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if len(prepared) == 1:
            i = next(iter(prepared))
            log.info("job #%s runs alone: the other jobs of its stack could not be stacked", configs[i].hydra.job.num)
            prepared, alone = {}, sorted([*alone, i])
        for i in alone:
            locks[i].close()
        returns: dict[int, JobReturn] = {}
        try:  # the stack first: its members are prepared (their data loaded, their clocks started)
            if prepared:  # Hydra's config is a job of this sweep while it trains (how to continue it, its sweeper)
                HydraConfig.instance().set_config(configs[next(iter(prepared))])
                members = [member for _, member in prepared.values()]
                train = partial(train_stack, execution=self.execution)
                returns.update(self.train_prepared(prepared, members, record_stack_failure, train))
        except StackRefused as refusal:
            log.info("jobs %s run alone: they cannot train as one stack (%s)",
                     ", ".join(f"#{configs[i].hydra.job.num}" for i in prepared), refusal)
            for i in prepared:
                locks[i].close()
            alone = sorted([*alone, *prepared])
        finally:
            for lock in locks.values():
                lock.close()
        returns.update({i: self.run_alone(configs[i]) for i in alone})
        return [returns[i] for i in range(len(configs))]

    def train_prepared(self, prepared: dict, members: list, record_failure, train) -> dict[int, JobReturn]:
        """Train the prepared members; each JobReturn gets its job's ``optimized_metric`` (NaN for a failed job)."""
        from adaptive_ls.errors import JobInterrupted
        from adaptive_ls.stacked_run import StackRefused

        try:
            results = train(members)
        except StackRefused:
            raise
        except JobInterrupted as interrupted:  # every member is recorded interrupted: the sweep stops, as for a job
            self.stop(members[0], interrupted)
        except Exception as error:
            log.error("stack failed (recorded in each job's results.json); the sweep goes on", exc_info=error)
            record_failure(members, error)
            results = [{} for _ in members]
        returns = {}
        for (i, (ret, member)), result in zip(prepared.items(), results):
            if result.get("status") != "completed" and self.marks_failures(member):
                # Optuna: a failed trial, as a single job's raised error is (told NaN, optuna 2.10 ends the study)
                ret.status = JobStatus.FAILED
                ret.return_value = RuntimeError(result.get("error") or "the job failed in its stack")
            else:
                ret.status = JobStatus.COMPLETED
                ret.return_value = result.get(member.job.cfg.get("optimized_metric", "val/acc_best"), math.nan)
            returns[i] = ret
        return returns

    @staticmethod
    def marks_failures(member) -> bool:
        """Whether the sweep's sweeper takes a failed job as a failed trial (Optuna) rather than a NaN value."""
        from adaptive_ls.sweeps import sweeper_marks_failures

        return sweeper_marks_failures()

    @staticmethod
    def stop(member, interrupted) -> None:
        """End the sweep as a job a signal stopped ends it: one line naming the jobs done and the command that
        continues the sweep, exit code 128 + the signal."""
        import sys

        from adaptive_ls.sweeps import stop_summary

        line = stop_summary(interrupted.signal.name, interrupted.status)  # Hydra's config: a job of this sweep
        log.warning(line)
        print(line, file=sys.stderr)
        raise SystemExit(interrupted.exit_code) from None
