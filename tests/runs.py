"""Shared test helpers, plain functions and constants (tests/conftest.py holds the fixtures that wrap them).

- Hydra: conf/ composed as the entry point composes it (:func:`compose`), tiny runs of it in-process
  (:func:`run_in`, :func:`run_config`) and through ``python -m adaptive_ls`` (:func:`entry_point`).
- Faults to inject into a run, through the config as a user could add any callback:
  ``+callbacks.crash._target_=tests.runs.CrashAt +callbacks.crash.epoch=1 +callbacks.crash.batch=3``.
- Data in real on-disk formats: CIFAR-10 (torchvision's layout), CIFAR-10N label files, ImageFolder trees.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, open_dict

from adaptive_ls.noise import CIFAR10_CLASSES

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

# Seconds on a CPU: 2 epochs of the default model on the embedded digits data, no progress bar.
DIGITS_ON_CPU = ("data=digits", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false")
# Faster still, the run helpers' default preset: a narrow CNN and no second test of the best checkpoint.
TINY = (*DIGITS_ON_CPU, "model.width=8", "test_best=false")


# ---------------------------------------------------------------------------------------------------------------------
# Hydra config and runs
# ---------------------------------------------------------------------------------------------------------------------


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """conf/config.yaml composed with exactly ``overrides`` (no preset); ``hydra=True`` keeps the ``hydra`` node, as
    ``@hydra.main`` sees it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def with_output_dir(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """``cfg`` with ``paths.output_dir`` set (what Hydra's run dir would be)."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def compose_run(output_dir: Path, *overrides: str, preset: tuple[str, ...] = TINY) -> DictConfig:
    """The config of a run of ``preset`` + ``overrides`` with its files in ``output_dir``, ready for train.run."""
    return with_output_dir(compose(*preset, *overrides), output_dir)


@contextmanager
def one_thread():
    """Tiny CPU runs are many times faster on one thread when the cores are shared (no OpenMP spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_config(cfg: DictConfig, output_dir: Path) -> dict:
    """``adaptive_ls.train.run(cfg)`` on one thread with every file in ``output_dir``.

    A ``hydra`` node (``compose(..., hydra=True)``) is registered with HydraConfig and removed from ``cfg`` (in place),
    as ``@hydra.main`` does before calling the task.
    """
    from adaptive_ls.train import run

    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if "hydra" in cfg:
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.job.num = 0
    from hydra.core.hydra_config import HydraConfig

    if "hydra" in cfg:
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        with one_thread():
            return run(cfg)
    finally:
        HydraConfig.instance().cfg = None  # the next run in this process is not this job


def run_in(output_dir: Path, *overrides: str, preset: tuple[str, ...] = TINY) -> dict:
    """adaptive_ls.train.run of ``preset`` + ``overrides`` with its files in ``output_dir``."""
    return run_config(compose(*preset, *overrides), output_dir)


def entry_point(*overrides: str, run_dir: Path, preset: tuple[str, ...] = TINY, multirun: bool = False,
                wait: bool = True, timeout: float = 300):
    """``python -m adaptive_ls [-m] preset overrides hydra.{run,sweep}.dir=run_dir`` from ``run_dir``'s parent,
    this checkout's code first and one thread per job.

    ``wait=False`` returns the Popen (output to ``<run_dir>.log``) instead of the CompletedProcess.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("HYDRA_FULL_ERROR", None)
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    command = [sys.executable, "-m", "adaptive_ls", *(["-m"] if multirun else []), *preset, *overrides, where]
    if not wait:
        log = open(run_dir.parent / f"{run_dir.name}.log", "w")
        return subprocess.Popen(command, cwd=run_dir.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    return subprocess.run(command, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------------------------------


def sigkill_after_first_checkpoint(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """Start ``entry_point(*overrides)`` in ``run_dir`` and SIGKILL it (no chance to clean up) as soon as its first
    ``last.ckpt`` exists; returns the finished process."""
    import signal
    import time

    job = entry_point(*overrides, run_dir=run_dir, wait=False)
    last, deadline = run_dir / "checkpoints" / "last.ckpt", time.time() + 240
    while not last.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    return job


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


# ---------------------------------------------------------------------------------------------------------------------
# Data in real on-disk formats
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TinyCIFAR10:
    """What :func:`write_cifar10` wrote: ``root`` (holds cifar-10-batches-py) and the arrays, images [N, 3, 32, 32]."""

    root: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def write_cifar10(root: Path, per_batch: int = 20, num_test: int = 30, seed: int = 0) -> TinyCIFAR10:
    """Write a small random CIFAR-10 exactly in the real layout: ``root/cifar-10-batches-py/{data_batch_1..5,
    test_batch, batches.meta}``, pickled dicts with ``data`` (uint8 [n, 3072], channel-planar rows) and ``labels``.

    Labels are balanced (cycling 0..9) and shuffled. The checksums of course differ from torchvision's, so loading
    needs ``verify=False``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int, filename: str, batch_label: str) -> tuple[np.ndarray, np.ndarray]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % 10)
        payload = {"batch_label": batch_label, "labels": [int(c) for c in labels], "data": data,
                   "filenames": [f"{filename}_{i}.png" for i in range(n)]}
        with open(folder / filename, "wb") as f:
            pickle.dump(payload, f, protocol=2)
        return data.reshape(n, 3, 32, 32), labels

    train = [batch(per_batch, f"data_batch_{i}", f"training batch {i} of 5") for i in range(1, 6)]
    test_images, test_labels = batch(num_test, "test_batch", "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": per_batch, "num_vis": 3072}, f,
                    protocol=2)
    return TinyCIFAR10(Path(root), np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                       test_images, test_labels)


def write_human_pt(path, clean: np.ndarray, seed: int = 1) -> dict:
    """A label file in CIFAR-10N's CIFAR-10_human.pt format: dict of int64 numpy arrays in training order."""
    rng = np.random.default_rng(seed)

    def flip(rate: float) -> np.ndarray:
        out = clean.copy()
        idx = rng.choice(clean.size, size=round(rate * clean.size), replace=False)
        out[idx] = (clean[idx] + rng.integers(1, 10, idx.size)) % 10
        return out.astype(np.int64)

    labels = {"clean_label": clean.astype(np.int64), "aggre_label": flip(0.09), "worse_label": flip(0.4),
              "random_label1": flip(0.17), "random_label2": flip(0.18), "random_label3": flip(0.18)}
    torch.save(labels, path)
    return labels


IMAGE_FOLDER_CLASSES = ("cat", "dog", "frog")  # sorted, as torchvision orders class folders


def write_tree(root, per_class: int = 8, seed: int = 0) -> dict:
    """root/{train,test}/<class>/*: PNGs of 12x12, plus one 20x16 JPEG and one BMP per class (sizes and formats mix)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for split, n in (("train", per_class), ("test", 3)):
        for c in IMAGE_FOLDER_CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                array = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i:03d}.png")
                pixels[(split, c, i)] = array
            Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(folder / "zz_big.jpg")
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / "zz_gray.bmp")
    return pixels


def logits_of(probs) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (rows sum to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def at_epoch(epoch: int, max_epochs: int):
    """A policy's Progress at the start of ``epoch`` of ``max_epochs``, with 10 optimizer steps an epoch."""
    from adaptive_ls.smoothing import Progress

    return Progress(step=epoch * 10, total_steps=max_epochs * 10, epoch=epoch, max_epochs=max_epochs)
