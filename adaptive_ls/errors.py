"""The package's errors for bad settings: what its objects raise, and what the config layer reports.

A message starts with the argument as the user would write it (``eps=1.5 is out of range: ...``). The objects do not
know where in a Hydra config they come from; the config layer (:func:`adaptive_ls.config.config_errors`) puts the
node in front (``smoothing.eps=1.5 ...``). ``node`` names the group when an object is built inside another one: a
policy built as part of the module is still reported under ``smoothing``.
"""
from __future__ import annotations

import signal
from typing import Any, Optional


class SettingError(ValueError):
    """A bad setting; the message is one line that names the argument, the value given and what is allowed."""

    node: Optional[str] = None


class ConfigError(ValueError):
    """A setting the run cannot use. The message is one line: the key, the value given, what is allowed."""


class OutputDirError(ConfigError):
    """The output folder holds a run this one must not touch; nothing has been written there."""


class RunCompleted(OutputDirError):
    """The output folder holds a completed run; ``results`` is its results.json (a re-run sweep reports them)."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results


def one_line(message: Any) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the run cannot recover by itself."""


class JobInterrupted(BaseException):
    """A signal stopped the job between two training steps. A BaseException, so that a sweep's launcher does not
    take it for a failed job and go on: the sweep stops too (:func:`adaptive_ls.cli.handle_failure`).

    ``requeue`` is submitit's handler of its requeue signal when that signal stopped the job: called once the job
    has recorded itself as preempted, it resubmits the same job, which continues from its checkpoint.
    """

    def __init__(self, signum: int, requeue: Any = None):
        self.signal, self.requeue = signal.Signals(signum), requeue
        super().__init__(f"stopped by {self.signal.name}")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal)  # what a shell reports for a process the signal killed: 143, 130

    @property
    def status(self) -> str:
        return "preempted" if self.requeue is not None else "interrupted"
