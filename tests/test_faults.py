"""Faults and determinism: resuming a stopped run exactly, refusing to reuse a folder, NaN losses, seeds."""
from __future__ import annotations

import json
import logging

import hydra
import numpy as np
import pytest
import torch

from adaptive_ls.config import ConfigError, OutputDirError
from adaptive_ls.noise import label_hash
from adaptive_ls.smoothing import AdaptiveSmoothing
from tests.runs import TINY, Crash, compose, entry_point, run_in, sigkill_after_first_checkpoint

# Per-sample memory (adaptive ε from an EMA of each sample's prediction), momentum, a per-step cosine schedule and
# a best checkpoint: every piece of state a resumed run must get back.
STATEFUL = ("trainer.max_epochs=3", "smoothing=adaptive", "smoothing.ema=0.5", "smoothing.warmup_epochs=1",
            "test_best=true")
CRASH = ("+callbacks.crash._target_=tests.runs.CrashAt", "+callbacks.crash.epoch=1", "+callbacks.crash.batch=3")


def comparable(results: dict) -> dict:
    """Everything a run measured: its results without where and how long."""
    return {k: v for k, v in results.items()
            if k not in ("wall_time_s", "output_dir", "resumed_from_epoch") and not k.startswith("checkpoint/")}


def last_state(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_a_crashed_run_resumes_exactly(tmp_path):
    whole = run_in(tmp_path / "whole", *STATEFUL)
    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run_in(run_dir, *STATEFUL, *CRASH)  # stops in the middle of epoch 1
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    saved = last_state(run_dir)
    assert saved["smoothing.seen"].any()  # the checkpoint of epoch 0 holds the per-sample memory

    # a lazily sized policy takes the checkpoint's memory as it is
    fresh = AdaptiveSmoothing(ema=0.5)
    fresh.load_state_dict({k.removeprefix("smoothing."): v for k, v in saved.items() if k.startswith("smoothing.")})
    assert torch.equal(fresh.memory, saved["smoothing.memory"]) and torch.equal(fresh.seen, saved["smoothing.seen"])

    # other settings are refused, naming what differs; the folder is left as it was
    with pytest.raises(OutputDirError) as error:
        run_in(run_dir, *STATEFUL, "optimizer.lr=0.01", "smoothing.eps_max=0.3")
    assert "optimizer.lr: 0.05 -> 0.01" in str(error.value) and "smoothing.eps_max: 0.9 -> 0.3" in str(error.value)
    assert "\n" not in str(error.value) and "hydra.run.dir" in str(error.value)
    with pytest.raises(OutputDirError, match="resume=false but"):
        run_in(run_dir, *STATEFUL, "resume=false")

    resumed = run_in(run_dir, *STATEFUL)  # the same job again, same folder: it continues
    assert resumed["resumed_from_epoch"] == 0 and resumed["status"] == "completed"
    assert comparable(resumed) == comparable(whole)  # every metric and the whole history, exactly
    final, reference = last_state(run_dir), last_state(tmp_path / "whole")
    assert all(torch.equal(final[k], reference[k]) for k in reference)  # weights, BN statistics, memory
    assert (run_dir / "csv" / "metrics.until-epoch000.csv").is_file()  # the first attempt's log is kept

    again = run_in(run_dir, *STATEFUL, "resume=true")  # a completed run: reloaded and tested again
    assert comparable(again) == comparable(whole)


def test_resume_true_needs_a_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match=r"resume=true but there is no checkpoint"):
        run_in(tmp_path / "empty", "resume=true")


@pytest.mark.slow
def test_a_killed_job_continues_when_rerun_in_its_folder(tmp_path):
    """SIGKILL (no chance to clean up) once the first checkpoint exists, then the same job again in that folder."""
    settings = ("trainer.max_epochs=4", "smoothing=adaptive", "smoothing.ema=0.5")
    run_dir = tmp_path / "killed"
    job = sigkill_after_first_checkpoint(run_dir, *settings)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.exists(), (run_dir.parent / "killed.log").read_text()[-2000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"  # killed mid-run

    resumed = run_in(run_dir, *settings)
    assert resumed["resumed_from_epoch"] >= 0
    assert comparable(resumed) == comparable(run_in(tmp_path / "whole", *settings))


@pytest.mark.slow
def test_a_diverging_job_fails_alone_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    proc = entry_point("trainer.max_epochs=1", "optimizer.lr=0.05,1e8", run_dir=sweep, multirun=True)
    assert proc.returncode == 1, proc.stderr[-3000:]  # once the other job has run: a script sees the failure
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: sweep finished with 1 of 2 jobs failed or refused (job 1): each job's train.log and results.json say why"
    fine, diverged = (json.loads((sweep / str(i) / "results.json").read_text()) for i in (0, 1))
    assert fine["status"] == "completed"
    assert diverged["status"] == "failed"
    assert diverged["error"].startswith("NonFiniteLossError: non-finite training loss (NaN/inf) at epoch 0, batch")
    assert "optimizer.lr=1e+08" in diverged["error"]
    assert not (sweep / "1" / "checkpoints" / "last.ckpt").exists()  # no non-finite weights saved as "last"


@pytest.mark.slow
def test_seeds_fix_the_labels_and_the_numbers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="adaptive_ls.job")
    first, again, other_seed = (run_in(tmp_path / name, "trainer.max_epochs=1", f"seed={seed}")
                                for name, seed in (("first", 0), ("again", 0), ("other_seed", 1)))
    # same seed on the CPU: the same numbers, epoch by epoch
    assert comparable(again) == comparable(first)
    # same noise_seed: the same noisy labels, whatever the training seed; the hash is saved and logged
    labels = {name: np.load(tmp_path / name / "noisy_labels.npy") for name in ("first", "again", "other_seed")}
    np.testing.assert_array_equal(labels["first"], labels["other_seed"])
    assert first["noise/labels_hash"] == other_seed["noise/labels_hash"] == label_hash(labels["other_seed"])
    assert f"hash {first['noise/labels_hash']}" in caplog.text
    assert other_seed["history"] != first["history"]  # the training seed does change training
    # and noise_seed alone decides them
    datamodule = hydra.utils.instantiate(compose(*TINY, "noise_seed=1").data)
    datamodule.setup("fit")
    assert label_hash(datamodule.noisy_labels.numpy()) != first["noise/labels_hash"]
