"""hydra/launcher=stacked: a sweep's jobs that differ only in seeds, noise and smoothing train as one stacked model,
and each job's folder reads as the same job's run by the basic launcher.

Measured (float32 CPU, the width-8 CNN on digits, smoothing=fixed,adaptive x seed=0,1): after 2 epochs test/acc
equal to the basic launcher's for 3 of 4 jobs and one test image (1/359 = 0.0028) apart for the fourth; after 3
epochs at most 2 images apart. vmap's backward sums in another order (adaptive_ls.stacking), and a barely trained
net has many images near its decision boundary. The tolerance below is 3 images. In-process, a resumed stack and a
stack with a NaN member reproduce the uninterrupted, clean stack exactly.
"""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import pytest
import torch
from omegaconf import OmegaConf

import adaptive_ls.stacked_run as stacked_run
from adaptive_ls.report import jobs_table, read_jobs
from adaptive_ls.stacked_run import STACK_MARKER, MemberBest, finite_training, group_jobs, stack_key, stack_refusal
from hydra_plugins.adaptive_ls_stacked.stacked_launcher import check_max_members
from tests.runs import DIGITS_ON_CPU, Crash, CrashAt, compose, compose_run, entry_point, one_thread

GRID = ("smoothing=fixed,adaptive", "seed=0,1")  # 4 jobs: a batch-wide and a per-sample policy
PRESET = (*DIGITS_ON_CPU, "model.width=8")  # with test_best: the best epoch is tested too
TEST_IMAGES = 359  # digits' fixed test split
TOLERANCE = 3 / TEST_IMAGES


def results(sweep_dir: Path) -> dict[str, dict]:
    return {job.name: json.loads((job / "results.json").read_text())
            for job in sorted(sweep_dir.iterdir()) if (job / ".hydra").is_dir()}


@pytest.mark.slow
def test_a_stacked_sweep_writes_each_job_as_the_basic_launcher_does(tmp_path):
    stacked = entry_point(*GRID, "hydra/launcher=stacked", run_dir=tmp_path / "stacked", multirun=True,
                          preset=PRESET)
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    basic = entry_point(*GRID, run_dir=tmp_path / "basic", multirun=True, preset=PRESET)
    assert basic.returncode == 0, basic.stderr[-3000:]

    assert "training 4 jobs as one stack" in stacked.stdout + stacked.stderr
    ours, theirs = results(tmp_path / "stacked"), results(tmp_path / "basic")
    assert sorted(ours) == sorted(theirs) == ["0", "1", "2", "3"]
    for job, result in ours.items():
        folder = tmp_path / "stacked" / job
        assert json.loads((folder / STACK_MARKER).read_text())["members"] == [
            str(tmp_path / "stacked" / j) for j in sorted(ours)]
        assert (folder / "noisy_labels.npy").is_file() and (folder / ".hydra" / "overrides.yaml").is_file()
        assert result["status"] == "completed"
        assert set(result) == set(theirs[job]), job
        assert [set(row) for row in result["history"]] == [set(row) for row in theirs[job]["history"]], job
        for key in ("seed", "smoothing", "noise/labels_hash", "noise/rate"):
            assert result[key] == theirs[job][key], (job, key)
        assert abs(result["test/acc"] - theirs[job]["test/acc"]) <= TOLERANCE, job
        assert abs(result["test/acc_at_best_val"] - theirs[job]["test/acc_at_best_val"]) <= TOLERANCE, job
        assert Path(result["checkpoint/best"]).stem == Path(theirs[job]["checkpoint/best"]).stem, job
        print(f"job {job}: test/acc stacked {result['test/acc']:.4f} basic {theirs[job]['test/acc']:.4f}")
        assert "test/ts_acc" in result and "test/nts_acc" in result
    ours_table, their_table = (jobs_table(read_jobs([tmp_path / sweep])) for sweep in ("stacked", "basic"))
    assert list(ours_table.columns) == list(their_table.columns) and len(ours_table) == len(their_table) == 4


def test_jobs_differing_only_in_seeds_noise_and_smoothing_share_a_stack():
    base = compose("data=digits")
    same = [compose("data=digits", "seed=3", "noise.rate=0.2", "smoothing=fixed", "smoothing.eps=0.3"),
            compose("data=digits", "noise_seed=5", "noise=pairflip")]
    other = [compose("data=digits", "trainer.max_epochs=3"), compose("data=digits", "model.width=8")]
    assert all(stack_key(cfg) == stack_key(base) for cfg in same)
    assert all(stack_key(cfg) != stack_key(base) for cfg in other)


def test_groups_keep_order_and_size_and_refused_jobs_run_alone():
    assert group_jobs(["a", "b", "a", None, "a", None], None) == [[0, 2, 4], [1], [3], [5]]
    assert group_jobs(["a", "a", "a"], 2) == [[0, 1], [2]]
    assert stack_refusal(compose("data=digits")) is None
    assert "trainer.devices=2" in stack_refusal(compose("data=digits", "trainer.devices=2"))
    assert "module.compile" in stack_refusal(compose("data=digits", "module.compile=true"))


