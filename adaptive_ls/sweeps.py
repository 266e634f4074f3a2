"""Sweep helpers: "job i of n" as each job of a multirun starts, and the per-policy search space of ``tune_eps``.

Both plug into Hydra's own machinery: :class:`SweepProgress` is a Hydra callback (``conf/hydra/default.yaml``) and
:func:`policy_search_space` is the Optuna sweeper's ``custom_search_space`` hook (``conf/experiment/tune_eps.yaml``).
Nothing here imports torch, so Hydra starts as fast as before.
"""
from __future__ import annotations

import functools
import json
import logging
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
    """Whether this process writes the job's files (results, W&B): the only one, or rank 0 of a distributed run
    (Lightning's rank, read from the launcher's environment before the Trainer exists)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _grid_size(sweep_dir: str) -> Optional[int]:
    """Number of jobs of a basic-sweeper grid, from the ``multirun.yaml`` Hydra writes before launching them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    master = OmegaConf.load(path)
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(OmegaConf.select(master, "hydra.overrides.task") or [])
    overrides = OverridesParser.create().parse_overrides(arguments)
    return len(BasicSweeper.split_arguments(overrides, None)[0])


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


def sweep_status(sweep_dir: Path) -> dict[str, int]:
    """Count the sweep's jobs by the status in their results.json (``missing``: no results.json yet)."""
    counts: dict[str, int] = {}
    for job in sorted(p.parent for p in sweep_dir.rglob(".hydra") if p.is_dir()):
        path = job / "results.json"
        try:
            status = json.loads(path.read_text()).get("status", "unknown") if path.is_file() else "missing"
        except (OSError, ValueError):
            status = "unreadable"
        counts[status] = counts.get(status, 0) + 1
    return counts


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
        sweep_dir = Path(str(config.hydra.sweep.dir))
        counts = sweep_status(sweep_dir)
        total = sum(counts.values())
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
        log.info("sweep finished: %d jobs (%s). Table and plots: adaptive-ls-report %s", total, summary, sweep_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Optuna search space per policy
# ---------------------------------------------------------------------------------------------------------------------


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
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    policy = OmegaConf.select(cfg, "hydra.runtime.choices.smoothing")
    spaces = cfg.get("search_space") or {}
    if policy not in spaces:
        covered = ", ".join(spaces) or "nothing"
        raise ValueError(f"search_space has no entry for smoothing={policy}: it covers {covered}. Add "
                         f"search_space.{policy} (parameter: range) to the experiment config")
    arguments = [f"smoothing.{key}={value}" for key, value in spaces[policy].items()]
    distributions, fixed = create_params_from_overrides(arguments)
    if fixed:
        raise ValueError(f"search_space.{policy}: {', '.join(f'{k}={v}' for k, v in fixed.items())} is a single "
                         f"value, not a range; set fixed values in the experiment config instead")
    for name, distribution in distributions.items():
        _suggest(trial, name, distribution)
