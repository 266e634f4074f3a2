"""One live process per run folder (adaptive_ls.run_lock): a second one is refused, a dead one's lock is taken over."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest

from adaptive_ls.errors import OutputDirError
from adaptive_ls.run_lock import LOCK_FILE, run_lock
from tests.runs import entry_point, sigkill_after_first_checkpoint


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    with run_lock(tmp_path):  # flock locks of two open files conflict even within one process
        assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(OutputDirError) as error:
            with run_lock(tmp_path):
                pass
    message = str(error.value)
    assert str(tmp_path) in message and f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert "\n" not in message and "hydra.run.dir" in message


def test_the_lock_is_released_when_the_job_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path):
            raise RuntimeError("the job failed")
    with run_lock(tmp_path):  # the next job in this process takes it
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_a_forked_child_does_not_keep_the_folder(tmp_path):
    """A DataLoader worker forked while the lock is held must not hold it after its parent let go (or died)."""
    started, ready = os.pipe()
    with run_lock(tmp_path):
        child = os.fork()
        if child == 0:  # the fork hooks have run once the child runs Python code
            os.write(ready, b"1")
            time.sleep(3)
            os._exit(0)
        assert os.read(started, 1) == b"1"
    try:
        with run_lock(tmp_path):
            pass
    finally:
        os.waitpid(child, 0)
        os.close(started)
        os.close(ready)


@pytest.mark.slow
def test_a_second_process_in_a_live_run_folder_is_refused(tmp_path, monkeypatch):
    settings = ("trainer.max_epochs=80",)  # outlasts the second one's start-up
    run_dir = tmp_path / "run"
    first = entry_point(*settings, run_dir=run_dir, wait=False)
    try:
        lock, deadline = run_dir / LOCK_FILE, time.time() + 120
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "run.log").read_text()[-2000:]
        monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # the second process lists every module it imports
        second = entry_point(*settings, run_dir=run_dir)
        assert first.poll() is None  # refused while the first still runs, not after it
    finally:
        first.wait(timeout=300)
    assert second.returncode == 2
    imports = [line for line in second.stderr.splitlines() if line.startswith("import time:")]
    lines = [line for line in second.stderr.strip().splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: {run_dir} is in use by another live run (pid {first.pid} on "
                               f"{socket.gethostname()})")
    # the lock is taken before torch and Lightning load: a refusal costs a second, not the seconds of their import
    imported = {line.rsplit("|", 1)[-1].strip() for line in imports}
    assert imported and not imported & {"torch", "pytorch_lightning", "lightning"}, sorted(imported)

    assert first.returncode == 0, (tmp_path / "run.log").read_text()[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and len(results["history"]) == 80 and "resumed_from_epoch" not in results
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "csv" / "metrics.csv").is_file()
    assert not list((run_dir / "csv").glob("metrics.until-*"))  # the second did not move the first's log aside


@pytest.mark.slow
def test_a_job_of_a_sweep_in_a_held_folder_fails_alone(tmp_path):
    sweep = tmp_path / "sweep"
    with run_lock(sweep / "0"):
        proc = entry_point("trainer.max_epochs=1", run_dir=sweep, multirun=True)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the sweep goes on past the refused job, then says so
    assert "is in use by another live run" in proc.stdout + proc.stderr
    assert not (sweep / "0" / "results.json").exists()  # that folder's results are not touched


@pytest.mark.slow
def test_the_lock_of_a_killed_job_is_taken_over(tmp_path):
    settings = ("trainer.max_epochs=4",)
    run_dir = tmp_path / "killed"
    job = sigkill_after_first_checkpoint(run_dir, *settings)
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == job.pid  # its lock file is left as it was

    rerun = entry_point(*settings, run_dir=run_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["resumed_from_epoch"] >= 0