def test_max_members_is_checked():
    assert check_max_members(None) is None and check_max_members(2) == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"hydra.launcher.max_members=.*allowed is null \(all\) or an integer"):
            check_max_members(bad)


def test_the_launcher_is_registered():
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("hydra/launcher/stacked.yaml").node
    assert OmegaConf.to_container(node)["max_members"] is None


@pytest.mark.slow
def test_a_job_that_fails_its_checks_runs_alone_and_the_others_still_stack(tmp_path):
    sweep = entry_point("smoothing=fixed", "smoothing.eps=0.1,0.2,1.5", "trainer.max_epochs=1",
                        "hydra/launcher=stacked", run_dir=tmp_path / "sweep", multirun=True)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    output = sweep.stdout + sweep.stderr
    assert "training 2 jobs as one stack" in output and "job #2 runs alone: " in output
    done = results(tmp_path / "sweep")
    assert [done[j]["status"] for j in ("0", "1", "2")] == ["completed", "completed", "failed"]
    assert "smoothing.eps=1.5" in done["2"]["error"]
    assert (tmp_path / "sweep" / "0" / STACK_MARKER).is_file()
    assert not (tmp_path / "sweep" / "2" / STACK_MARKER).exists()


def test_a_member_whose_loss_turned_non_finite_is_failed_and_best_epochs_follow_the_mode():
    assert finite_training([{"train/loss": 1.0}, {"epoch": 1}])
    assert not finite_training([{"train/loss": 1.0}, {"train/loss": float("nan")}])
    best = MemberBest("val/acc", "max")
    best.best[0] = (0.5, 1, {})
    assert best.better(0.6, 0) and not best.better(0.5, 0) and not best.better(float("nan"), 1) and best.better(0.1, 1)
    assert MemberBest("val/nll", "min").better(1.0, 0)
    with pytest.raises(ValueError, match="callbacks.best_checkpoint.mode='top': allowed are max, min"):
        MemberBest("val/acc", "top")


JOBS = (("smoothing=fixed", "seed=0"), ("smoothing=adaptive", "seed=1"))


def train_stack_in(folder: Path, *overrides: str, jobs=JOBS, poison: Optional[int] = None) -> list[dict]:
    """A stack of ``jobs``, 3 epochs, trained in-process in ``folder``/<job>; member ``poison`` starts from NaN
    weights."""
    with ExitStack() as locks, one_thread():
        members = [stacked_run.prepare_member(compose_run(folder / str(i), *job, "trainer.max_epochs=3", *overrides),
                                              locks) for i, job in enumerate(jobs)]
        if poison is not None:
            with torch.no_grad():
                next(members[poison].module.net.parameters()).fill_(float("nan"))
        return stacked_run.train_stack(members)


@pytest.mark.slow
def test_a_member_whose_loss_turns_nan_fails_alone(tmp_path):
    clean, poisoned = train_stack_in(tmp_path / "clean"), train_stack_in(tmp_path / "poisoned", poison=1)
    assert poisoned[1]["status"] == "failed" and "NonFiniteLossError" in poisoned[1]["error"]
    assert poisoned[0]["status"] == "completed"
    assert poisoned[0]["history"] == clean[0]["history"] and poisoned[0]["test/acc"] == clean[0]["test/acc"]


@pytest.mark.slow
def test_an_interrupted_stack_continues_from_its_last_checkpoint(tmp_path, monkeypatch):
    whole = train_stack_in(tmp_path / "whole")
    diagnostics = stacked_run.member_diagnostics
    crashing = lambda *args: [*diagnostics(*args), CrashAt(epoch=2, batch=3)]  # noqa: E731
    for folder in ("resumed", "changed"):
        monkeypatch.setattr(stacked_run, "member_diagnostics", crashing)
        with pytest.raises(Crash):
            train_stack_in(tmp_path / folder)
        assert (tmp_path / folder / "0" / "checkpoints" / "stack-last.ckpt").is_file()
    monkeypatch.setattr(stacked_run, "member_diagnostics", diagnostics)
    resumed = train_stack_in(tmp_path / "resumed")
    for ours, theirs in zip(resumed, whole):
        assert ours["resumed_from_epoch"] == 1 and ours["status"] == "completed"
        assert [row["epoch"] for row in ours["history"]] == [0, 1, 2]
        assert ours["history"] == theirs["history"]
        for key in ("test/acc", "test/acc_at_best_val", "test/nll"):
            assert ours[key] == theirs[key], key
    changed = train_stack_in(tmp_path / "changed", "optimizer.lr=0.01")  # other settings: a fresh start
    assert all("resumed_from_epoch" not in result and result["status"] == "completed" for result in changed)


def test_members_whose_data_do_not_fit_one_stack_are_refused_before_training(tmp_path):
    with pytest.raises(stacked_run.StackRefused, match="train loaders have .* batches"):
        train_stack_in(tmp_path, jobs=(("data.val_size=150",), ("data.val_size=600",)))
