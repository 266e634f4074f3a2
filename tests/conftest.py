"""Shared fixtures; the plain helpers they wrap (configs, runs, data writers) are in tests/runs.py.

    tiny_cifar10       a small CIFAR-10 written in torchvision's layout under tmp_path (see runs.write_cifar10).
    wandb_env          W&B offline inside tmp_path: no credentials, no home-folder writes.
"""
from __future__ import annotations

import os

import pytest
import torch

from tests.runs import TinyCIFAR10, write_cifar10

# Test workloads are tiny: one thread each is faster than torch's default, and far faster on a shared CI machine
# where oversubscribed OpenMP threads spin (measured 4-8x on 2 busy cores). Override with OMP_NUM_THREADS.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


@pytest.fixture
def tiny_cifar10(tmp_path) -> TinyCIFAR10:
    """100 training images (5 batches of 20) and 30 test images in torchvision's CIFAR-10 layout under tmp_path."""
    return write_cifar10(tmp_path / "cifar")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """No credentials, no home-folder writes, no console capture: W&B offline inside tmp_path."""
    home = tmp_path / "wandb_home"
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(home / "netrc"))  # absent file: no credentials from ~/.netrc
    for name, sub in (("WANDB_DIR", "dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                      ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts"),
                      ("XDG_CACHE_HOME", "xdg_cache")):  # wandb-core's own debug log goes to the user cache dir
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    return home
