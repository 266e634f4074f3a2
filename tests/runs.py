"""Tiny runs for the reliability tests (in-process and through the entry point) and faults to inject into them.

A crash is injected through the config, as a user could add any callback:
``+callbacks.crash._target_=tests.runs.CrashAt +callbacks.crash.epoch=1 +callbacks.crash.batch=3``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

# Seconds on a CPU: digits, a narrow CNN, no progress bar, no second test of the best checkpoint.
TINY = ("data=digits", "model.width=8", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2", "test_best=false")


def compose(*overrides: str) -> DictConfig:
    """conf/config.yaml with TINY and ``overrides``, as the entry point composes it (without the hydra node)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return hydra_compose(config_name="config", overrides=[*TINY, *overrides])


def with_output_dir(cfg: DictConfig, output_dir: Path) -> DictConfig:
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@contextmanager
def one_thread():
    """Tiny CPU runs are many times faster on one thread when the cores are shared (no OpenMP spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_in(output_dir: Path, *overrides: str) -> dict:
    """adaptive_ls.train.run with ``overrides`` and its files in ``output_dir``."""
    from adaptive_ls.train import run

    with one_thread():
        return run(with_output_dir(compose(*overrides), output_dir))


def entry_point(*overrides: str, run_dir: Path, multirun: bool = False, wait: bool = True, timeout: float = 300):
    """``python -m adaptive_ls.train [-m] overrides hydra.{run,sweep}.dir=run_dir``, this checkout's code first.

    ``wait=False`` returns the Popen (output to ``<run_dir>.log``) instead of the CompletedProcess.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("HYDRA_FULL_ERROR", None)
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    command = [sys.executable, "-m", "adaptive_ls.train", *(["-m"] if multirun else []), *TINY, *overrides, where]
    if not wait:
        log = open(run_dir.parent / f"{run_dir.name}.log", "w")
        return subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)


def must_not_be_built(**kwargs):
    """A model target for tests that must fail before the model is built."""
    raise AssertionError("the model was built before the configuration error was reported")


class Crash(RuntimeError):
    """Stands for whatever stops a job: a node failure, a pre-emption, a kill."""


class CrashAt(pl.Callback):
    """Raise at the start of training batch ``batch`` of epoch ``epoch``: the run stops mid-epoch, as a killed job
    does, its last checkpoint from the end of the previous epoch."""

    def __init__(self, epoch: int, batch: int = 0):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Crash(f"injected crash at epoch {self.epoch}, batch {self.batch}")
