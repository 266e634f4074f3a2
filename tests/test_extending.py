"""Extending the package as the README says: a policy, a noise kind and a callback, each one class (tests/toys.py)
and one yaml in the user's own config folder; their settings reach results.json, the W&B config and the report."""
from __future__ import annotations

import json

import pytest

from adaptive_ls.report import report
from tests import wandb_records
from tests.runs import DIGITS_ON_CPU, entry_point


@pytest.mark.slow
def test_a_new_policy_noise_kind_and_callback_are_one_class_and_one_yaml_each(tmp_path, wandb_env):
    conf = tmp_path / "my_conf"
    (conf / "smoothing").mkdir(parents=True)
    (conf / "noise").mkdir()
    (conf / "smoothing" / "halved.yaml").write_text("_target_: tests.toys.HalvedEps\neps: 0.3\n")
    (conf / "noise" / "every_nth.yaml").write_text("_target_: tests.toys.EveryNth\nstep: 5\n")
    run_dir = tmp_path / "sweep"
    proc = entry_point(f"hydra.searchpath=[file://{conf}]", "smoothing=halved", "noise=every_nth", "logger=wandb",
                       "+callbacks.counter._target_=tests.toys.EpochCounter", "+callbacks.counter.offset=10",
                       "trainer.max_epochs=2", "model.width=8", run_dir=run_dir, preset=DIGITS_ON_CPU, multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = run_dir / "0"
    results = json.loads((job / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["smoothing"] == "halved" and results["smoothing/eps"] == 0.3
    assert results["noise"] == "every_nth" and results["noise/step"] == 5
    assert results["noise/realized_rate"] == pytest.approx(0.2, abs=0.01)  # every 5th label
    assert [row["smoothing/eps_mean"] for row in results["history"]] == pytest.approx([0.15, 0.15])
    assert [row["toy/epochs"] for row in results["history"]] == [11.0, 12.0]  # the callback ran, with its setting

    [run] = wandb_records.offline_runs(job)
    record = wandb_records.read_offline_run(run, wait_s=30)
    assert record.config["smoothing"]["eps"] == 0.3 and record.config["noise"]["step"] == 5
    assert record.tags[:2] == ["halved", "every_nth"] and record.name.startswith("0-halved-every_nth")

    report([run_dir])
    table = (run_dir / "report.csv").read_text()
    assert "halved" in table and "every_nth" in table
