"""W&B logging: mode resolution, one offline run per job (finished even when the job fails), the record-log reader."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from adaptive_ls import loggers
from adaptive_ls.train import run
from tests import wandb_records
from tests.runs import Crash, compose_run, entry_point

# Each job here starts and finishes a W&B run: 3 training batches an epoch keep it short.
THREE_BATCHES = "++trainer.limit_train_batches=3"


# -- mode --------------------------------------------------------------------------------------------------------------


def test_auto_mode_is_offline_without_credentials_and_online_with_them(wandb_env, monkeypatch):
    assert loggers.resolve_mode("auto") == "offline"
    netrc = Path(wandb_env) / "netrc"
    netrc.parent.mkdir(parents=True, exist_ok=True)
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "a" * 40 + "\n")
    netrc.chmod(0o600)
    assert loggers.has_credentials()
    assert loggers.resolve_mode("auto") == "online"
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "b" * 40)
    assert loggers.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the environment decides `auto` too
    assert loggers.resolve_mode("auto") == "offline"
    assert loggers.resolve_mode("disabled") == "disabled"  # an explicit mode wins


def test_bad_modes_fail_early_with_the_key_to_change(wandb_env):
    with pytest.raises(ValueError, match=r"^mode='sometimes'.*auto, online, offline, disabled"):
        loggers.resolve_mode("sometimes")
    with pytest.raises(ValueError, match=r"^mode=online but no W&B credentials"):
        loggers.resolve_mode("online")


# -- one run per job ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_job_writes_one_offline_run_with_history_summary_config_and_media(wandb_env, tmp_path):
    out = tmp_path / "job"
    cfg = compose_run(out, THREE_BATCHES, "logger=wandb", "smoothing=fixed", "smoothing.eps=0.2", "noise.rate=0.3",
                      "logger.wandb.tags=[mine]")
    results = run(cfg)

    runs = wandb_records.offline_runs(out)
    assert len(runs) == 1 and runs[0].parent == out / "wandb"  # inside the job's folder
    rec = wandb_records.read_offline_run(runs[0], wait_s=30)
    assert rec.exit_code == 0
    assert rec.group == out.parent.name + "-" + out.name and rec.job_type == "train"
    assert rec.tags == ["fixed", "symmetric", "rate=0.3", "mine"]
    assert rec.name == "fixed-symmetric0.3-seed0"
    assert rec.config["smoothing"]["eps"] == 0.2 and rec.config["noise"]["rate"] == 0.3  # the resolved Hydra config
    assert rec.config["paths"]["output_dir"] == str(out)
    epochs = [h for h in rec.history if "train/loss" in h]
    assert [h["epoch"] for h in epochs] == [0, 1]
    assert all(h["smoothing/eps_mean"] == pytest.approx(0.2) for h in epochs)
    assert sum("val/acc" in h for h in rec.history) >= 2
    media = rec.history[-1]
    assert media["noise/transition_matrix"]["_type"] == "table-file"
    assert media["noise/transition_matrix"]["nrows"] == 10
    assert media["test/reliability_diagram"]["_type"] == "image-file"
    for key in ("test/acc", "test/ece", "test/nll", "val/acc_best", "test/acc_at_best_val", "noise/realized_rate"):
        assert rec.summary[key] == pytest.approx(results[key], rel=1e-6), key  # the summary is results.json
    assert rec.summary["status"] == "completed"
    saved = json.loads((out / "results.json").read_text())
    assert saved["wandb/id"] == rec.id and saved["wandb/group"] == rec.group and saved["wandb/mode"] == "offline"
    assert (out / "noise_transition.png").is_file() and (out / "reliability.png").is_file()
    assert not (Path.cwd() / "wandb").exists()


@pytest.mark.slow
def test_failed_job_finishes_its_run_and_the_next_job_gets_a_new_one(wandb_env, tmp_path):
    # fails after the run has started
    bad = compose_run(tmp_path / "bad", THREE_BATCHES, "logger=wandb", "data.val_size=100000")
    with pytest.raises(ValueError, match="data.val_size=100000"):
        run(bad)
    good = compose_run(tmp_path / "good", THREE_BATCHES, "logger=wandb", "trainer.max_epochs=1")
    run(good)

    failed = wandb_records.read_offline_run(wandb_records.offline_runs(tmp_path / "bad")[0], wait_s=30)
    assert failed.exit_code == 1
    assert failed.summary["status"] == "failed" and "data.val_size=100000" in failed.summary["error"]
    assert failed.config["data"]["val_size"] == 100000  # a failed job still shows what it was asked to do
    recorded = json.loads((tmp_path / "bad" / "results.json").read_text())
    assert recorded["status"] == "failed" and recorded["wandb/id"] == failed.id
    done = wandb_records.read_offline_run(wandb_records.offline_runs(tmp_path / "good")[0], wait_s=30)
    assert done.exit_code == 0 and done.id != failed.id
    assert not any("train/loss" in h for h in failed.history)  # the second job did not log into the first run


@pytest.mark.slow
def test_a_resumed_job_logs_into_its_first_run_and_a_refused_one_writes_nothing(wandb_env, tmp_path):
    out = tmp_path / "job"
    crash = ("+callbacks.crash._target_=tests.runs.CrashAt", "+callbacks.crash.epoch=1")
    first = compose_run(out, THREE_BATCHES, "logger=wandb", *crash)
    with pytest.raises(Crash):
        run(first)
    resumed = compose_run(out, THREE_BATCHES, "logger=wandb")  # the same job again, same folder: from last.ckpt
    results = run(resumed)
    assert results["resumed_from_epoch"] == 0
    attempts = [wandb_records.read_offline_run(path, wait_s=30) for path in wandb_records.offline_runs(out)]
    assert len(attempts) == 2 and attempts[0].id == attempts[1].id  # `wandb sync` merges them into one run
    assert json.loads((out / "results.json").read_text())["wandb/id"] == attempts[0].id

    files_before = sorted(p.relative_to(out) for p in out.rglob("*"))
    again = compose_run(out, THREE_BATCHES, "logger=wandb")  # the folder now holds a completed run: refused, left alone
    with pytest.raises(Exception, match="already holds a completed run"):
        run(again)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files_before


@pytest.mark.slow
def test_disabled_mode_logs_nothing(wandb_env, tmp_path):
    cfg = compose_run(tmp_path / "job", THREE_BATCHES, "logger=wandb", "logger.wandb.mode=disabled",
                      "trainer.max_epochs=1")
    run(cfg)
    assert not (tmp_path / "job" / "wandb").exists()
    assert (tmp_path / "job" / "csv" / "metrics.csv").is_file()  # the CSV log is kept alongside


# -- the record-log reader ---------------------------------------------------------------------------------------------


def _write_record_log(path: Path, payloads: list[bytes]) -> None:
    """A LevelDB-style log as wandb writes it: 7-byte file header, 32 KiB blocks, FULL/FIRST/MIDDLE/LAST records."""
    block, out = 32768, bytearray(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    for data in payloads:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\x00" * left
                left = block
            chunk, data = data[: left - 7], data[left - 7:]
            kind = (1 if first else 4) if not data else (2 if first else 3)
            out += struct.pack("<IHB", zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF, len(chunk), kind)
            out += chunk
            first = False
            if not data:
                break
    path.write_bytes(bytes(out))


def test_reader_reassembles_records_split_across_blocks_and_rejects_corruption(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    run_record = pb.Record()
    run_record.run.run_id, run_record.run.run_group = "abc", "g"
    run_record.run.tags.extend(["x", "y"])
    records.append(run_record.SerializeToString())
    for step in range(3):  # ~30 KB each: every one crosses a block boundary
        history = pb.Record()
        item = history.history.item.add()
        item.key, item.value_json = "big", json.dumps("v" * 30000 + str(step))
        item = history.history.item.add()
        item.nested_key.extend(["img", "width"])
        item.value_json = str(step)
        records.append(history.SerializeToString())
    exit_record = pb.Record()
    exit_record.exit.exit_code = 3
    records.append(exit_record.SerializeToString())
    path = tmp_path / "run-abc.wandb"
    _write_record_log(path, records)

    rec = wandb_records.read_offline_run(path)
    assert (rec.id, rec.group, rec.tags, rec.exit_code) == ("abc", "g", ["x", "y"], 3)
    assert [h["big"][-1] for h in rec.history] == ["0", "1", "2"]
    assert [h["img"] for h in rec.history] == [{"width": 0}, {"width": 1}, {"width": 2}]

    data = bytearray(path.read_bytes())
    data[40000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        wandb_records.read_offline_run(path)
    path.write_bytes(b"not a run file")
    with pytest.raises(ValueError, match="not a W&B run file"):
        wandb_records.read_offline_run(path)


@pytest.mark.slow
def test_a_bad_wandb_mode_stops_the_job_in_one_line(wandb_env, tmp_path):
    done = entry_point("logger=wandb", "logger.wandb.mode=sometimes", run_dir=tmp_path / "job")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: logger.wandb.mode='sometimes': allowed are auto, online, offline, disabled"
    assert not (tmp_path / "job" / "wandb").exists()
