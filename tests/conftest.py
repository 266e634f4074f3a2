"""Shared test helpers: composing the real Hydra config, tiny CPU runs, and data written in real on-disk formats.

Fixtures (use them from any test file):
    compose            ``compose(*overrides) -> DictConfig``: conf/ composed as the entry point would (with ``hydra``).
    run_config         ``run_config(cfg, output_dir) -> results``: adaptive_ls.train.run in ``output_dir``.
    run_entry_point    ``run_entry_point(*overrides, run_dir=...) -> CompletedProcess``: ``python -m adaptive_ls.train``.
    tiny_cifar10       a small CIFAR-10 written in torchvision's layout under tmp_path (see :func:`write_cifar10`).
Constants:
    TINY_RUN           overrides for a seconds-long CPU run on the offline digits data.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, open_dict

# Test workloads are tiny: one thread each is faster than torch's default, and far faster on a shared CI machine
# where oversubscribed OpenMP threads spin (measured 4-8x on 2 busy cores). Override with OMP_NUM_THREADS.
TORCH_THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))
torch.set_num_threads(TORCH_THREADS)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

# A run that takes seconds on a CPU: the embedded digits data, 2 epochs, no progress bar.
TINY_RUN = ("data=digits", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false")


# ---------------------------------------------------------------------------------------------------------------------
# Hydra
# ---------------------------------------------------------------------------------------------------------------------


def compose_config(*overrides: str) -> DictConfig:
    """conf/config.yaml composed with ``overrides``, including the ``hydra`` node, as ``@hydra.main`` would see it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="test"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def run_config_in(cfg: DictConfig, output_dir: Path) -> dict:
    """Run ``adaptive_ls.train.run`` with every output in ``output_dir`` (what Hydra's run dir would be).

    ``cfg`` (from :func:`compose_config`) is changed in place: its ``hydra`` node is registered with HydraConfig and
    removed, as ``@hydra.main`` does before calling the task.
    """
    from hydra.core.hydra_config import HydraConfig

    from adaptive_ls.train import run

    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
        cfg.paths.output_dir = str(output_dir)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):  # as Hydra's run_job does: the task sees its config without the `hydra` node
        del cfg["hydra"]
    return run(cfg)


def run_entry_point_in(*overrides: str, run_dir: Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m adaptive_ls.train overrides hydra.run.dir=run_dir`` with this checkout's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("HYDRA_FULL_ERROR", None)
    env.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
    return subprocess.run(
        [sys.executable, "-m", "adaptive_ls.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def compose():
    return compose_config


@pytest.fixture
def run_config():
    return run_config_in


@pytest.fixture
def run_entry_point(tmp_path):
    def _run(*overrides: str, run_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_entry_point_in(*overrides, run_dir=run_dir, cwd=tmp_path, timeout=timeout)

    return _run


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 in torchvision's on-disk layout
# ---------------------------------------------------------------------------------------------------------------------

CIFAR10_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class TinyCIFAR10:
    """What :func:`write_cifar10` wrote: ``root`` (holds cifar-10-batches-py) and the arrays, images as [N, 3, 32, 32]."""

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
        pickle.dump({"label_names": CIFAR10_LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f,
                    protocol=2)
    return TinyCIFAR10(Path(root), np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                       test_images, test_labels)


@pytest.fixture
def tiny_cifar10(tmp_path) -> TinyCIFAR10:
    """100 training images (5 batches of 20) and 30 test images in torchvision's CIFAR-10 layout under tmp_path."""
    return write_cifar10(tmp_path / "cifar")
