"""hydra/launcher=stacked: a sweep's jobs that differ only in seeds, noise and smoothing train as one stacked model,
and each job's folder reads as the same job's run by the basic launcher: results.json, the CSV log, one W&B run,
single-job Lightning checkpoints.

On a CPU a stack runs its members looped (adaptive_ls.stacking, execution=auto), each through its single net's own
computation, so the stacked jobs' numbers are the basic launcher's exactly. In-process, a resumed stack and a stack
with a NaN member reproduce the uninterrupted, clean stack exactly.
"""
from __future__ import annotations

import json
import math
import os
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import pytest
import torch
from omegaconf import OmegaConf

import adaptive_ls.stacked_run as stacked_run
from adaptive_ls.errors import JobInterrupted, OutputDirError
from adaptive_ls.report import jobs_table, read_jobs
from adaptive_ls.stacked_run import STACK_MARKER, group_jobs, stack_key, stack_refusal
from adaptive_ls.train import run
from hydra_plugins.adaptive_ls_stacked.stacked_launcher import check_execution, check_max_members
from tests import wandb_records
from tests.runs import DIGITS_ON_CPU, Crash, CrashAt, compose, compose_run, entry_point, one_thread

GRID = ("smoothing=fixed,adaptive", "seed=0,1")  # 4 jobs: a batch-wide and a per-sample policy
PRESET = (*DIGITS_ON_CPU, "model.width=8", "logger=wandb")  # with test_best: the best epoch is tested too


def results(sweep_dir: Path) -> dict[str, dict]:
    return {job.name: json.loads((job / "results.json").read_text())
            for job in sorted(sweep_dir.iterdir()) if (job / ".hydra").is_dir()}


def csv_log(folder: Path) -> str:
    return (folder / "csv" / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_stacked_sweep_writes_each_job_as_the_basic_launcher_does(tmp_path, wandb_env):
    stacked = entry_point(*GRID, "hydra/launcher=stacked", run_dir=tmp_path / "stacked", multirun=True,
                          preset=PRESET)
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    basic = entry_point(*GRID, run_dir=tmp_path / "basic", multirun=True, preset=PRESET)
    assert basic.returncode == 0, basic.stderr[-3000:]

    assert "training 4 jobs as one stack" in stacked.stdout + stacked.stderr
    ours, theirs = results(tmp_path / "stacked"), results(tmp_path / "basic")
    assert sorted(ours) == sorted(theirs) == ["0", "1", "2", "3"]
    for job, result in ours.items():
        folder, other = tmp_path / "stacked" / job, tmp_path / "basic" / job
        assert json.loads((folder / STACK_MARKER).read_text())["members"] == [
            str(tmp_path / "stacked" / j) for j in sorted(ours)]
        assert (folder / "noisy_labels.npy").is_file() and (folder / ".hydra" / "overrides.yaml").is_file()
        assert result["status"] == "completed"
        assert set(result) == set(theirs[job]), job
        assert result["history"] == theirs[job]["history"], job  # looped members: the basic launcher's numbers
        for key in ("seed", "smoothing", "noise/labels_hash", "noise/rate", "test/acc", "test/nll", "test/ece",
                    "test/acc_at_best_val", "test/ts_ece", "test/nts_ece", "val/acc_best"):
            assert result[key] == theirs[job][key], (job, key)
        # the same checkpoints, each a single job's: they load into its module and continue as that job
        for key in ("checkpoint/best", "checkpoint/last"):
            assert Path(result[key]).relative_to(folder) == Path(theirs[job][key]).relative_to(other), key
        assert sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt") if "stack" not in p.name) == \
            sorted(p.name for p in (other / "checkpoints").glob("*.ckpt"))
        for name in ("last.ckpt", Path(result["checkpoint/best"]).name):
            mine, single = (torch.load(f / "checkpoints" / name, weights_only=False) for f in (folder, other))
            assert set(mine) >= {"state_dict", "optimizer_states", "loops", "epoch", "global_step", "adaptive_ls"}
            assert mine["epoch"] == single["epoch"] and set(mine["state_dict"]) == set(single["state_dict"])
            assert all(torch.equal(mine["state_dict"][k], single["state_dict"][k]) for k in single["state_dict"])
            here = json.dumps(mine["adaptive_ls"]["config"]).replace(str(tmp_path / "stacked"), str(tmp_path / "basic"))
            assert json.loads(here) == single["adaptive_ls"]["config"]  # the settings a resume checks
        assert csv_log(folder) == csv_log(other)  # the CSV log, every value and its step and epoch
        # one W&B run per job, named, grouped and filled as the basic launcher's
        (run_file,), (their_file,) = wandb_records.offline_runs(folder), wandb_records.offline_runs(other)
        mine, single = (wandb_records.read_offline_run(f, wait_s=30) for f in (run_file, their_file))
        assert mine.exit_code == 0 and mine.name == single.name and mine.tags == single.tags
        assert mine.group == f"{tmp_path.name}-stacked" and mine.config["seed"] == single.config["seed"]
        assert [h["train/loss"] for h in mine.history if "train/loss" in h] == \
            [h["train/loss"] for h in single.history if "train/loss" in h]
        assert mine.summary["test/acc"] == result["test/acc"] and mine.summary["status"] == "completed"
        assert [set(h) for h in mine.history] == [set(h) for h in single.history]  # the same records, media too
        assert any("test/reliability_diagram" in h for h in mine.history) and (folder / "reliability.png").is_file()
        assert result["wandb/id"] == mine.id
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


def test_max_members_and_execution_are_checked():
    assert check_max_members(None) is None and check_max_members(2) == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"hydra.launcher.max_members=.*allowed is null \(all\) or an integer"):
            check_max_members(bad)
    from adaptive_ls.stacking import EXECUTIONS
    from hydra_plugins.adaptive_ls_stacked.stacked_launcher import EXECUTIONS as LAUNCHER_EXECUTIONS

    assert LAUNCHER_EXECUTIONS == EXECUTIONS and check_execution("loop") == "loop"
    with pytest.raises(ValueError, match="hydra.launcher.execution='grouped': allowed are auto, vmap, loop"):
        check_execution("grouped")


