"""Every setting checked against what the object it is handed to declares: the type annotations of its ``_target_``.

A config node with a ``_target_`` is a call; its keys are the callee's arguments, and the callee's signature says
what each may be (``clean_val: bool``, ``max_epochs: Optional[int]``, ``precision: Literal[...]``). A value of
another type is refused by name before anything is built: ``data.clean_val='no': allowed are true, false``. This
covers the package's own objects and Lightning's and torch's alike, with no list of keys to keep up to date. A
number that is not finite (nan, inf) is refused everywhere: no setting means it.
"""
from __future__ import annotations

import collections.abc
import inspect
import math
import typing
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

Check = tuple[Callable[[Any], bool], str]  # (accepts the value, what is allowed in words)
_ANYTHING: Check = (lambda value: True, "anything")
_TOP_LEVEL = {"test_best": bool, "task_name": str}  # settings no _target_ takes: what conf/config.yaml says they are


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def annotation_check(annotation: Any) -> Check:
    """What a value for a parameter of this annotation may be; anything, where the annotation says no more than an
    object (a class, a callable, a tensor) that a config cannot spell anyway."""
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, (str, typing.TypeVar)):
        return _ANYTHING
    if annotation is type(None):
        return (lambda value: value is None, "null")
    if annotation is bool:
        return (lambda value: isinstance(value, bool), "true, false")
    if annotation is int:
        return (_is_int, "an integer")
    if annotation is float:
        return (_is_number, "a number")
    if annotation is str:  # a name or a path; a number given for it is taken as written
        return (lambda value: isinstance(value, str) or _is_number(value), "a string")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return (lambda value: any(value == a and type(value) is type(a) for a in args),
                ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args))
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        checks = [annotation_check(a) for a in args]
        if any(check is _ANYTHING for check in checks):
            return _ANYTHING
        literals = [str(v).lower() if isinstance(v, bool) else str(v) for a in args
                    if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        others = [words for a, (_, words) in zip(args, checks)
                  if typing.get_origin(a) is not typing.Literal and a is not type(None)]
        words = others + ([", ".join(dict.fromkeys(literals))] if literals else []) + \
            (["null"] if type(None) in args else [])
        return (lambda value: any(accepts(value) for accepts, _ in checks), " or ".join(dict.fromkeys(words)))
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        item = annotation_check(args[0]) if args and args[-1] is not Ellipsis and len(set(args)) == 1 else _ANYTHING
        of = "" if item is _ANYTHING else f", each {item[1]}"
        return (lambda value: isinstance(value, (list, tuple)) and all(item[0](v) for v in value), f"a list{of}")
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return (lambda value: isinstance(value, dict), "a mapping")
    return _ANYTHING


def _callee(target: str) -> Optional[Callable]:
    import hydra

    try:
        return hydra.utils.get_object(target)
    except Exception:  # not importable: instantiating it says so, with the key
        return None


def signature_functions(target: Callable) -> list[Callable]:
    """What takes ``target``'s arguments: the function itself, or a class's ``__init__`` and those of the bases it
    hands ``**kwargs`` to."""
    if not inspect.isclass(target):
        return [target]
    functions = []
    for cls in target.__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        functions.append(init)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return functions


def parameter_checks(target: Callable) -> dict[str, Check]:
    """The checks of every named parameter of ``target`` (a class: its ``__init__`` and those of the bases it hands
    ``**kwargs`` to)."""
    functions = signature_functions(target)
    checks: dict[str, Check] = {}
    for function in functions:
        try:
            hints = typing.get_type_hints(function)
            parameters = inspect.signature(function).parameters
        except Exception:  # unresolvable annotations: nothing is checked for this callee
            continue
        for name, parameter in parameters.items():
            if name not in checks and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                checks[name] = annotation_check(hints.get(name, parameter.annotation))
    return checks


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every node with a ``_target_`` under ``node``, by its key, not entering interpolations (``module.net`` is
    ``${model}``: the node is checked as ``model``)."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            if not OmegaConf.is_interpolation(node, key):
                yield from target_nodes(_child(node, key), f"{path}.{key}".strip("."))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_interpolation(node, i):
                yield from target_nodes(_child(node, i), f"{path}[{i}]")


def _child(node: Any, key: Any) -> Any:
    try:
        return node[key]
    except Exception:  # a value that cannot be resolved here (a resolver of the running Hydra app)
        return None


def _shown(value: Any) -> str:
    return repr(_plain(value))


def _allowed(words: str) -> str:
    return f"allowed are {words}" if "," in words and not words.startswith(("a ", "an ")) else f"allowed is {words}"


def argument_problems(cfg: DictConfig) -> Iterator[str]:
    """One line for each setting whose value its callee's signature does not allow, and each number that is not
    finite, in config order."""
    for path, node in target_nodes(cfg):
        target = _callee(str(node.get("_target_")))
        checks = parameter_checks(target) if target is not None else {}
        for key in node.keys():
            if str(key).startswith("_") or key not in checks or OmegaConf.is_interpolation(node, key):
                continue  # an interpolation is checked where it points to
            if isinstance(_child(node, key), DictConfig) and "_target_" in _child(node, key):
                continue  # an object of its own, checked as such
            value = _plain(_child(node, key))
            accepts, words = checks[key]
            if not accepts(value):
                yield f"{path}.{key}={_shown(value)}: {_allowed(words)}"
    for key, kind in _TOP_LEVEL.items():
        value = cfg.get(key)
        if key in cfg and value is not None:
            accepts, words = annotation_check(kind)
            if not accepts(value):
                yield f"{key}={_shown(value)}: {_allowed(words)}"
    yield from _non_finite(cfg, "")


def _non_finite(node: Any, path: str) -> Iterator[str]:
    if isinstance(node, DictConfig):
        items = [(key, f"{path}.{key}".strip(".")) for key in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(i, f"{path}[{i}]") for i in range(len(node))]
    else:
        return
    for key, where in items:
        if OmegaConf.is_interpolation(node, key):
            continue  # checked where it points to
        value = _child(node, key)
        if isinstance(value, float) and not math.isfinite(value):
            yield f"{where}={value}: allowed is a finite number"
        else:
            yield from _non_finite(value, where)
