"""The run's whole object graph built and checked before any data loads, so that any bad setting fails in seconds
with one line naming the full key, the value and what is allowed (:class:`~adaptive_ls.errors.ConfigError`).

:func:`check_settings` holds every setting against its callee's signature (:mod:`adaptive_ls.arguments`).
:func:`check_graph` then does with the built data module and LightningModule what training would do first: a batch
through the net (on the ``meta`` device: shapes only, no memory), the optimizer over the net's parameters and the
schedule over it, the callbacks, the Trainer; a checkpoint's or early stopping's ``monitor`` must be a metric the
module logs, and a per-sample policy's warm-up must end within the run.

An object that refuses its settings often says so in its own words and without the key (torch's ``Invalid learning
rate: -1``). :func:`refusal` finds the key by building the object again with one setting at a time put back to its
callee's default: the setting whose default makes it build is the one refused. Nothing here is a list of known
mistakes, so a setting added tomorrow is checked the same way.
"""
from __future__ import annotations

import copy
import inspect
import logging
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from adaptive_ls.arguments import argument_problems, parameter_checks, signature_functions
from adaptive_ls.errors import ConfigError, SettingError, one_line

log = logging.getLogger(__name__)
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")
STEPS_PER_EPOCH = 10  # a stand-in for the schedule's length: the data is not loaded yet


def check_settings(cfg: DictConfig) -> None:
    """Refuse the first setting its callee's signature does not allow, or that is not a finite number."""
    problem = next(argument_problems(cfg), None)
    if problem is not None:
        raise ConfigError(problem)


def check_graph(cfg: DictConfig, datamodule: Any, module: Any) -> None:
    """Build what training builds first, with the data module and module of :func:`adaptive_ls.config.build_run`;
    raise :class:`ConfigError` at the first object that refuses its settings."""
    with quiet():
        net = getattr(module, "net", None)
        if net is not None:
            check_net(cfg, datamodule, net)
        check_optimization(cfg, module)
        callbacks = build_callbacks(cfg)
        check_monitors(cfg, module, callbacks)
        check_warmup(cfg, module)
        check_validation_split(datamodule, module)
        check_trainer(cfg)


@contextmanager
def quiet() -> Iterator[None]:
    """Lightning's device banners and warnings are said once, by the run's own Trainer: not by the checks."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# Which setting an object refused
# ---------------------------------------------------------------------------------------------------------------------


def signature_defaults(target: Callable) -> dict[str, Any]:
    """Each parameter's default (a class: its ``__init__`` and those of the bases it hands ``**kwargs`` to)."""
    functions = signature_functions(target)
    defaults: dict[str, Any] = {}
    for function in functions:
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            continue
        for name, parameter in parameters.items():
            if name not in defaults and parameter.default is not parameter.empty:
                defaults[name] = parameter.default
    return defaults


def _with(cfg: DictConfig, key: str, value: Any) -> DictConfig:
    """A copy of the whole config (interpolations keep their root) with ``key`` set to ``value``."""
    trial = copy.deepcopy(cfg)
    with read_write(trial), open_dict(trial):
        OmegaConf.update(trial, key, value, merge=False)
    return trial


def _works(build: Callable[[DictConfig], Any], cfg: DictConfig) -> bool:
    try:
        build(cfg)
    except Exception:
        return False
    return True


def _integer_bound(works: Callable[[Any], bool], value: int) -> Optional[int]:
    """The smallest integer in (value, 0] that works, by bisection (a callee's lower bound); None if 0 fails."""
    if not works(0):
        return None
    low, high = value, 0  # low fails, high works
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if works(middle) else (middle, high)
    return high


