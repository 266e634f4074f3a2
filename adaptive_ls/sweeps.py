"""Sweep helpers: "job i of n" as each job of a multirun starts, the line that says how to continue a stopped sweep,
and the per-policy search space of ``tune_eps``.

Both plug into Hydra's own machinery: :class:`SweepProgress` is a Hydra callback (``conf/hydra/default.yaml``) and
:func:`policy_search_space` is the Optuna sweeper's ``custom_search_space`` hook (``conf/experiment/tune_eps.yaml``).
Nothing here imports torch, so Hydra starts as fast as before.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Where this job runs
# ---------------------------------------------------------------------------------------------------------------------


def is_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def is_global_zero() -> bool:
    """Whether this process writes the job's files (results, W&B, the folder's lock): the only one, or rank 0 of a
    distributed run. Lightning's rank once Lightning is loaded; before, the launcher's environment variables Lightning
    reads its rank from, so the entry point can ask before importing it."""
    if "pytorch_lightning" in sys.modules:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0
    rank = next((os.environ[key] for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
                 if key in os.environ), "0")
    return int(rank) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid_size(sweep_dir: str) -> Optional[int]:
    """Number of jobs of a basic-sweeper grid, from the ``multirun.yaml`` Hydra writes before launching them: the
    product of each key's number of values, the sweeper's ``params`` first and a later override of a key replacing an
    earlier one, as Hydra's BasicSweeper builds its grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    master = OmegaConf.load(path)
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(master, "hydra.overrides.task") or [])
    values = {override.get_key_element(): len(list(override.sweep_string_iterator()))
              if override.is_sweep_override() else 1 for override in OverridesParser.create().parse_overrides(arguments)}
    return math.prod(values.values())


def sweep_size(hydra_cfg: DictConfig) -> Optional[int]:
    """How many jobs the running sweep launches: the grid's size, Optuna's ``n_trials``; None when unknown."""
    target = str(OmegaConf.select(hydra_cfg, "sweeper._target_") or "")
    try:
        if target.endswith("BasicSweeper"):
            return _grid_size(str(hydra_cfg.sweep.dir))
        if "optuna" in target.lower():
            return int(hydra_cfg.sweeper.n_trials)
    except Exception as error:  # progress is a courtesy: never fail a job over it
        log.debug("could not size the sweep: %s", error)
    return None


def job_statuses(sweep_dir: Path) -> dict[str, str]:
    """Each started job's folder (relative to the sweep's) and the status in its results.json (``missing``: none
    yet), in job order."""
    statuses: dict[str, str] = {}
    jobs = sorted((p.parent for p in Path(sweep_dir).rglob(".hydra") if p.is_dir()),
                  key=lambda d: [int(p) if p.isdigit() else p for p in d.relative_to(sweep_dir).parts])
    for job in jobs:
        path = job / "results.json"
        try:
            status = json.loads(path.read_text()).get("status", "unknown") if path.is_file() else "missing"
        except (OSError, ValueError):
            status = "unreadable"
        statuses[str(job.relative_to(sweep_dir))] = status
    return statuses


