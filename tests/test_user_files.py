"""What a user made is theirs: a refused command leaves a run folder byte-identical (``.hydra/`` and ``train.log``
included), a results.json the package did not write survives, a moved run folder continues and is re-tested, a
sweep with a failed job says so in its exit code, a report of nothing writes nothing; broken files are named in one
line (adaptive_ls.ownership, adaptive_ls.resume, adaptive_ls.data_files). Real processes, real files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptive_ls.config import ConfigError, OutputDirError
from adaptive_ls.resume import plan_resume
from tests.runs import compose_run, entry_point, run_in, write_cifar10, write_tree

CRASH = ("+callbacks.crash._target_=tests.runs.CrashAt", "+callbacks.crash.epoch=1")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


@pytest.mark.slow
def test_a_refused_command_leaves_a_completed_run_folder_byte_identical(tmp_path):
    run_dir = tmp_path / "run"
    first = entry_point("trainer.max_epochs=1", run_dir=run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(run_dir)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log"} <= set(before)
    assert "output_subdir: .hydra" in before[".hydra/hydra.yaml"].decode()  # the record says where it lives
    # other settings in a completed folder, and a bad setting there: both refused, the folder untouched
    for overrides in (("trainer.max_epochs=1", "smoothing=fixed"), ("smoothing=fixed", "smoothing.eps=1.5")):
        proc = entry_point(*overrides, run_dir=run_dir)
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error_line(proc)
        assert "already holds a completed run" in line or "smoothing.eps=1.5" in line
        assert snapshot(run_dir) == before


@pytest.mark.slow
def test_a_results_json_the_package_did_not_write_is_never_replaced(tmp_path):
    for name, content in (("foreign", '{"accuracy": 0.93, "note": "my own numbers"}\n'), ("unreadable", "{not json")):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "results.json").write_text(content)
        proc = entry_point("trainer.max_epochs=1", run_dir=run_dir)
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error_line(proc)
        assert str(run_dir / "results.json") in line and "hydra.run.dir" in line
        assert ("was not written by adaptive_ls" if name == "foreign" else "cannot be read") in line
        assert snapshot(run_dir) == {"results.json": content.encode(), "run.lock": b""}


@pytest.mark.slow
def test_a_moved_run_folder_continues_and_a_moved_completed_one_is_tested_again(tmp_path):
    old, new = tmp_path / "old", tmp_path / "elsewhere" / "new"
    crashed = entry_point("trainer.max_epochs=2", *CRASH, run_dir=old)
    assert crashed.returncode == 1 and (old / "checkpoints" / "last.ckpt").is_file()
    new.parent.mkdir()
    shutil.move(str(old), str(new))  # its paths (trainer.default_root_dir, checkpoint folders) are the old folder's
    resumed = entry_point("trainer.max_epochs=2", *CRASH[:1], "+callbacks.crash.epoch=5", run_dir=new)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((new / "results.json").read_text())
    assert results["status"] == "completed" and results["resumed_from_epoch"] == 0
    assert len(results["history"]) == 2 and results["output_dir"] == str(new)

    copied = tmp_path / "copied"
    shutil.copytree(new, copied)
    retested = entry_point("trainer.max_epochs=2", "resume=true", run_dir=copied)
    assert retested.returncode == 0, retested.stderr[-3000:]
    again = json.loads((copied / "results.json").read_text())
    assert again["status"] == "completed" and again["test/acc"] == results["test/acc"]
    # a changed setting is still refused, naming it alone (the folder's own path is not a setting)
    with pytest.raises(OutputDirError) as error:
        run_in(copied, "trainer.max_epochs=3", "resume=true")
    assert "other settings (trainer.max_epochs: 2 -> 3)" in str(error.value)


@pytest.mark.slow
def test_a_sweep_with_a_refused_job_runs_the_others_then_exits_1(tmp_path):
    sweep = tmp_path / "sweep"
    proc = entry_point("trainer.max_epochs=1", "data.clean_val=true,no", run_dir=sweep, multirun=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert json.loads((sweep / "0" / "results.json").read_text())["status"] == "completed"
    refused = json.loads((sweep / "1" / "results.json").read_text())
    assert refused["status"] == "failed" and "data.clean_val='no': allowed are true, false" in refused["error"]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: sweep finished with 1 of 2 jobs failed or refused (job 1): each job's train.log and results.json "
        "say why")


def test_a_report_of_a_folder_without_jobs_writes_nothing_and_fails(tmp_path, capsys):
    from adaptive_ls import report

    empty = tmp_path / "sweep"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    assert report.main([str(empty)]) == 2
    assert "no job folders under" in capsys.readouterr().err
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]


# -- broken files ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_truncated_cifar10_batch_is_named(tmp_path):
    write_cifar10(tmp_path / "cifar")
    batch = tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    for verify in ("true", "false"):  # not mistaken for a re-encoded copy that verify=false would load
        proc = entry_point("data=cifar10", f"data.root={tmp_path / 'cifar'}", f"data.verify={verify}",
                           run_dir=tmp_path / f"run-{verify}")
        assert proc.returncode == 2, proc.stderr[-3000:]
        line = one_error_line(proc)
        assert line.startswith(f"error: {batch} is truncated (5000 bytes") and "data.download=true" in line


def test_a_corrupt_image_is_named_and_a_corrupt_decode_cache_is_rebuilt(tmp_path, caplog):
    write_tree(tmp_path / "tree")
    settings = ("data=image_folder", f"data.root={tmp_path / 'tree'}", "data.val_size=3", "data.batch_size=4",
                "trainer.max_epochs=1")
    run_in(tmp_path / "first", *settings)
    (cache,) = (tmp_path / "tree" / ".adaptive_ls_cache").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # a disk that filled up, a copy cut short
    caplog.set_level("INFO", logger="adaptive_ls")
    assert run_in(tmp_path / "second", *settings)["status"] == "completed"
    rebuilt = [r.getMessage() for r in caplog.records if "decode cache" in r.getMessage() and "unreadable" in
               r.getMessage()]
    assert len(rebuilt) == 1 and str(cache) in rebuilt[0] and "\n" not in rebuilt[0]
    assert torch.load(cache, weights_only=True)["train_images"].shape[0] == 30  # whole again: 10 images of each class

    image = tmp_path / "tree" / "train" / "dog" / "003.png"
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(ConfigError) as error:
        run_in(tmp_path / "third", *settings)
    assert str(error.value).startswith(f"{image} is truncated") and "\n" not in str(error.value)
    image.write_bytes(b"these bytes are no image")
    with pytest.raises(ConfigError, match=rf"^{image} is corrupt or not an image"):
        run_in(tmp_path / "fourth", *settings)


@pytest.mark.parametrize("cut", ["empty", "truncated"])
def test_an_empty_or_truncated_checkpoint_is_called_that(tmp_path, cut):
    cfg = compose_run(tmp_path, "resume=true")
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": {"w": torch.zeros(1000)}}, last)
    last.write_bytes(b"" if cut == "empty" else last.read_bytes()[:2000])
    with pytest.raises(OutputDirError) as error:
        plan_resume(cfg)
    said = "the file is empty (0 bytes)" if cut == "empty" else "the file is truncated or corrupt (2000 bytes"
    assert f"cannot continue from {last}: {said}" in str(error.value) and "\n" not in str(error.value)
