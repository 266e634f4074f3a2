"""Sweeps end to end: a multirun through submitit_local with W&B and failing jobs, Optuna's tune_eps, the per-policy
search space and the SLURM launcher's config (checked against submitit's own sbatch writer)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from adaptive_ls import loggers, report
from tests import wandb_records
from tests.runs import TINY, compose, entry_point

# Sweeps run several jobs: one epoch of 2 training batches each.
SWEEP_JOB = (*TINY, "trainer.max_epochs=1", "++trainer.limit_train_batches=2")


def results(job: Path) -> dict:
    return json.loads((job / "results.json").read_text())


@pytest.mark.slow
def test_submitit_local_sweep_one_wandb_run_per_job_failures_recorded_and_a_correct_table(wandb_env, tmp_path):
    """2 seeds x 2 validation sizes through submitit: the two jobs with an impossible split fail, the others finish."""
    sweep = tmp_path / "sweep"
    done = entry_point("hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "smoothing=fixed", "seed=0,1",
                       "data.val_size=150,100000", "logger=wandb", run_dir=sweep, multirun=True, preset=SWEEP_JOB)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # two jobs failed: a script sees it
    assert "sweep finished with 2 of 4 jobs failed or refused (jobs 1, 3)" in done.stderr.strip().splitlines()[-1]
    assert (sweep / ".submitit").is_dir()  # the jobs really went through submitit
    assert "sweep finished: 4 jobs (2 completed, 2 failed)" in done.stdout
    jobs = [sweep / str(n) for n in range(4)]
    runs = {}
    for num, job in enumerate(jobs):
        r = results(job)
        ok = "val_size=150" in " ".join(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        assert r["status"] == ("completed" if ok else "failed")
        assert f"job {num + 1} of 4:" in (job / "train.log").read_text()  # sweep progress, from multirun.yaml
        [run_dir] = wandb_records.offline_runs(job)
        rec = wandb_records.read_offline_run(run_dir, wait_s=30)
        runs[rec.id] = rec
        assert rec.id == r["wandb/id"]
        assert rec.group == loggers.sweep_group(sweep) == r["wandb/group"]
        assert rec.job_type == "train" and rec.tags == ["fixed", "symmetric", "rate=0.4"]
        assert rec.name == f"{num}-fixed-symmetric0.4-seed{r['seed']}"
        assert rec.config["seed"] == r["seed"] and rec.config["hydra"]["job_num"] == num
        if ok:
            assert rec.exit_code == 0 and any("train/loss" in h for h in rec.history)
            for key in ("test/acc", "test/ece", "test/nll", "val/acc_best"):
                assert rec.summary[key] == pytest.approx(r[key], rel=1e-6), key
        else:
            assert rec.exit_code == 1 and rec.summary["status"] == "failed"
            assert "data.val_size=100000" in r["error"] and "data.val_size=100000" in rec.summary["error"]
    assert len(runs) == 4  # four distinct runs, not one run logged into four times

    rep = report.report([sweep])
    assert rep.counts == {"completed": 2, "failed": 2}
    [row] = pd.read_csv(sweep / "report.csv").to_dict("records")
    completed = [results(j) for j in jobs if results(j)["status"] == "completed"]
    assert (row["policy"], row["noise"], row["rate"], row["n"]) == ("fixed", "symmetric", 0.4, 2)
    for metric in ("test/acc", "test/acc_at_best_val", "test/ece", "test/nll"):
        values = [r[metric] for r in completed]
        assert row[f"{metric}_mean"] == pytest.approx(np.mean(values), rel=1e-9)
        assert row[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-6, abs=1e-12)
    failed_lines = [line for line in (sweep / "report.md").read_text().splitlines() if "| failed |" in line]
    assert len(failed_lines) == 2 and all("data.val_size=100000" in line for line in failed_lines)


@pytest.mark.slow
def test_tune_eps_runs_optuna_trials_on_the_noisy_validation_accuracy(tmp_path):
    """Two trials over ε in [0, 1.6]: ε >= 1 is refused, that trial fails and the study goes on (seeded sampler)."""
    sweep = tmp_path / "tune"
    done = entry_point("experiment=tune_eps", "hydra.sweeper.n_trials=2", 'search_space.fixed.eps="interval(0.0, 1.6)"',
                       run_dir=sweep, multirun=True, preset=SWEEP_JOB)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the refused trial, said at the end
    trials = [results(sweep / str(n)) for n in range(2)]
    eps = [float(OmegaConf.load(sweep / str(n) / ".hydra" / "overrides.yaml")[0].split("=")[1]) for n in range(2)]
    assert all(0.0 <= e <= 1.6 for e in eps) and eps[0] != eps[1]
    for t, e in zip(trials, eps):  # the policy refuses ε >= 1: that trial fails, the study goes on
        assert t["status"] == ("completed" if e < 1 else "failed")
        assert t["status"] == "failed" or t["smoothing/eps"] == pytest.approx(e)
    assert [t["status"] for t in trials].count("failed") == 1  # sampler seed 0: one trial of each
    [best_trial] = [t for t in trials if t["status"] == "completed"]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(best_trial["val/acc_best"])  # noisy-validation accuracy, not test
    assert best.best_params["smoothing.eps"] == pytest.approx(best_trial["smoothing/eps"])
    assert "job 2 of 2:" in (sweep / "1" / "train.log").read_text()
    assert "sweep finished: 2 jobs (1 completed, 1 failed)" in done.stdout


@pytest.mark.slow
def test_search_space_follows_the_chosen_policy():
    import optuna

    from adaptive_ls.sweeps import policy_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose("experiment=tune_eps", "smoothing=adaptive", hydra=True)
    trial = optuna.create_study(direction="maximize").ask()
    policy_search_space(cfg, trial)
    assert set(trial.params) == {"smoothing.eps_max", "smoothing.warmup_epochs", "smoothing.ema"}
    assert 0.1 <= trial.params["smoothing.eps_max"] <= 0.9 and trial.params["smoothing.ema"] in (0.0, 0.7, 0.9)
    assert isinstance(trial.params["smoothing.warmup_epochs"], int)
    cfg = compose("experiment=tune_eps", "smoothing=none", hydra=True)
    with pytest.raises(ValueError, match="search_space has no entry for smoothing=none"):
        policy_search_space(cfg, optuna.create_study().ask())


def test_a_grid_is_sized_as_hydra_expands_it(tmp_path):
    """"job i of n": the sweeper's params and the command line's sweeps multiply, a later value of a key replaces an
    earlier one (as Hydra's basic sweeper expands the grid), and a sweep it cannot enumerate leaves n unknown."""
    from adaptive_ls.sweeps import sweep_size

    def size(params: dict, task: list[str]):
        sweep = tmp_path / f"sweep{len(list(tmp_path.iterdir()))}"
        sweep.mkdir()
        OmegaConf.save(OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}}),
                       sweep / "multirun.yaml")
        return sweep_size(OmegaConf.create({"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper."
                                                                    "BasicSweeper"}, "sweep": {"dir": str(sweep)}}))

    assert size({}, []) == 1
    assert size({"seed": "0,1,2"}, ["smoothing=none,fixed", "noise.rate=0.2"]) == 6
    assert size({"seed": "0,1,2"}, ["seed=0,1", "data.val_size=range(100,400,100)"]) == 6
    assert size({}, ["smoothing.eps=interval(0, 1)"]) is None


def test_slurm_launcher_settings_reach_sbatch(tmp_path, monkeypatch):
    """hydra/launcher=slurm, through the plugin, into the sbatch script submitit would submit (no cluster needed)."""
    import submitit
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmExecutor

    cfg = compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu-a100", "hydra.launcher.account=lab",
                  f"hydra.sweep.dir={tmp_path}", "hydra.job.name=train", hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    captured = {}

    def fake_map_array(executor, fn, *args):
        captured["sbatch"] = executor._executor._make_submission_file_text("python -u job.py", "uid")
        captured["jobs"] = len(args[0])
        return []

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun exists
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", fake_map_array)
    launcher.launch([["seed=0"], ["seed=1"], ["seed=2"]], initial_job_idx=0)
    sbatch = captured["sbatch"]
    assert captured["jobs"] == 3
    for line in ("#SBATCH --partition=gpu-a100", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --time=720",
                 "#SBATCH --ntasks-per-node=1"):
        assert line in sbatch, line
