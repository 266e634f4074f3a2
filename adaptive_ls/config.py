"""The config layer: builds the run's objects from the composed config, and turns bad settings into one-line errors.

The objects check their own arguments (policy, noise kind, data module, module, callbacks, loggers) and name them
as a constructor argument (``eps=1.5 is out of range ...``). This module builds them before anything heavy runs and
puts the config key in front (``smoothing.eps=1.5 ...``), so a bad setting fails in the first seconds with
:class:`ConfigError`: one line naming the key, the value given and what is allowed.

It also says what a job is called (:func:`choice_name`) and which settings it records (:func:`group_settings`):
both come from the config, so a new policy or noise kind needs no bookkeeping of its own.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from adaptive_ls.errors import ConfigError, OutputDirError, RunCompleted, one_line  # noqa: F401 (the API)


_ARGUMENT = re.compile(r"^[A-Za-z_]\w*=")  # a message that starts with the argument it is about: `eps=1.5 ...`
_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def config_key(cfg: Optional[DictConfig], full_key: str) -> str:
    """The key a user writes for the node at ``full_key``: a node that is an interpolation (``module.smoothing`` is
    ``${smoothing}``) is named by the node it points to (``smoothing``)."""
    node, parts = cfg, full_key.split(".")
    for i, part in enumerate(parts):
        if not (OmegaConf.is_dict(node) and part in node):
            return full_key
        if OmegaConf.is_interpolation(node, part):
            match = _INTERPOLATION.match(str(OmegaConf.to_container(node, resolve=False)[part]))
            if match:
                return config_key(cfg, ".".join([match.group(1), *parts[i + 1:]]))
        try:
            node = node[part]
        except Exception:  # an interpolation that does not resolve: the error names it by its own key
            return full_key
    return full_key


def _keyed(node: Optional[str], message: str, cfg: Optional[DictConfig] = None) -> str:
    """``message`` with the node's path put before the arguments it names: every ``<key>=`` of the node's keys in
    ``cfg`` (``eps_min=0.5 > eps_max=0.2``), or, without them, the argument the message starts with."""
    if not node:
        return message
    settings = OmegaConf.select(cfg, node, default=None) if cfg is not None else None
    keys = [k for k in settings.keys() if not str(k).startswith("_")] if OmegaConf.is_dict(settings) else []
    if not keys:
        return f"{node}.{message}" if _ARGUMENT.match(message) else message
    names = "|".join(re.escape(str(k)) for k in sorted(keys, key=len, reverse=True))
    message = re.sub(rf"(?<![\w.])({names})(?==)", rf"{node}.\1", message)
    return re.sub(rf"^({names})\b(?!=)", rf"{node}.\1", message)  # `class_map source 'zebra' ...`


@contextmanager
def config_errors(key: Optional[str] = None, cfg: Optional[DictConfig] = None) -> Iterator[None]:
    """Turn the ValueErrors (and missing files) that constructors and loaders raise into one-line ConfigErrors that
    name the config key.

    The key is the error's own ``node`` (:class:`adaptive_ls.errors.SettingError`), else the node Hydra was building
    when it failed (followed through interpolations in ``cfg``), else ``key``.
    """
    from hydra.errors import InstantiationException

    try:
        yield
    except ConfigError:
        raise
    except InstantiationException as error:
        cause = error.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        failed = re.search(r"full_key: (\S+)", str(error))
        node = getattr(cause, "node", None) or (config_key(cfg, failed.group(1)) if failed else key)
        if isinstance(cause, (ValueError, FileNotFoundError)):
            message = _keyed(node, one_line(cause), cfg)
        elif cause is not None and "Error locating target" not in str(error):
            message = f"{node}: {cause}" if node else str(cause)  # e.g. an unexpected keyword: a typo in a key
        else:
            message = f"{node}._target_: {error}" if node else str(error)
        raise ConfigError(one_line(message)) from error
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(_keyed(getattr(error, "node", None) or key, one_line(error), cfg)) from error


def check_choice(key: str, value: Any, allowed: tuple) -> None:
    if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
        raise ConfigError(f"{key}={value!r}: allowed are {', '.join(str(a).lower() for a in allowed)}")


def check_int(key: str, value: Any, minimum: Optional[int] = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        allowed = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise ConfigError(f"{key}={value!r}: allowed is {allowed}")


def build_run(cfg: DictConfig) -> tuple[Any, Any]:
    """Check every setting that needs no data and build the run's data module and LightningModule from the config
    (nothing is loaded yet); raise :class:`ConfigError` on the first bad setting.

    Then the rest of the run's objects are built and dropped (:mod:`adaptive_ls.preflight`), so a mistake in the
    optimizer, schedule, callbacks or Trainer fails here too.

    Checks that need the data (the dataset is present and intact, a label file matches it, the validation split fits
    in the training set) run when it is loaded: ``train.run`` wraps the loading in :func:`config_errors`.
    """
    from adaptive_ls.resume import RESUME_CHOICES

    check_choice("resume", cfg.get("resume", "auto"), RESUME_CHOICES)
    check_int("seed", cfg.get("seed"), 0)
    check_int("noise_seed", cfg.get("noise_seed"), 0)
    metric = cfg.get("optimized_metric")
    if metric is not None and not str(metric).startswith(("val/", "train/")):
        raise ConfigError(f"optimized_metric={metric!r}: allowed is a val/ or train/ metric "
                          f"(never tune on the test set)")
    trainer = cfg.get("trainer") or {}
    if trainer.get("max_epochs") is not None:
        check_int("trainer.max_epochs", trainer.max_epochs, 1)
    _check_process_launch(trainer)
    from adaptive_ls.preflight import build_node, check_graph, check_settings

    check_settings(cfg)  # every value against what its callee's signature allows
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # before the net is built: the training seed fixes its init
    with config_errors("data", cfg):  # batch and split sizes, loader, the noise kind and its settings
        datamodule = build_node(cfg, "data")
    with config_errors("module", cfg):  # the policy, the net, the optimizer and schedule, the module's options
        module = build_node(cfg, "module")
    check_graph(cfg, datamodule, module)  # a batch through the net, optimizer, schedule, callbacks, Trainer
    return datamodule, module


def instantiate_group(cfg: DictConfig, group: str) -> dict[str, Any]:
    """Every ``_target_`` entry of a dict group (``callbacks``, ``logger``) built by name; a null entry is skipped."""
    built = {}
    for name, node in (cfg.get(group) or {}).items():
        if node is not None and "_target_" in node:
            with config_errors(f"{group}.{name}", cfg):
                built[name] = hydra.utils.instantiate(node)
    return built


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
# What a job is called and which settings it records
# ---------------------------------------------------------------------------------------------------------------------


def _class_name(target: str) -> str:
    """A class's own ``name`` (policies and noise kinds have one), else the class's name."""
    try:
        cls = hydra.utils.get_class(target)
    except Exception:  # not importable: the job reports that itself
        return target.rsplit(".", 1)[-1]
    return str(vars(cls).get("name") or cls.__name__)


def choice_name(cfg: DictConfig, group: str) -> str:
    """What results.json, W&B and the report call the job's ``group`` (``smoothing``, ``noise``): the config choice
    (``smoothing=negative`` is ``negative``), or the class's name when ``<group>._target_`` was overridden or the
    config was composed outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    target = str(OmegaConf.select(cfg, f"{group}._target_", default="") or "")
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        choice = hydra_cfg.runtime.choices.get(group)
        retargeted = any(re.match(rf"^[+~]*{re.escape(group)}\._target_=", o) for o in hydra_cfg.overrides.task)
        if choice and not retargeted:
            return str(choice)
    return _class_name(target) if target else "none"