def test_the_launcher_is_registered():
    from hydra.core.config_store import ConfigStore

    node = ConfigStore.instance().load("hydra/launcher/stacked.yaml").node
    assert OmegaConf.to_container(node)["max_members"] is None and OmegaConf.to_container(node)["execution"] == "auto"


@pytest.mark.slow
def test_a_job_that_fails_its_checks_runs_alone_and_the_others_still_stack(tmp_path):
    sweep = entry_point("smoothing=fixed", "smoothing.eps=0.1,0.2,1.5", "trainer.max_epochs=1",
                        "hydra/launcher=stacked", run_dir=tmp_path / "sweep", multirun=True)
    assert sweep.returncode == 1, sweep.stderr[-3000:]  # the refused job, said once the others have run
    assert "sweep finished with 1 of 3 jobs failed or refused (job 2)" in sweep.stderr.strip().splitlines()[-1]
    output = sweep.stdout + sweep.stderr
    assert "training 2 jobs as one stack" in output and "job #2 runs alone: " in output
    done = results(tmp_path / "sweep")
    assert [done[j]["status"] for j in ("0", "1", "2")] == ["completed", "completed", "failed"]
    assert "smoothing.eps=1.5" in done["2"]["error"]
    assert (tmp_path / "sweep" / "0" / STACK_MARKER).is_file()
    assert not (tmp_path / "sweep" / "2" / STACK_MARKER).exists()


JOBS = (("smoothing=fixed", "seed=0"), ("smoothing=adaptive", "seed=1"))


def train_stack_in(folder: Path, *overrides: str, jobs=JOBS, poison: Optional[int] = None,
                   callbacks=()) -> list[dict]:
    """A stack of ``jobs``, 3 epochs, trained in-process in ``folder``/<job>; member ``poison`` starts from NaN
    weights; ``callbacks`` for the whole stack (faults)."""
    with ExitStack() as locks, one_thread():
        members = [stacked_run.prepare_member(compose_run(folder / str(i), *job, "trainer.max_epochs=3", *overrides),
                                              locks) for i, job in enumerate(jobs)]
        if poison is not None:
            with torch.no_grad():
                next(members[poison].module.net.parameters()).fill_(float("nan"))
        return stacked_run.train_stack(members, callbacks=callbacks)


