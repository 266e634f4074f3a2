"""The command line's overrides composed as Hydra will compose them, before Hydra runs: a misspelled option
(``optimizer=adam``) or key (``optimzer.lr=0.1``) is one line naming it and what is allowed, with exit code 2, in a
single run and in every value of a sweep, instead of Hydra's multi-line error after a sweep has started.

Torch-free and quick (one compose per swept value), so it runs before the run folder's lock is taken.
"""
from __future__ import annotations

from typing import Optional, Sequence

# Options of Hydra's own command line that take no value; any other flag (--cfg, --config-name, ...) leaves the
# command to Hydra unchecked.
PLAIN_FLAGS = ("-m", "--multirun")
CHOICE_SWEEPS = ("CHOICE_SWEEP", "SIMPLE_CHOICE_SWEEP", "RANGE_SWEEP")
MAX_COMPOSES = 64  # a sweep's values are checked one at a time, the others at their first value


def command_line_problem(argv: Sequence[str], config_dir: str, config_name: str = "config") -> Optional[str]:
    """None when every override of ``argv`` composes; else one line naming the first one that does not."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if any(arg.startswith("-") and arg not in PLAIN_FLAGS for arg in argv):
        return None
    texts = [arg for arg in argv if arg not in PLAIN_FLAGS]
    try:
        overrides = OverridesParser.create().parse_overrides(texts)
    except OverrideParseException as error:
        return f"{_first_line(error)} (Hydra's override syntax: key=value, group=option, +new_key=value)"
    choices = []  # per override: the values to compose it with (the first one when others vary)
    for override in overrides:
        if override.key_or_group == "hydra.searchpath":
            choices.append([override.input_line])  # the user's own config folders: their options are allowed
        elif override.key_or_group == "hydra" or override.key_or_group.startswith(("hydra.", "hydra/")):
            choices.append([])  # Hydra's own settings: Hydra checks them
        elif override.is_sweep_override():
            values = list(override.sweep_string_iterator()) if override.value_type.name in CHOICE_SWEEPS else []
            choices.append([f"{override.get_key_element()}={v}" for v in values])
        else:
            choices.append([override.input_line])
    base = [values[0] for values in choices if values]
    variants = [base] + [[*base[:i], value, *base[i + 1:]] for i, values in enumerate(c for c in choices if c)
                         for value in values[1:]]
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=config_dir, job_name="check"):  # once for all variants
        for overrides_list in variants[:MAX_COMPOSES]:
            problem = _compose_problem(overrides_list, config_name)
            if problem:
                return problem
    return None


def _compose_problem(overrides: list[str], config_name: str) -> Optional[str]:
    """One line for what Hydra refuses in ``overrides``, inside an initialised Hydra; None when they compose."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as error:
        return _missing_option(error, overrides, GlobalHydra.instance().config_loader())
    except (HydraException, OmegaConfBaseException) as error:
        return _unknown_key(error, overrides)
    return None


def _missing_option(error, overrides: list[str], loader) -> str:
    """``optimizer=adam: no such option of optimizer; allowed are adamw, sgd``."""
    for override in overrides:
        group, _, option = override.lstrip("+~").partition("=")
        if "." in group or not option:
            continue
        options = loader.get_group_options(group)
        if options and option not in options:
            if any(o.startswith("hydra.searchpath=") for o in overrides):  # the user's folders are not listed here
                return f"{override}: no such option of {group} in conf/ or hydra.searchpath"
            return f"{override}: no such option of {group}; allowed are {', '.join(options)}"
    return _first_line(error)


def _unknown_key(error: Exception, overrides: list[str]) -> str:
    """``optimzer.lr=0.1: no such key (write +optimzer.lr=0.1 to add one)``, or Hydra's first line."""
    text = str(error)
    for override in overrides:
        key = override.partition("=")[0]
        if not key.startswith(("+", "~")) and f"Could not override '{key}'" in text:
            return f"{override}: no such key (write +{override} to add one)"
    return _first_line(error)


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
