"""Signals: SIGTERM/SIGINT stop a job at the next step with 143/130, a sweep stops and says how to continue, and
submitit's requeue signal hands a preempted job back to submitit, which continues it from its checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from adaptive_ls.callbacks import JobInterrupted, StopOnSignal
from tests.runs import TINY, entry_point, run_in
from tests.test_faults import comparable
from tests.wandb_records import read_offline_run

SETTINGS = ("trainer.max_epochs=4", "smoothing=adaptive", "smoothing.ema=0.5")


def results(job: Path) -> dict:
    path = job / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def wait_for(path: Path, proc, seconds: float = 240) -> None:
    """Until ``path`` exists (the job is past its first epoch, inside the fit) or the process ended."""
    deadline = time.time() + seconds
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


def test_exit_codes_and_status():
    assert JobInterrupted(signal.SIGTERM).exit_code == 143 and JobInterrupted(signal.SIGINT).exit_code == 130
    assert JobInterrupted(signal.SIGTERM).status == "interrupted"
    assert JobInterrupted(signal.SIGUSR2, requeue=print).status == "preempted"
    assert not isinstance(JobInterrupted(signal.SIGTERM), Exception)  # Hydra's run_job catches Exception only


def test_handlers_live_for_the_fit_only(monkeypatch):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    trainer, stop = SimpleNamespace(world_size=1), StopOnSignal()
    stop.on_fit_start(trainer, None)
    signal.signal(signal.SIGTERM, lambda *_: None)  # Lightning registers its own between the two hooks
    stop.on_train_start(trainer, None)
    assert signal.getsignal(signal.SIGTERM) == stop._on_signal == signal.getsignal(signal.SIGINT)
    stop.on_train_batch_start(trainer, None, None, 0)  # no signal: goes on
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(JobInterrupted) as stopped:
        stop.on_train_batch_end(trainer, None, None, None, 0)
    assert stopped.value.signal == signal.SIGTERM and stopped.value.requeue is None
    stop.on_exception(trainer, None, stopped.value)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_under_submitit_sigterm_is_left_to_it_and_its_signal_requeues(monkeypatch):
    monkeypatch.setenv("SUBMITIT_FOLDER", "/nowhere")
    submitit_bypass, submitit_requeue = (lambda *_: None), (lambda *_: None)
    old = signal.signal(signal.SIGTERM, submitit_bypass), signal.signal(signal.SIGUSR2, submitit_requeue)
    try:
        trainer, stop = SimpleNamespace(world_size=1), StopOnSignal()
        stop.on_fit_start(trainer, None)
        signal.signal(signal.SIGTERM, lambda *_: None)  # Lightning's: it would end the job with status 0
        stop.on_train_start(trainer, None)
        assert signal.getsignal(signal.SIGTERM) is submitit_bypass
        os.kill(os.getpid(), signal.SIGUSR2)
        with pytest.raises(JobInterrupted) as stopped:
            stop.on_train_batch_start(trainer, None, None, 0)
        assert stopped.value.status == "preempted" and stopped.value.requeue is submitit_requeue
        stop.on_fit_end(trainer, None)
        assert signal.getsignal(signal.SIGUSR2) is submitit_requeue
    finally:
        signal.signal(signal.SIGTERM, old[0]), signal.signal(signal.SIGUSR2, old[1])


def test_the_submitit_launcher_resubmits_the_same_job():
    """What submitit pickles on requeue: the launcher called again with the job's own arguments, so the requeued
    job gets the same job number and sweep dir, hence the same folder, and resume=auto continues it there."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

    launcher = LocalLauncher(submitit_folder="x", timeout_min=1)
    arguments = (["seed=1"], "hydra.sweep.dir", 3, "job_id_for_3", {})
    delayed = launcher.checkpoint(*arguments)
    assert delayed.function is launcher and delayed.args == arguments


@pytest.mark.slow
def test_sigterm_stops_a_run_and_running_it_again_finishes_it_exactly(tmp_path):
    run_dir = tmp_path / "run"
    job = entry_point(*SETTINGS, "logger=wandb", "logger.wandb.mode=offline", run_dir=run_dir, wait=False)
    wait_for(run_dir / "checkpoints" / "last.ckpt", job)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 143, (tmp_path / "run.log").read_text()[-3000:]
    stopped = results(run_dir)
    assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
    assert f"hydra.run.dir={run_dir}" in stopped["error"]
    log = (tmp_path / "run.log").read_text()
    assert "run interrupted by SIGTERM; continue it with: adaptive-ls" in log
    assert "Received SIGTERM" not in log  # Lightning's handler never ran
    wandb_run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*")), wait_s=10)
    assert wandb_run.exit_code == 143 and wandb_run.summary["status"] == "interrupted"

    again = entry_point(*SETTINGS, run_dir=run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = results(run_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 0
    assert comparable(resumed) == comparable(run_in(tmp_path / "whole", *SETTINGS))


@pytest.mark.slow
def test_sigint_stops_a_sweep_and_running_it_again_finishes_it(tmp_path):
    sweep, grid = tmp_path / "sweep", ("trainer.max_epochs=3", "seed=0,1,2")
    job = entry_point(*grid, run_dir=sweep, multirun=True, wait=False)
    wait_for(sweep / "1" / "checkpoints" / "last.ckpt", job)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=120) == 130, (tmp_path / "sweep.log").read_text()[-3000:]
    assert results(sweep / "0")["status"] == "completed"
    assert results(sweep / "1")["status"] == "interrupted" and results(sweep / "1")["signal"] == "SIGINT"
    assert not (sweep / "2").exists()  # never started
    lines = [line for line in (tmp_path / "sweep.log").read_text().splitlines()
             if line.startswith("sweep stopped by SIGINT")]  # the line printed to stderr (the log has it too)
    assert lines == [f"sweep stopped by SIGINT: done: job 0; interrupted: job 1; not started: 1 of 3; continue it "
                     f"with: adaptive-ls -m {' '.join(TINY)} {' '.join(grid)} hydra.sweep.dir={sweep}"], lines

    again = entry_point(*grid, run_dir=sweep, multirun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [results(sweep / str(i))["status"] for i in range(3)] == ["completed"] * 3
    assert results(sweep / "1")["resumed_from_epoch"] >= 0


def submitit_task(sweep: Path) -> int:
    """The pid of the submitit task running a job of ``sweep`` (submitit's local controller starts it)."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and any(str(sweep).encode() in part for part in command):
            return int(proc.name)
    raise AssertionError("no submitit task found")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the task in /proc")
def test_submitit_local_requeues_a_preempted_job_and_it_continues(tmp_path):
    """USR2 is what submitit's controller sends before the time limit (and SLURM, with --signal): the job stops as
    preempted, submitit requeues it, and the new attempt continues in the same folder from its checkpoint."""
    sweep = tmp_path / "sweep"
    job = entry_point(*SETTINGS, "seed=0", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=3",
                      run_dir=sweep, multirun=True, wait=False)
    wait_for(sweep / "0" / "checkpoints" / "last.ckpt", job)
    os.kill(submitit_task(sweep), signal.SIGUSR2)
    assert job.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    done = results(sweep / "0")
    assert done["status"] == "completed" and done["resumed_from_epoch"] >= 0
    task_log = "\n".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "job preempted by SIGUSR2: submitit requeues it" in task_log
    assert re.search(r"Requeued job \d+", task_log)
    assert comparable(done) == comparable(run_in(tmp_path / "whole", *SETTINGS, "seed=0"))
