"""Checkpoints that survive a kill mid-write (AtomicCheckpointIO), and a resume past an unreadable last.ckpt."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from omegaconf import OmegaConf

from adaptive_ls.errors import OutputDirError
from adaptive_ls.resume import AtomicCheckpointIO, plan_resume
from tests.runs import Crash, compose_run, run_in
from tests.test_faults import STATEFUL, comparable


def test_a_checkpoint_replaces_the_previous_one_whole(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    stale = tmp_path / "checkpoints" / ".last.ckpt.99999999.tmp"  # left by a writer killed mid-write
    stale.parent.mkdir()
    stale.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, path)
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "weights": torch.ones(1000)}, path)
    before = path.read_bytes()

    def dies_midway(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 1, "weights": torch.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def fake_checkpoint(path, epoch: int, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "adaptive_ls": {"config": config, "labels_hash": "abc"}}, path)


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_an_unreadable_last_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, caplog):
    cfg = compose_run(tmp_path)
    config = OmegaConf.to_container(cfg, resolve=True)
    folder = tmp_path / "checkpoints"
    for name, epoch in (("last.ckpt", 5), ("best-epoch001.ckpt", 1), ("best-epoch003.ckpt", 3)):
        fake_checkpoint(folder / name, epoch, config)
    truncate(folder / "last.ckpt")
    (folder / "best-epoch004.ckpt").write_bytes(b"not a checkpoint")  # unreadable too: skipped
    with caplog.at_level(logging.WARNING, logger="adaptive_ls.resume"):
        plan = plan_resume(cfg)
    assert plan.checkpoint == folder / "best-epoch003.ckpt" and plan.epoch == 3 and plan.labels_hash == "abc"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "last.ckpt is unreadable" in warnings[0] and "best-epoch003.ckpt" in warnings[0]
    assert "\n" not in warnings[0]

    # the fallback's own settings are checked
    fake_checkpoint(folder / "best-epoch003.ckpt", 3, {**config, "seed": 7})
    with pytest.raises(OutputDirError, match=r"seed: 7 -> 0"):
        plan_resume(cfg)


def test_without_a_readable_checkpoint_the_resume_is_refused(tmp_path):
    cfg = compose_run(tmp_path)
    fake_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 2, OmegaConf.to_container(cfg, resolve=True))
    truncate(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(OutputDirError, match=r"cannot continue from .*last.ckpt: the file is truncated or corrupt"):
        plan_resume(cfg)


@pytest.mark.slow
def test_a_run_whose_last_checkpoint_is_truncated_resumes_exactly_from_its_best(tmp_path, caplog):
    whole = run_in(tmp_path / "whole", *STATEFUL)
    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run_in(run_dir, *STATEFUL, "+callbacks.crash._target_=tests.runs.CrashAt", "+callbacks.crash.epoch=2")
    last = run_dir / "checkpoints" / "last.ckpt"
    (best,) = (p for p in last.parent.glob("best-epoch*.ckpt"))
    truncate(last)

    with caplog.at_level(logging.WARNING, logger="adaptive_ls.resume"):
        resumed = run_in(run_dir, *STATEFUL)
    assert resumed["status"] == "completed"
    assert resumed["resumed_from_epoch"] == int(best.stem.removeprefix("best-epoch"))
    assert resumed["checkpoint/resumed_from"] == str(best)
    assert json.loads((run_dir / "results.json").read_text())["checkpoint/resumed_from"] == str(best)
    assert sum("last.ckpt is unreadable" in r.getMessage() for r in caplog.records) == 1
    assert comparable(resumed) == comparable(whole)  # every metric and the whole history, exactly
