"""Checks on a composed config before anything heavy runs, and the rules for reusing a run's output folder.

A bad setting fails in the first seconds with :class:`ConfigError`: one line naming the key, the value given and what
is allowed. The checks themselves live with the code that uses the settings (the policy and data-module constructors,
``noise.check_noise_config``, the dataset loaders); this module runs them early and makes every error that one line.

A run's folder is never reused silently (:func:`plan_resume`): a folder holding an interrupted run (``last.ckpt``)
continues it when the settings are the same, a folder holding a completed run is refused unless ``resume=true``.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.module import check_module_options

# Settings that may differ between an interrupted run and its continuation: they decide where things are written,
# what is recorded and watched, not what is computed. Any other difference refuses the resume (see plan_resume).
RESUME_MAY_CHANGE = (
    "resume",
    "paths",
    "logger",
    "callbacks",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    # where the data lives (resolved from paths.data_dir): a moved dataset is the same dataset, and the noisy
    # labels' hash, checked on resume, catches a different one
    "data.root",
    "data.cache_dir",
    "noise.path",
)
RESUME_CHOICES = ("auto", True, False)
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
CHECKPOINT_KEY = "adaptive_ls"  # the checkpoint entry holding the run's config, label hash and RNG states


class ConfigError(ValueError):
    """A setting the run cannot use. The message is one line: the key, the value given, what is allowed."""


class OutputDirError(ConfigError):
    """The output folder holds a run this one must not touch; nothing has been written there."""


class RunCompleted(OutputDirError):
    """The output folder holds a completed run; ``results`` is its results.json (a re-run sweep reports them)."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


def one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


@contextmanager
def config_errors(key: Optional[str] = None) -> Iterator[None]:
    """Turn the ValueErrors (and missing files) that constructors and loaders raise into one-line ConfigErrors.

    Hydra wraps a constructor's error in an InstantiationException; the message of the original is what names the
    key, so it is the one kept. ``key`` names the config node for errors that do not name one themselves.
    """
    from hydra.errors import InstantiationException

    try:
        yield
    except ConfigError:
        raise
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, (ValueError, FileNotFoundError)):
            message = str(cause)
        elif cause is not None and "Error locating target" not in str(error):
            message = f"{key}: {cause}" if key else str(cause)  # e.g. an unexpected keyword: a typo in a key
        else:
            message = f"{key}._target_: {error}" if key else str(error)
        raise ConfigError(one_line(message)) from error
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(one_line(str(error))) from error


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise ConfigError(f"{key}={value!r}: allowed are {', '.join(str(a).lower() for a in allowed)}")