@pytest.mark.slow
def test_a_member_whose_loss_turns_nan_fails_alone(tmp_path):
    clean, poisoned = train_stack_in(tmp_path / "clean"), train_stack_in(tmp_path / "poisoned", poison=1)
    assert poisoned[1]["status"] == "failed" and "NonFiniteLossError" in poisoned[1]["error"]
    assert "epoch 0" in poisoned[1]["error"]
    assert json.loads((tmp_path / "poisoned" / "1" / "results.json").read_text())["status"] == "failed"
    assert not (tmp_path / "poisoned" / "1" / "checkpoints" / "last.ckpt").exists()
    assert poisoned[0]["status"] == "completed"
    assert poisoned[0]["history"] == clean[0]["history"] and poisoned[0]["test/acc"] == clean[0]["test/acc"]
    assert (tmp_path / "poisoned" / "0" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_members_checkpoint_is_its_single_jobs(tmp_path):
    """resume=true on a stacked job's folder, run alone: it reloads the job's last.ckpt and tests it again, as it
    does a single run's."""
    stacked = train_stack_in(tmp_path)
    with one_thread():
        again = run(compose_run(tmp_path / "1", *JOBS[1], "trainer.max_epochs=3", "resume=true"))
    assert again["resumed_from_epoch"] == 2 and again["status"] == "completed"
    for key in ("test/acc", "test/nll", "test/acc_at_best_val", "val/acc_best"):
        assert again[key] == stacked[1][key], key
    assert again["history"] == stacked[1]["history"]


@pytest.mark.slow
def test_an_interrupted_stack_continues_from_its_last_checkpoint(tmp_path):
    whole = train_stack_in(tmp_path / "whole")
    for folder in ("resumed", "changed"):
        with pytest.raises(Crash):
            train_stack_in(tmp_path / folder, callbacks=[CrashAt(epoch=2, batch=3)])
        assert (tmp_path / folder / "0" / "checkpoints" / "stack-last.ckpt").is_file()
    resumed = train_stack_in(tmp_path / "resumed")
    for ours, theirs in zip(resumed, whole):
        assert ours["resumed_from_epoch"] == 1 and ours["status"] == "completed"
        assert [row["epoch"] for row in ours["history"]] == [0, 1, 2]
        assert ours["history"] == theirs["history"]
        for key in ("test/acc", "test/acc_at_best_val", "test/nll"):
            assert ours[key] == theirs[key], key
    # other settings: refused, as a single run's folder is (each job's own last.ckpt says so first), and the
    # interrupted stack's checkpoint kept
    refused = r"holds an interrupted (run|stack) with other settings \(.*optimizer.lr: 0.05 -> 0.01"
    with pytest.raises(OutputDirError, match=refused):
        train_stack_in(tmp_path / "changed", "optimizer.lr=0.01")
    assert (tmp_path / "changed" / "0" / "checkpoints" / "stack-last.ckpt").is_file()
    # the same settings on other noisy labels (a changed label file, say): refused too
    marker = tmp_path / "changed" / "0" / "checkpoints" / stacked_run.STACK_MARKER
    saved = json.loads(marker.read_text())
    saved["labels_hashes"][1] = "0" * 16
    marker.write_text(json.dumps(saved))
    with pytest.raises(OutputDirError, match=r"trained on other noisy labels \(job 1 .*trained on 0000000000000000"):
        train_stack_in(tmp_path / "changed")
    assert (tmp_path / "changed" / "0" / "checkpoints" / "stack-last.ckpt").is_file()
    assert not (tmp_path / "resumed" / "0" / "checkpoints" / "stack-last.ckpt").exists()  # completed: not needed


def test_members_whose_data_do_not_fit_one_stack_are_refused_before_training(tmp_path):
    with pytest.raises(stacked_run.StackRefused, match="train loaders have .* batches"):
        train_stack_in(tmp_path, jobs=(("data.val_size=150",), ("data.val_size=600",)))


class SignalAt(CrashAt):
    """Send this process SIGTERM at batch ``batch`` of epoch ``epoch``, as SLURM's preemption does."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_signal_stops_the_stack_records_every_member_interrupted_and_it_continues(tmp_path):
    whole = train_stack_in(tmp_path / "whole")
    with pytest.raises(JobInterrupted):
        train_stack_in(tmp_path / "stopped", callbacks=[SignalAt(1, 3)])
    for job in ("0", "1"):
        recorded = json.loads((tmp_path / "stopped" / job / "results.json").read_text())
        assert recorded["status"] == "interrupted" and recorded["signal"] == "SIGTERM"
    continued = train_stack_in(tmp_path / "stopped")
    for ours, theirs in zip(continued, whole):
        assert ours["status"] == "completed" and ours["resumed_from_epoch"] == 0
        assert ours["history"] == theirs["history"] and ours["test/acc"] == theirs["test/acc"]


@pytest.mark.slow
def test_sigterm_ends_a_stacked_sweep_as_a_job_and_the_same_command_continues_it(tmp_path):
    """From the command line: SIGTERM once the stack has a checkpoint, exit code 143 and every job interrupted with
    the command that continues; that command then finishes the sweep from the stack's checkpoint."""
    import time

    grid = ("smoothing=fixed,adaptive", "trainer.max_epochs=40", "hydra/launcher=stacked")
    sweep = tmp_path / "sweep"
    job = entry_point(*grid, run_dir=sweep, multirun=True, wait=False)
    checkpoint, deadline = sweep / "0" / "checkpoints" / "stack-last.ckpt", time.time() + 240
    while not checkpoint.exists() and job.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 128 + signal.SIGTERM
    log = (tmp_path / "sweep.log").read_text()
    assert "interrupted: jobs 0, 1;" in log and "continue it with: " in log and f"hydra.sweep.dir={sweep}" in log
    stopped = results(sweep)
    assert [stopped[j]["status"] for j in ("0", "1")] == ["interrupted", "interrupted"]
    assert all(r["signal"] == "SIGTERM" for r in stopped.values())
    again = entry_point(*grid, run_dir=sweep, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    done = results(sweep)
    assert all(r["status"] == "completed" and r["resumed_from_epoch"] >= 0 for r in done.values())
    assert [len(r["history"]) for r in done.values()] == [40, 40]


@pytest.mark.slow
def test_a_member_that_fails_in_its_tests_fails_alone(tmp_path):
    first, second = train_stack_in(tmp_path, "+callbacks.fail._target_=tests.toys.FailsInTestsOf",
                                   "+callbacks.fail.job=0",
                                   "+callbacks.fail.folder=${paths.output_dir}")
    recorded = json.loads((tmp_path / "0" / "results.json").read_text())
    assert first["status"] == recorded["status"] == "failed" and "no memory left" in recorded["error"]
    assert second["status"] == "completed" and "test/acc" in second


@pytest.mark.slow
def test_epochs_without_validation_leave_val_keys_out_of_the_history_as_a_single_run_does(tmp_path):
    every_other = "++trainer.check_val_every_n_epoch=2"
    stacked = train_stack_in(tmp_path / "stack", every_other)
    with one_thread():
        single = run(compose_run(tmp_path / "single", *JOBS[0], "trainer.max_epochs=3", every_other))
    assert [sorted(row) for row in stacked[0]["history"]] == [sorted(row) for row in single["history"]]
    assert "val/acc" not in stacked[0]["history"][0] and "val/acc" in stacked[0]["history"][1]


@pytest.mark.slow
def test_a_continued_stack_keeps_the_record_of_a_member_that_had_failed(tmp_path):
    with pytest.raises(Crash):
        train_stack_in(tmp_path, poison=1, callbacks=[CrashAt(2, 3)])
    failed = json.loads((tmp_path / "1" / "results.json").read_text())
    assert failed["status"] == "failed" and "epoch 0" in failed["error"]
    healthy, again = train_stack_in(tmp_path)
    assert healthy["status"] == "completed" and healthy["resumed_from_epoch"] == 1
    assert again == failed == json.loads((tmp_path / "1" / "results.json").read_text())


def test_under_optuna_a_failed_member_is_a_failed_trial_and_the_others_report_their_metric(monkeypatch):
    from hydra.core.utils import JobReturn, JobStatus

    from hydra_plugins.adaptive_ls_stacked.stacked_launcher import StackedLauncher

    from types import SimpleNamespace

    members = [stacked_run.Member(job=SimpleNamespace(cfg=OmegaConf.create({})), module=None) for _ in range(2)]
    prepared = {0: (JobReturn(), members[0]), 1: (JobReturn(), members[1])}
    outcome = [{"status": "failed", "error": "NonFiniteLossError: NaN"}, {"status": "completed", "val/acc_best": 0.5}]
    for optuna in (True, False):
        monkeypatch.setattr(StackedLauncher, "marks_failures", staticmethod(lambda member: optuna))
        returns = StackedLauncher().train_prepared(prepared, members, None, lambda members: outcome)
        assert returns[1].status == JobStatus.COMPLETED and returns[1].return_value == 0.5
        if optuna:
            assert returns[0].status == JobStatus.FAILED
            with pytest.raises(RuntimeError, match="NaN"):
                returns[0].return_value  # what Hydra raises for a failed trial
        else:
            assert returns[0].status == JobStatus.COMPLETED and math.isnan(returns[0].return_value)


@pytest.mark.slow
def test_a_users_callback_runs_per_member_and_stops_its_own_job(tmp_path):
    """One class (tests/toys.py) and one yaml in the user's config folder, in a stack of 3: each job has its own
    callback (its own offset, its own stop), a stopped job is masked while the others train on, and every job's
    numbers are its single run's (looped members on a CPU); Lightning's EarlyStopping works per member too."""
    conf = tmp_path / "my_conf" / "callbacks"
    conf.mkdir(parents=True)
    (conf / "with_toy.yaml").write_text("defaults:\n  - default\ntoy:\n  _target_: tests.toys.MemberEpochs\n"
                                        "  offset: ${seed}\n  stop_after: ${seed}\n")
    grid = (f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "callbacks=with_toy", "seed=1,2,4",
            "trainer.max_epochs=4", "+callbacks.early._target_=pytorch_lightning.callbacks.EarlyStopping",
            "+callbacks.early.monitor=val/acc", "+callbacks.early.mode=max", "+callbacks.early.min_delta=1.0",
            "+callbacks.early.patience=2")
    stacked = entry_point(*grid, "hydra/launcher=stacked", run_dir=tmp_path / "stacked", multirun=True)
    assert stacked.returncode == 0, stacked.stderr[-3000:]
    assert "training 3 jobs as one stack" in stacked.stdout + stacked.stderr
    basic = entry_point(*grid, run_dir=tmp_path / "basic", multirun=True)
    assert basic.returncode == 0, basic.stderr[-3000:]
    ours, theirs = results(tmp_path / "stacked"), results(tmp_path / "basic")
    # seeds 1 and 2 stop themselves after 1 and 2 epochs; EarlyStopping (patience 2) stops seed 4 after 3 of 4
    assert [len(ours[job]["history"]) for job in ("0", "1", "2")] == [1, 2, 3]
    for job, seed in (("0", 1), ("1", 2), ("2", 4)):
        assert ours[job]["status"] == "completed"
        assert [row["toy/epochs"] for row in ours[job]["history"]] == [seed + 1 + e for e in
                                                                        range(len(ours[job]["history"]))]
        assert ours[job]["history"] == theirs[job]["history"], job
        for key in ("test/acc", "test/nll", "test/acc_at_best_val", "val/acc_best"):
            assert ours[job][key] == theirs[job][key], (job, key)
        log = (tmp_path / "stacked" / job / "train.log").read_text()
        assert "epoch 1/4: " in log and "val/acc" in log  # each job's own epoch lines in its log