def noise_kind_name(cfg: DictConfig) -> str:
    """The noise kind a job ran, whatever its setting was called: ``noise=sym40`` is ``symmetric``, the ``name`` of its
    ``_target_`` class when that name is itself an option of the ``noise`` group; any other choice is its own name
    (a user's ``noise=every_nth``). The report keys its rows by this kind and the rate."""
    choice = choice_name(cfg, "noise")
    target = str(OmegaConf.select(cfg, "noise._target_", default="") or "")
    kind = _class_name(target) if target else choice
    return kind if kind != choice and kind in noise_options() else choice


def noise_options() -> set[str]:
    """The options of the ``noise`` group: those of the running Hydra app (a user's search path included), else the
    package's own ``conf/noise``."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return set(GlobalHydra.instance().config_loader().get_group_options("noise"))
    return {path.stem for path in (Path(__file__).resolve().parent / "conf" / "noise").glob("*.yaml")}


def group_settings(cfg: DictConfig, group: str) -> dict[str, Any]:
    """``<group>/<key>`` for every setting of the group's node (``smoothing/eps``), Hydra's own keys left out."""
    node = OmegaConf.to_container(cfg[group], resolve=True) if cfg.get(group) is not None else {}
    return {f"{group}/{k}": v for k, v in node.items() if not (k.startswith("_") and k.endswith("_"))}
