"""scripts/benchmark.py's stacked-members throughput and its sweep-by-launcher timing: what they report, not how fast
(the figures depend on the machine). Each call trains a few steps or a two-job sweep of one epoch."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.runs import REPO_ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", REPO_ROOT / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


TINY_THROUGHPUT = ["--model", "small_cnn", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--num-images", "32",
                   "--threads", "1"]


def test_members_reports_each_stack_size_against_the_single_job(tmp_path):
    benchmark = load_benchmark()
    path = tmp_path / "members.json"
    out = benchmark.main([*TINY_THROUGHPUT, "--members", "2,3", "--stack-execution", "loop", "--json", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(out, default=str))
    rows = {row["members"]: row for row in out["members"]}
    assert sorted(rows) == [1, 2, 3]  # M=1, the reference, is added
    assert rows[1]["execution"] == "single" and rows[2]["execution"] == rows[3]["execution"] == "loop"
    assert out["stack_execution"] == "loop" and out["package_img_per_s"] == rows[1]["img_per_s"]
    for m, row in rows.items():
        assert row["img_per_s"] > 0 and row["peak_mb"] > 0
        assert row["img_per_s_per_member"] == pytest.approx(row["img_per_s"] / m)
        assert row["vs_single"] == pytest.approx(row["img_per_s"] / rows[1]["img_per_s"])
    assert "raw_img_per_s" not in out and "dataloader_img_per_s" not in out  # mode package only


@pytest.mark.parametrize("argv,message", [
    (["--members", "1,4", "--modes", "package,raw"], "mode package only"),
    (["--members", "0,2"], "integers >= 1"),
    (["--members", "2", "--policy", "fixed,adaptive"], "one policy"),
    (["--sweep", "--launchers", "basic,ray"], "--launchers basic,ray"),
])
def test_bad_members_and_launchers_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        load_benchmark().parse_args(argv)
    assert message in capsys.readouterr().err


def test_sweep_overrides_default_to_the_quickstart_and_add_epochs_only_when_given():
    benchmark = load_benchmark()
    assert benchmark.sweep_overrides(benchmark.parse_args(["--sweep"])) == [
        "experiment=quickstart", "trainer.enable_progress_bar=false"]
    args = benchmark.parse_args(["--sweep", "--sweep-epochs", "2", "--sweep-overrides", "data=digits"])
    assert benchmark.sweep_overrides(args) == ["data=digits", "trainer.max_epochs=2"]
    assert args.launchers == ["basic", "joblib", "stacked"]


def test_jobs_are_compared_by_folder_number():
    benchmark = load_benchmark()
    basic = {"0": {"test/acc": 0.5, "test/ece": 0.1, "val/acc_best": 0.4}, "1": {"test/acc": 0.7}, "2": {}}
    other = {"0": {"test/acc": 0.52, "test/ece": 0.1, "val/acc_best": float("nan")}, "1": {"test/acc": 0.6},
             "3": {}}
    same = benchmark.compare_jobs(basic, other)
    assert same["jobs_matched"] == 2 and same["only_in_basic"] == ["2"] and same["only_here"] == ["3"]
    assert same["max_abs_diff"]["test/acc"] == pytest.approx(0.1) and same["jobs_compared"]["test/acc"] == 2
    assert same["max_abs_diff"]["test/ece"] == 0.0 and same["jobs_compared"]["test/ece"] == 1
    assert same["max_abs_diff"]["val/acc_best"] is None and same["jobs_compared"]["val/acc_best"] == 0


@pytest.mark.slow
def test_sweep_times_each_launcher_and_compares_its_jobs_with_the_basic_ones(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    benchmark = load_benchmark()
    path = tmp_path / "sweep.json"
    grid = ["data=digits", "smoothing=none,fixed", "data.train_subset=300", "model.width=8", "test_best=false",
            "logger=wandb", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    benchmark.main(["--sweep", "--sweep-epochs", "1", "--launchers", "basic,stacked", "--sweep-dir",
                    str(tmp_path / "sweeps"), "--sweep-overrides", *grid, "--json", str(path)])
    out = json.loads(path.read_text())
    assert out["overrides"] == [*grid, "trainer.max_epochs=1"] and out["launchers"] == ["basic", "stacked"]
    assert out["machine"]["cpu_count"] >= 1 and out["device"].startswith("CPU")
    for name in ("basic", "stacked"):
        run = out["runs"][name]
        assert (run["jobs"], run["completed"], run["returncode"]) == (2, 2, 0), name
        assert run["seconds"] > 0 and sorted(run["wandb_offline_runs"]) == ["0", "1"]
        assert (tmp_path / "sweeps" / name / "sweep.log").is_file()
    assert out["runs"]["basic"]["wandb_offline_runs"] == {"0": 1, "1": 1}
    assert out["runs"]["basic"]["speed_vs_basic"] == 1.0
    assert out["runs"]["stacked"]["speed_vs_basic"] == pytest.approx(
        out["runs"]["basic"]["seconds"] / out["runs"]["stacked"]["seconds"])
    same = out["same_report"]["stacked"]
    assert same["jobs_matched"] == 2 and list(out["same_report"]) == ["stacked"]
    for key in ("test/acc", "test/ece", "val/acc_best"):
        assert same["jobs_compared"][key] == 2 and same["max_abs_diff"][key] is not None