def _allowed_numbers(works: Callable[[Any], bool], value: Any, integer: bool) -> Optional[str]:
    """For a refused number: the bound the callee holds it to, found by trying values beside it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if integer and isinstance(value, int):
        if value < 0:
            bound = _integer_bound(works, value)
            return f"an integer >= {bound}" if bound is not None else None
        return "an integer >= 1" if value == 0 and works(1) else None
    if value < 0 and works(0.0) and not works(-1e-9):
        return "a number >= 0"
    if value <= 0 and works(abs(value) or 1.0) and works(1e-9) and not works(0.0):
        return "a number > 0"
    return None


def refusal(cfg: DictConfig, path: str, build: Callable[[DictConfig], Any], error: BaseException) -> ConfigError:
    """The one-line error for the object at ``path`` that ``build(cfg)`` failed to build or use with ``error``: the
    key whose value it refused, the value, and what it accepts."""
    import hydra

    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__  # Hydra's wrapping: the callee's own error says more
    if isinstance(error, ConfigError):
        return error
    node = OmegaConf.select(cfg, path)
    said = one_line(error)
    if isinstance(error, SettingError) or (isinstance(error, ValueError) and said.split("=")[0].isidentifier()
                                           and "=" in said.split(" ")[0]):
        node_path = getattr(error, "node", None) or path  # a nested object's SettingError names its own group
        return ConfigError(f"{node_path}.{said}")  # it names its argument itself: `width=0: allowed is ...`
    target = None
    if isinstance(node, DictConfig) and "_target_" in node:
        try:
            target = hydra.utils.get_object(str(node._target_))
        except Exception:
            target = None
    defaults = signature_defaults(target) if target is not None else {}
    words = {k: w for k, (_, w) in parameter_checks(target).items()} if target is not None else {}
    name = str(node.get("_target_", path)) if isinstance(node, DictConfig) else path
    for key in (list(node.keys()) if isinstance(node, DictConfig) else []):
        if str(key).startswith("_") or key not in defaults or OmegaConf.is_interpolation(node, key):
            continue
        value = OmegaConf.to_object(node[key]) if OmegaConf.is_config(node[key]) else node[key]

        def works(candidate: Any, key: str = key) -> bool:
            return _works(build, _with(cfg, f"{path}.{key}", candidate))

        integer = "an integer" in words.get(key, "") and "a number" not in words[key]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        default_works = value != defaults[key] and works(defaults[key])
        if not default_works and not (numeric and (works(abs(value)) if value else works(1))):
            continue  # not this setting: another one's value is refused
        allowed = _allowed_numbers(works, value, integer)
        allowed = f"allowed is {allowed}" if allowed else \
            f"allowed is a value it accepts, such as its default {defaults[key]!r}"
        return ConfigError(f"{path}.{key}={value!r}: {name} refuses it ({type(error).__name__}: {said}); {allowed}")
    return ConfigError(f"{path}: {name} cannot be built or used with these settings ({type(error).__name__}: {said})")


def build_node(cfg: DictConfig, path: str) -> Any:
    """``instantiate`` the node at ``path``. An error of the node's own callee that does not name its argument
    (a library's ``n_bins must be a positive int, got 0.``) becomes the :func:`refusal` naming the key; any other
    error is raised as it is (:func:`adaptive_ls.config.config_errors` names the nested node it came from)."""
    import re

    import hydra
    from hydra.errors import InstantiationException

    def build(trial: DictConfig) -> Any:
        return hydra.utils.instantiate(OmegaConf.select(trial, path))

    try:
        return build(cfg)
    except InstantiationException as error:
        failed = re.search(r"full_key: (\S+)", str(error))
        cause = error.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        names_argument = re.match(r"^[A-Za-z_]\w*=", one_line(cause)) is not None
        if cause is None or isinstance(cause, (SettingError, FileNotFoundError, TypeError)) or names_argument \
                or (failed and failed.group(1) != path):
            raise
        raise refusal(cfg, path, build, cause) from error


def build_checked(cfg: DictConfig, path: str, build: Callable[[DictConfig], Any]) -> Any:
    """``build(cfg)``, or the one-line :func:`refusal` of its error. Outside a Hydra app (a config composed by
    hand), a node that needs Hydra's values (``${hydra:runtime.output_dir}``) is not built: None."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return build(cfg)
    except InterpolationResolutionError as error:
        try:
            OmegaConf.select(cfg, "paths.output_dir")
        except InterpolationResolutionError:
            return None
        raise refusal(cfg, path, build, error) from error
    except Exception as error:
        raise refusal(cfg, path, build, error) from error


# ---------------------------------------------------------------------------------------------------------------------
# The objects
# ---------------------------------------------------------------------------------------------------------------------


def _batch_shape(datamodule: Any) -> Optional[tuple[int, ...]]:
    size = getattr(datamodule, "image_size", None)
    channels = getattr(datamodule, "in_channels", None)
    if size is None or not isinstance(channels, int):
        return None
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (2, channels, height, width)


def _forward(net: Any, shape: tuple[int, ...], num_classes: Optional[int], device: str) -> None:
    """A batch of two through ``net``; its logits must be [2, num_classes]."""
    import torch

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits = net(torch.zeros(shape, device=device))
    finally:
        net.train(was_training)
    expected = (shape[0], num_classes) if num_classes else None
    if expected and tuple(logits.shape) != expected:
        raise ValueError(f"the net gives logits of shape {list(logits.shape)} for a batch of {shape[0]} images of "
                         f"{list(shape[1:])}; the data needs {list(expected)}")


def check_net(cfg: DictConfig, datamodule: Any, net: Any) -> None:
    """A batch of the data's shape goes through the net and gives one logit per class: on the ``meta`` device
    (shapes only); a failure there is confirmed on the CPU before it is reported."""
    shape = _batch_shape(datamodule)
    if shape is None:
        return
    num_classes = getattr(datamodule, "num_classes", None)
    module_classes = OmegaConf.select(cfg, "module.num_classes", default=None)
    if isinstance(num_classes, int) and isinstance(module_classes, int) and module_classes != num_classes:
        raise ConfigError(f"module.num_classes={module_classes}: allowed is {num_classes}, the data's classes "
                          f"(leave it ${{data.num_classes}})")
    try:
        _forward(copy.deepcopy(net).to("meta"), shape, num_classes, "meta")
        return
    except Exception:  # an operation the meta device cannot run, or a real mistake: the CPU tells which
        pass
    import hydra

    def build(trial: DictConfig) -> None:
        _forward(hydra.utils.instantiate(trial.model), shape, num_classes, "cpu")

    if "model" in cfg and OmegaConf.is_dict(cfg.model):
        build_checked(cfg, "model", build)
    else:
        try:
            _forward(net, shape, num_classes, "cpu")
        except Exception as error:
            raise ConfigError(f"module.net: the net cannot take a batch of the data ({type(error).__name__}: "
                              f"{one_line(error)})") from error


class _Stand:
    """The module as ``configure_optimizers`` sees it before there is a Trainer: its parameters, and a stand-in
    trainer with the run's epochs (steps estimated: the data is not loaded)."""

    def __init__(self, module: Any, max_epochs: int):
        from types import SimpleNamespace

        self._module = module
        self.trainer = SimpleNamespace(max_epochs=max_epochs, estimated_stepping_batches=max_epochs * STEPS_PER_EPOCH)

    def parameters(self):
        return self._module.parameters()

    def modules(self):
        return self._module.modules()


def _max_epochs(cfg: DictConfig) -> int:
    value = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    return value if isinstance(value, int) and value > 0 else 1


def check_optimization(cfg: DictConfig, module: Any) -> None:
    """The optimizer over the module's parameters and the schedule over it, as ``configure_optimizers`` builds them;
    a failure is put on the optimizer's or the scheduler's key."""
    import hydra

    from adaptive_ls.module import configure_optimization

    names = ("optimizer_factory", "scheduler_factory", "scheduler_interval", "norm_bias_lr_scale")
    if not all(hasattr(module, name) for name in names):
        return
    try:
        built = configure_optimization(_Stand(module, _max_epochs(cfg)), *(getattr(module, name) for name in names))
    except Exception as error:
        failure = error
    else:
        optimizer = built["optimizer"] if isinstance(built, dict) else built
        if all(group.get("lr") == 0 for group in optimizer.param_groups):
            log.warning("optimizer.lr=0: training will not change the weights")
        return
    params = [p for p in module.parameters() if p.requires_grad]

    def optimizer(trial: DictConfig):
        return hydra.utils.instantiate(trial.optimizer)(params=params)

    def scheduler(trial: DictConfig):
        factory = hydra.utils.instantiate(trial.scheduler)
        if "total_steps" in inspect.signature(factory).parameters:
            return factory(optimizer(trial), total_steps=_max_epochs(trial) * STEPS_PER_EPOCH)
        return factory(optimizer(trial))

    if OmegaConf.is_dict(cfg.get("optimizer")):
        build_checked(cfg, "optimizer", optimizer)
    if OmegaConf.is_dict(cfg.get("scheduler")):
        build_checked(cfg, "scheduler", scheduler)
    raise ConfigError(f"module: the optimizer and schedule cannot be built ({type(failure).__name__}: "
                      f"{one_line(failure)})") from failure


def build_callbacks(cfg: DictConfig) -> dict[str, Any]:
    """Every ``callbacks.<name>`` built (and dropped: the run builds its own)."""
    import hydra

    built = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        if OmegaConf.is_dict(node) and "_target_" in node:
            built[name] = build_checked(cfg, f"callbacks.{name}",
                                        lambda trial, n=name: hydra.utils.instantiate(trial.callbacks[n]))
    return built


def logged_metrics(module: Any) -> Optional[set[str]]:
    """The names the module logs during fit (its training and validation metrics); None when it does not say."""
    from torchmetrics import MetricCollection

    train = getattr(module, "train_metrics", None)
    collections = [m for m in module.modules() if isinstance(m, MetricCollection)]
    if not isinstance(train, dict) or not collections:
        return None
    policy = getattr(module, "smoothing", None)
    names = {name for name in train if getattr(policy, "per_sample", True) or not name.endswith(("_min", "_max"))}
    for collection in collections:
        names |= {key for key in collection.keys(keep_base=False) if not str(key).startswith("test/")}
    if hasattr(module, "val_acc_best"):
        names.add("val/acc_best")
    return names


def check_monitors(cfg: DictConfig, module: Any, callbacks: dict[str, Any]) -> None:
    """A callback's ``monitor`` (checkpoints, early stopping) must be a metric the module logs: otherwise Lightning
    says so only after the first epoch."""
    names = logged_metrics(module)
    if names is None:
        return
    prefixes = tuple(f"{prefix}/" for prefix in ("diag",) if "diagnostics" in callbacks)  # the noise diagnostics'
    for name, callback in callbacks.items():
        monitor = getattr(callback, "monitor", None) if callback is not None else None
        if isinstance(monitor, str) and monitor not in names and not monitor.startswith(prefixes or ("\0",)):
            extra = ", or a diag/ metric of callbacks.diagnostics" if prefixes else ""
            raise ConfigError(f"callbacks.{name}.monitor={monitor!r}: allowed is a metric the module logs: "
                              f"{', '.join(sorted(names))}{extra}")


def check_warmup(cfg: DictConfig, module: Any) -> None:
    """A per-sample policy whose warm-up lasts the whole run never uses its per-sample ε: refused."""
    policy = getattr(module, "smoothing", None)
    warmup = getattr(policy, "warmup_epochs", None)
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if not getattr(policy, "per_sample", False) or not isinstance(warmup, int) or not isinstance(max_epochs, int):
        return
    if max_epochs > 0 and warmup >= max_epochs:
        raise ConfigError(f"smoothing.warmup_epochs={warmup} >= trainer.max_epochs={max_epochs}: the policy would "
                          f"stay in its warm-up for the whole run and never use its per-sample ε; allowed is "
                          f"smoothing.warmup_epochs < trainer.max_epochs")


def check_validation_split(datamodule: Any, module: Any) -> None:
    """A policy timed by the validation accuracy needs a validation split."""
    policy = getattr(module, "smoothing", None)
    if getattr(policy, "needs_validation", False) and getattr(datamodule, "val_size", None) == 0:
        raise ConfigError(f"data.val_size=0 but smoothing.freeze_patience={policy.freeze_patience} reads the "
                          f"validation accuracy: allowed is data.val_size > 0, or smoothing.freeze_patience=0")


def check_trainer(cfg: DictConfig) -> None:
    """The Trainer built as the run builds it (devices, precision, strategy, plugins), without callbacks or loggers
    (checked on their own)."""
    import hydra

    if OmegaConf.is_dict(cfg.get("trainer")) and "_target_" in cfg.trainer:
        build_checked(cfg, "trainer", lambda trial: hydra.utils.instantiate(trial.trainer, callbacks=[],
                                                                           logger=False))