def sweep_status(sweep_dir: Path) -> dict[str, int]:
    """Count the sweep's jobs by the status in their results.json (``missing``: no results.json yet)."""
    counts: dict[str, int] = {}
    for status in job_statuses(sweep_dir).values():
        counts[status] = counts.get(status, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# Continuing a stopped job or sweep
# ---------------------------------------------------------------------------------------------------------------------

PROGRAM = "adaptive-ls"  # the console script; `python -m adaptive_ls.train` takes the same arguments


def continue_command() -> str:
    """The command line that continues this job (``hydra.run.dir=<its folder>``) or, in a multirun, its sweep (the
    sweep's own overrides, from ``multirun.yaml``, with ``hydra.sweep.dir=<its folder>``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if is_multirun():
        master = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
        overrides = OmegaConf.select(OmegaConf.load(master), "hydra.overrides") if master.is_file() else None
        given = ([*overrides.hydra, *overrides.task] if overrides is not None
                 else [a for a in sys.argv[1:] if a not in ("-m", "--multirun")])
        where, flag = f"hydra.sweep.dir={hydra_cfg.sweep.dir}", ["-m"]
    else:
        given = [*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task]
        where, flag = f"hydra.run.dir={hydra_cfg.runtime.output_dir}", []
    kept = [str(o) for o in given if not str(o).startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.mode="))]
    return shlex.join([PROGRAM, *flag, *kept, where])


def _jobs_text(names: list[str]) -> str:
    return ("job " if len(names) == 1 else "jobs ") + ", ".join(names) if names else "none"


def stop_summary(signal_name: str, status: str = "interrupted") -> str:
    """One line for a job stopped by a signal: in a multirun which jobs are done, which stopped, how many never
    started, and the command that continues the sweep; for a single run the command that continues it."""
    from hydra.core.hydra_config import HydraConfig

    command = continue_command()
    if not is_multirun():
        return f"run {status} by {signal_name}; continue it with: {command}"
    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    statuses = job_statuses(sweep_dir)
    this_job = str(Path(str(hydra_cfg.runtime.output_dir)).relative_to(sweep_dir.resolve()))
    done = [job for job, s in statuses.items() if s in ("completed", "failed")]
    failed = [job for job, s in statuses.items() if s == "failed"]
    stopped = [job for job, s in statuses.items() if s == status or job == this_job]  # a stack stops all its jobs
    unfinished = [job for job in statuses if job not in (*done, *stopped)]  # other launchers: still running
    total = sweep_size(hydra_cfg)
    parts = [f"done: {_jobs_text(done)}" + (f" ({len(failed)} failed)" if failed else ""),
             f"{status}: {_jobs_text(stopped or [this_job])}"]
    if unfinished:
        parts.append(f"unfinished: {_jobs_text(unfinished)}")
    if total:
        parts.append(f"not started: {max(total - len(statuses), 0)} of {total}")
    return f"sweep stopped by {signal_name}: {'; '.join(parts)}; continue it with: {command}"


FAILED_JOBS: set[str] = set()  # jobs of the running sweep that failed or were refused in this process


def note_failed_job() -> None:
    """Count the running job of a multirun as failed (it may have had no folder of its own to record it in)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    output_dir, sweep_dir = Path(str(hydra_cfg.runtime.output_dir)), Path(str(hydra_cfg.sweep.dir)).resolve()
    try:
        FAILED_JOBS.add(str(output_dir.relative_to(sweep_dir)))
    except ValueError:
        FAILED_JOBS.add(str(output_dir))


def sweeper_marks_failures() -> bool:
    """Whether the running sweeper records a job's exception as a failed trial and goes on (Optuna does, within
    ``max_failure_rate``); grid sweepers are given NaN instead, so the sweep finishes. (optuna 2.10 aborts a study
    told NaN, so an Optuna trial must fail by raising.)"""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return "optuna" in str(OmegaConf.select(HydraConfig.get(), "sweeper._target_") or "").lower()


class SweepProgress(Callback):
    """Logs "job i of n" as each job of a multirun starts, and a summary with the report command at the end."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not is_multirun():
            return
        hydra_cfg = HydraConfig.get()
        total = sweep_size(hydra_cfg)
        overrides = " ".join(hydra_cfg.overrides.task)
        log.info("job %d of %s: %s -> %s", hydra_cfg.job.num + 1, total if total else "?", overrides or "(defaults)",
                 hydra_cfg.runtime.output_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The summary; then, when a job failed or was refused, one line naming them and exit code 1, so a script
        or a scheduler sees it (the other jobs have finished)."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = job_statuses(sweep_dir)
        counts = sweep_status(sweep_dir)
        total = sum(counts.values())
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
        log.info("sweep finished: %d jobs (%s). Table and plots: adaptive-ls-report %s", total, summary, sweep_dir)
        failed = sorted({*FAILED_JOBS, *(job for job, status in statuses.items() if status == "failed")},
                        key=lambda job: [int(p) if p.isdigit() else p for p in Path(job).parts])
        FAILED_JOBS.clear()
        if failed:
            line = (f"sweep finished with {len(failed)} of {max(total, len(failed))} jobs failed or refused "
                    f"({_jobs_text(failed)}): each job's train.log and results.json say why")
            log.error(line)
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(1)


# ---------------------------------------------------------------------------------------------------------------------
# Optuna search space per policy
# ---------------------------------------------------------------------------------------------------------------------


def search_distributions(arguments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Optuna distributions of the sweep overrides among ``arguments`` (``key=interval(a, b)``, ``choice(...)``,
    ``range(...)``, ``tag(log, ...)``), and the plain values, as the Hydra Optuna sweeper reads its own ``params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Transformer
    from optuna import distributions as d

    distributions: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        name, value = override.get_key_element(), override.value()
        if not override.is_sweep_override():
            fixed[name] = override.get_value_element_as_str()
        elif override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
            distributions[name] = d.CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
        elif override.is_range_sweep():
            if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
                distributions[name] = d.DiscreteUniformDistribution(value.start, value.stop, value.step)
            else:
                distributions[name] = d.IntUniformDistribution(int(value.start), int(value.stop), step=int(value.step))
        elif override.is_interval_sweep():
            integers = isinstance(value.start, int) and isinstance(value.end, int)
            if "log" in value.tags:
                distributions[name] = (d.IntLogUniformDistribution(int(value.start), int(value.end)) if integers
                                       else d.LogUniformDistribution(value.start, value.end))
            else:
                distributions[name] = (d.IntUniformDistribution(value.start, value.end) if integers
                                       else d.UniformDistribution(value.start, value.end))
        else:
            raise ValueError(f"{override.input_line}: not a sweep Optuna can search (choice, range or interval)")
    return distributions, fixed


def _suggest(trial, name: str, distribution) -> Any:
    """Ask ``trial`` for ``name`` from one of the distributions the Hydra Optuna plugin parses sweep syntax into."""
    from optuna import distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, d.IntLogUniformDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, log=True)
    if isinstance(distribution, d.IntUniformDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step)
    if isinstance(distribution, d.LogUniformDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, log=True)
    if isinstance(distribution, d.DiscreteUniformDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.q)
    if isinstance(distribution, d.UniformDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high)
    raise TypeError(f"{name}: unsupported distribution {distribution!r}")


def policy_search_space(cfg: DictConfig, trial) -> None:
    """Optuna ``custom_search_space``: suggest ``smoothing.<name>`` for each entry of ``search_space.<chosen policy>``.

    One experiment then tunes whichever policy is chosen (``smoothing=annealed`` tunes its schedule), with the ranges
    in the experiment's yaml written in Hydra's sweep syntax (``interval(a, b)``, ``choice(a, b)``, ``tag(log, ...)``).
    """
    policy = OmegaConf.select(cfg, "hydra.runtime.choices.smoothing")
    spaces = cfg.get("search_space") or {}
    if policy not in spaces:
        covered = ", ".join(spaces) or "nothing"
        raise ValueError(f"search_space has no entry for smoothing={policy}: it covers {covered}. Add "
                         f"search_space.{policy} (parameter: range) to the experiment config")
    arguments = [f"smoothing.{key}={value}" for key, value in spaces[policy].items()]
    distributions, fixed = search_distributions(arguments)
    if fixed:
        raise ValueError(f"search_space.{policy}: {', '.join(f'{k}={v}' for k, v in fixed.items())} is a single "
                         f"value, not a range; set fixed values in the experiment config instead")
    for name, distribution in distributions.items():
        _suggest(trial, name, distribution)