def _check_int(key: str, value: Any, minimum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ConfigError(f"{key}={value!r}: allowed is {allowed}")


def instantiate_datamodule(cfg: DictConfig):
    """The data module of ``cfg`` (cheap: its constructor checks the data and noise settings, loads nothing)."""
    return hydra.utils.instantiate(cfg.data, noise=OmegaConf.to_container(cfg.noise, resolve=True),
                                   noise_seed=cfg.noise_seed, seed=cfg.seed)


def module_options(cfg: DictConfig) -> dict[str, Any]:
    """The top-level keys that configure :class:`~adaptive_ls.module.LabelSmoothingClassifier`, with its defaults."""
    return {"channels_last": cfg.get("channels_last", True), "compile": cfg.get("compile", False),
            "norm_bias_lr_scale": cfg.get("norm_bias_lr_scale", 1.0), "eval_tta": cfg.get("eval_tta", "none")}


def validate_config(cfg: DictConfig) -> tuple[Any, Any]:
    """Run every check that needs no data; raise :class:`ConfigError` on the first bad setting. Returns the smoothing
    policy and the data module it built to check them (nothing loaded yet), for the run to use.

    Checks that need the data (the dataset is present and intact, a label file matches it, the validation split
    fits in the training set) run when it is loaded, right after this and before the model is built: ``run`` wraps
    the loading in :func:`config_errors`.
    """
    _check_choice("resume", cfg.get("resume", "auto"), RESUME_CHOICES)
    _check_int("seed", cfg.get("seed"), 0)
    _check_int("noise_seed", cfg.get("noise_seed"), 0)
    with config_errors():
        check_module_options(**module_options(cfg))  # channels_last, compile, norm_bias_lr_scale, eval_tta
    metric = cfg.get("optimized_metric")
    if metric is not None and not str(metric).startswith(("val/", "train/")):
        raise ConfigError(f"optimized_metric={metric!r}: allowed is a val/ or train/ metric "
                          f"(never tune on the test set)")
    with config_errors("smoothing"):
        policy = hydra.utils.instantiate(cfg.smoothing)  # the policy's constructor checks ε, schedules, signals
    with config_errors("data"):
        datamodule = instantiate_datamodule(cfg)  # batch and split sizes, loader, the noise (kind, rate, class map)
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_epochs") is not None:
        _check_int("trainer.max_epochs", trainer.max_epochs, 1)
    _check_process_launch(trainer)
    return policy, datamodule


def _check_process_launch(trainer: DictConfig) -> None:
    """Lightning starts the other DDP processes by re-running the command line; in a Hydra multirun that line is
    the whole sweep. There the processes must come from the cluster (SLURM, torchrun), one per device."""
    from adaptive_ls.sweeps import is_multirun

    strategy, devices = str(trainer.get("strategy", "auto")), trainer.get("devices", 1)
    if "ddp" not in strategy.lower() or str(devices) == "1" or not is_multirun():
        return
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return
    raise ConfigError(
        f"trainer.strategy={strategy} with trainer.devices={devices} in a Hydra multirun: Lightning would start the "
        f"other processes by re-running the whole sweep. Sweep multi-device jobs with hydra/launcher=submitit_slurm "
        f"and hydra.launcher.tasks_per_node={devices} (SLURM starts one process per device), or run them one by one")


# ---------------------------------------------------------------------------------------------------------------------
# Output folders and resuming
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResumePlan:
    """Continue the run in the output folder from ``checkpoint``, whose noisy labels hash to ``labels_hash``."""

    checkpoint: Path
    labels_hash: Optional[str]
    epoch: int


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: old -> new`` for every setting that differs, except those in RESUME_MAY_CHANGE."""
    old, new = _flat(saved), _flat(current)

    def may_change(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE)

    def show(flat: dict, key: str) -> str:
        return repr(flat[key]) if key in flat else "(unset)"

    return [f"{key}: {show(old, key)} -> {show(new, key)}" for key in sorted(old.keys() | new.keys())
            if not may_change(key) and (key not in old or key not in new or old[key] != new[key])]


def read_run_state(checkpoint: Path) -> dict:
    """The run's own entry of a checkpoint (config, label hash, RNG states), and the epoch it was saved at."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # a truncated or foreign file: say which, do not guess
        raise OutputDirError(f"cannot read {checkpoint} to continue from it ({type(error).__name__}: "
                             f"{one_line(error)}); set hydra.run.dir to a new folder to start afresh") from error
    return {**state.get(CHECKPOINT_KEY, {}), "epoch": int(state.get("epoch", -1))}


def plan_resume(cfg: DictConfig) -> Optional[ResumePlan]:
    """Decide what this run does with its output folder: start fresh (None) or continue the run found there.

    ``resume=auto`` (default): an interrupted run (``checkpoints/last.ckpt``, results.json not completed) continues
    when its settings are the same (else refused, naming the keys that differ); a completed run is refused.
    ``resume=true``: a checkpoint must be there; a completed run is reloaded from it and tested again.
    ``resume=false``: start fresh, and refuse a folder that holds a previous run's checkpoint.
    A folder with neither a checkpoint nor a completed results.json (a run that failed before its first epoch
    ended) starts fresh. Raises :class:`OutputDirError` for a refusal; it writes nothing.
    """
    output_dir = Path(cfg.paths.output_dir)
    resume = cfg.get("resume", "auto")
    results_path, last = output_dir / "results.json", output_dir / LAST_CHECKPOINT
    results: dict = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text())
        except ValueError:
            results = {"status": "unreadable"}
    if results.get("status") == "completed" and resume is not True:
        raise RunCompleted(
            f"paths.output_dir={output_dir} already holds a completed run (results.json): set hydra.run.dir to a new "
            f"folder (leave it out for a fresh timestamped one), or resume=true to reload and re-test its last "
            f"checkpoint", results)
    if not last.is_file():
        if resume is True:
            raise ConfigError(f"resume=true but there is no checkpoint to continue from ({last} does not exist); "
                              f"leave resume=auto to start fresh")
        return None
    if resume is False:
        raise OutputDirError(
            f"resume=false but paths.output_dir={output_dir} holds an interrupted run ({last}): leave resume=auto to "
            f"continue it, or set hydra.run.dir to a new folder")
    state = read_run_state(last)
    if "config" not in state:
        raise OutputDirError(f"{last} was not written by adaptive_ls (no '{CHECKPOINT_KEY}' entry), so its settings "
                             f"cannot be checked; set hydra.run.dir to a new folder")
    differences = config_differences(state["config"], OmegaConf.to_container(cfg, resolve=True))
    if differences:
        raise OutputDirError(
            f"paths.output_dir={output_dir} holds an interrupted run with other settings ({'; '.join(differences)}): "
            f"re-run with its settings to continue it, or set hydra.run.dir to a new folder")
    return ResumePlan(last, state.get("labels_hash"), state["epoch"])


def check_resumed_labels(plan: ResumePlan, labels_hash: str) -> None:
    """Refuse to continue a run on other noisy labels than it was trained on (e.g. a changed label file)."""
    if plan.labels_hash is not None and plan.labels_hash != labels_hash:
        raise OutputDirError(
            f"the noisy labels (hash {labels_hash}) differ from those the interrupted run in "
            f"{plan.checkpoint.parent.parent} was trained on (hash {plan.labels_hash}, see its noisy_labels.npy): "
            f"check noise.* and noise_seed, or set hydra.run.dir to a new folder")
