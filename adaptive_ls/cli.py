"""The command line: ``adaptive-ls [-m] [group=option ...] [key=value ...]`` (also ``python -m adaptive_ls.train``).

It takes the run folder's lock (:mod:`adaptive_ls.run_lock`) before torch and Lightning are even imported, so a
second process in a live folder is refused within a second or two, then runs :func:`adaptive_ls.train.run` and turns
what can go wrong into what a user and a sweep need: one line and an exit code (2 for a setting, 1 for a diverged
run, 128 + the signal for an interrupted one), a failure recorded in results.json, a sweep that goes on past a
failed job and stops with an interrupted one.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from adaptive_ls.errors import ConfigError, JobInterrupted, NonFiniteLossError, OutputDirError, RunCompleted
from adaptive_ls.ownership import owns
from adaptive_ls.run_lock import run_lock
from adaptive_ls.sweeps import is_global_zero, is_multirun, note_failed_job, stop_summary, sweeper_marks_failures

log = logging.getLogger(__name__)

# adaptive_ls/conf: in a checkout a link to the top-level conf/, in a wheel a copy. Absolute, so the console
# script finds it from any folder.
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """:func:`adaptive_ls.job.record_failure`, imported when needed: the entry point loads torch only for a run, so a
    folder refused by its lock (an OutputDirError, never recorded) is answered in a second or two.

    Only in a folder that is the job's (:func:`adaptive_ls.ownership.owns`): a job refused in a folder holding another
    run leaves that folder and its results.json as they are."""
    if isinstance(error, OutputDirError) or not is_global_zero() or not owns(Path(cfg.paths.output_dir)):
        return
    from adaptive_ls.job import record_failure as record

    record(cfg, error)


# Failures with a message that says what to do: shown as one line (no traceback unless HYDRA_FULL_ERROR=1).
EXPECTED_FAILURES = {ConfigError: 2, NonFiniteLossError: 1}  # exception -> exit code


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    """Run once and return the metric a sweeper optimises; a failure is handled by :func:`handle_failure` (a grid
    sweep goes on past it with NaN; an Optuna study sees a failed trial). A signal stops the job and the sweep."""
    try:
        with run_lock(Path(cfg.paths.output_dir)) if is_global_zero() else nullcontext():
            from adaptive_ls.train import run  # torch and Lightning load once the folder is this job's

            results = run(cfg)
    except JobInterrupted as interrupted:
        return handle_failure(cfg, interrupted, multirun=is_multirun())
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading the data, say)
        return handle_failure(cfg, JobInterrupted(signal.SIGINT), multirun=is_multirun())
    except Exception as error:
        if is_multirun() and sweeper_marks_failures():  # Optuna: a raised error fails the trial, a NaN the study
            record_failure(cfg, error)
            note_failed_job()
            raise
        return handle_failure(cfg, error, multirun=is_multirun())
    return results.get(cfg.get("optimized_metric", "val/acc_best"))


def handle_failure(cfg: DictConfig, error: BaseException, multirun: bool) -> float:
    """Record a failed job in its results.json; in a multirun log it and return NaN so the sweep goes on.

    A job a signal stopped (:class:`~adaptive_ls.callbacks.JobInterrupted`) exits with 128 + the signal (143, 130),
    a sweep with it, after one line naming the jobs done and the command that continues; under submitit, a job
    stopped by its requeue signal is handed back to submitit, which requeues it.

    A job whose folder holds a completed run (a sweep run again with the same hydra.sweep.dir to finish what is
    left) returns that run's metric. Outside a multirun: a bad setting exits with code 2 and one line
    ``error: ...`` on stderr, a diverged run with code 1 and one line, anything else raises (Hydra prints a trimmed
    traceback); ``HYDRA_FULL_ERROR=1`` shows the full traceback for all of them.
    """
    record_failure(cfg, error)
    if isinstance(error, JobInterrupted):
        line = (f"job preempted by {error.signal.name}: submitit requeues it, to continue from "
                f"{cfg.paths.output_dir}/checkpoints/last.ckpt" if error.requeue is not None
                else stop_summary(error.signal.name, error.status))
        if is_global_zero():
            log.warning(line)
            print(line, file=sys.stderr)
        if error.requeue is not None:
            try:
                error.requeue(int(error.signal), None)  # checkpoints the submission, requeues it, exits
            except Exception:  # submitit gave up on it (timed out too often): the job stays resumable by hand
                record_failure(cfg, JobInterrupted(error.signal))
                raise
        raise SystemExit(error.exit_code) from None
    expected = next((code for kind, code in EXPECTED_FAILURES.items() if isinstance(error, kind)), None)
    if multirun:
        if isinstance(error, RunCompleted):
            log.info("job already completed in %s: its results stand", cfg.paths.output_dir)
            return error.results.get(cfg.get("optimized_metric", "val/acc_best"), math.nan)
        note_failed_job()  # the sweep exits non-zero once its other jobs have run
        where = f" (recorded in {cfg.paths.output_dir}/results.json)" if owns(Path(cfg.paths.output_dir)) and \
            not isinstance(error, OutputDirError) else ""
        if expected is None:
            log.error("job failed%s; the sweep goes on", where, exc_info=error)
        else:
            log.error("job failed%s: %s; the sweep goes on", where, error)
        return math.nan
    if expected is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(expected) from None


def entry() -> None:
    """``adaptive-ls``: the command line's overrides composed first, so a misspelled option or key is one line and
    exit code 2 (:mod:`adaptive_ls.command_line`), then :func:`main`."""
    from adaptive_ls.command_line import command_line_problem

    problem = command_line_problem(sys.argv[1:], CONFIG_DIR)
    if problem and os.environ.get("HYDRA_FULL_ERROR") != "1":
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    main()
