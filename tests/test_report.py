"""The sweep report on hand-made sweep folders: exact aggregates, jobs without a result, plots, row names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adaptive_ls import report
from adaptive_ls.plots import save_figure

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# What train.py records for a policy's settings (``smoothing/<param>``, flattened from cfg.smoothing) by choice name
POLICY_SETTINGS = {"none": {}, "fixed": {"eps": 0.1}, "negative": {"eps": -0.2}, "toy": {"strength": 3}}


def make_job(root: Path, num: int, policy: str, rate: float, seed: int, acc: float, ece: float, nll: float,
             kind: str = "symmetric", status: str = "completed", extra: dict | None = None,
             overrides: list[str] | None = None, epochs: int = 3, eps: float = 0.0,
             settings: dict | None = None, noise_settings: dict | None = None) -> Path:
    """A job folder as train.py leaves it: .hydra/overrides.yaml, results.json (with history), reliability.json.

    results.json names the policy and the noise by their config choices (``smoothing``, ``noise``) and records their
    settings as ``smoothing/<param>`` and ``noise/<param>``: ``settings`` (default: the policy config's) and
    ``noise_settings`` (default: ``{"rate": rate}``, as a synthetic noise kind has).
    """
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    overrides = overrides if overrides is not None else [f"smoothing={policy}", f"noise.rate={rate}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    history = [{"epoch": e, "train/loss": 2.0 - e, "smoothing/eps_mean": eps * (1 - e / epochs),
                "diag/memorized": rate * e / epochs, "diag/corrected": rate * (1 - e / epochs),
                "diag/eps_auroc": 0.5 + rate * e / epochs} for e in range(epochs)]
    settings = POLICY_SETTINGS.get(policy, {}) if settings is None else settings
    noise_settings = {"rate": rate} if noise_settings is None else noise_settings
    results = {"status": status, "smoothing": policy, **{f"smoothing/{k}": v for k, v in settings.items()},
               "noise": kind, **{f"noise/{k}": v for k, v in noise_settings.items()},
               "noise/realized_rate": rate, "noise/labels_hash": f"h{seed}{rate}", "noise/num_noisy": int(rate * 1000),
               "data": "DigitsDataModule", "model": "SmallCNN", "seed": seed, "noise_seed": 0,
               "test/acc": acc, "test/acc_at_best_val": acc + 0.01, "test/ece": ece, "test/nll": nll,
               "history": history, **(extra or {})}
    if status == "failed":
        results = {"status": "failed", "seed": seed, "noise_seed": 0,
                   "error": "ValueError: smoothing.eps=1.5 is out of range"}
    (job / "results.json").write_text(json.dumps(results))
    bins = np.linspace(0, 1, 6)
    (job / "reliability.json").write_text(json.dumps({
        "bin_lower": bins[:-1].tolist(), "bin_upper": bins[1:].tolist(), "confidence": [0.1, 0.3, 0.5, 0.7, 0.9],
        "accuracy": [0.0, 0.2, 0.5, 0.8, acc], "count": [0, 5, 10, 20, 40 + seed]}))
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """2 policies x 2 rates x 3 seeds (one cell with a failed seed), plus a failed and a killed job."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    values = {  # (policy, rate) -> per-seed (acc, ece, nll)
        ("none", 0.0): [(0.90, 0.05, 0.30), (0.92, 0.04, 0.28), (0.94, 0.03, 0.26)],
        ("none", 0.4): [(0.70, 0.20, 1.00), (0.74, 0.18, 0.90), (0.72, 0.22, 1.10)],
        ("fixed", 0.0): [(0.91, 0.02, 0.35), (0.93, 0.01, 0.33), (0.95, 0.03, 0.31)],
        ("fixed", 0.4): [(0.80, 0.10, 0.80), (0.84, 0.12, 0.70)],  # its seed 2 failed
    }
    num = 0
    for (policy, rate), seeds in values.items():
        for seed, (acc, ece, nll) in enumerate(seeds):
            make_job(root, num, policy, rate, seed, acc, ece, nll, eps=0.0 if policy == "none" else 0.1)
            num += 1
    make_job(root, num, "fixed", 0.4, 2, 0, 0, 0, status="failed",
             overrides=["smoothing=fixed", "noise.rate=0.4", "seed=2", "smoothing.eps=1.5"])
    killed = root / str(num + 1) / ".hydra"  # started, never wrote results.json
    killed.mkdir(parents=True)
    (killed / "overrides.yaml").write_text("- smoothing=none\n- noise.rate=0.8\n- seed=0\n")
    return root


@pytest.mark.slow
def test_table_has_exact_mean_and_sample_std_over_seeds(sweep):
    rep = report.report([sweep])
    csv = pd.read_csv(sweep / "report.csv")
    assert list(csv[["policy", "noise", "rate"]].itertuples(index=False, name=None)) == [
        ("none", "symmetric", 0.0), ("fixed", "symmetric", 0.0), ("none", "symmetric", 0.4),
        ("fixed", "symmetric", 0.4)]
    row = csv[(csv.policy == "none") & (csv.rate == 0.4)].iloc[0]
    assert row["n"] == 3
    assert row["test/acc_mean"] == pytest.approx(0.72)
    assert row["test/acc_std"] == pytest.approx(0.02)  # sample std (ddof=1) of 0.70, 0.74, 0.72
    assert row["test/acc_at_best_val_mean"] == pytest.approx(0.73)
    assert row["test/ece_mean"] == pytest.approx(0.20) and row["test/ece_std"] == pytest.approx(0.02)
    assert row["test/nll_mean"] == pytest.approx(1.0) and row["test/nll_std"] == pytest.approx(0.1)
    row = csv[(csv.policy == "fixed") & (csv.rate == 0.4)].iloc[0]
    assert row["n"] == 2  # the failed seed is not averaged in
    assert row["test/acc_mean"] == pytest.approx(0.82) and row["test/acc_std"] == pytest.approx(np.std([0.8, 0.84],
                                                                                                          ddof=1))
    assert rep.counts == {"completed": 11, "failed": 1, "missing": 1}


@pytest.mark.slow
def test_markdown_names_failed_and_missing_jobs_and_embeds_plots(sweep):
    report.report([sweep])
    md = (sweep / "report.md").read_text()
    assert "Read 13 jobs: 11 completed, 1 failed, 1 missing" in md
    assert "| none | symmetric | 0.4 | 3 | 72.00 ± 2.00 | 73.00 ± 2.00 | – | 20.00 ± 2.00 | – | – | 1.000 ± 0.100 | – | – |" \
        in md  # metrics a job did not record read "–"
    failed = next(line for line in md.splitlines() if line.startswith("| 2026-01-01_00-00-00/11 "))
    assert "failed" in failed and "smoothing.eps=1.5" in failed and "ValueError: smoothing.eps=1.5 is out" in failed
    missing = next(line for line in md.splitlines() if line.startswith("| 2026-01-01_00-00-00/12 "))
    assert "missing" in missing and "noise.rate=0.8" in missing
    for name in report.PLOTS.values():
        assert f"]({name})" in md


@pytest.mark.slow
def test_plots_are_written_and_memorisation_appears_when_logged(sweep):
    rep = report.report([sweep])
    for key, name in report.PLOTS.items():
        data = (sweep / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert set(rep.plots.values()) == {sweep / n for n in report.PLOTS.values()}
    for job in sweep.glob("*/results.json"):  # without the diagnostic, no memorisation plot
        results = json.loads(job.read_text())
        for row in results.get("history", []):
            row.pop("diag/memorized"), row.pop("diag/corrected")
        job.write_text(json.dumps(results))
    (sweep / report.PLOTS["memorization"]).unlink()
    rep = report.report([sweep])
    assert not (sweep / report.PLOTS["memorization"]).exists()
    assert "Memorisation of the noisy labels" not in rep.plots


@pytest.mark.slow
def test_eps_auroc_plot_is_written_only_when_logged(sweep):
    report.report([sweep])
    path = sweep / report.PLOTS["eps_auroc"]
    assert path.read_bytes().startswith(PNG_MAGIC) and f"]({path.name})" in (sweep / "report.md").read_text()
    for job in sweep.glob("*/results.json"):  # jobs from before the AUROC was logged
        results = json.loads(job.read_text())
        for row in results.get("history", []):
            row.pop("diag/eps_auroc")
        job.write_text(json.dumps(results))
    path.unlink()
    rep = report.report([sweep])
    assert not path.exists() and path not in rep.plots.values()
    assert path.name not in (sweep / "report.md").read_text()
    assert (sweep / report.PLOTS["memorization"]).exists()


def test_reliability_bins_are_pooled_over_seeds(sweep):
    jobs = [sweep / "0", sweep / "1"]
    pooled = report.pooled_reliability(jobs)
    np.testing.assert_allclose(pooled["count"], [0, 10, 20, 40, 81])
    np.testing.assert_allclose(pooled["accuracy"][-1], (0.90 * 40 + 0.92 * 41) / 81)
    with pytest.raises(ValueError, match="--reliability-noise asymmetric:0.2: no completed job"):
        report.report([sweep], reliability_setting=("asymmetric", 0.2))


@pytest.mark.slow
def test_settings_that_vary_within_a_cell_are_kept_apart(tmp_path):
    """A tuning sweep (ε varies, one seed each) must not be averaged into one row; a swept override neither."""
    root = tmp_path / "tune"
    for num, (eps, acc) in enumerate([(0.1, 0.8), (0.3, 0.9), (0.5, 0.7)]):
        make_job(root, num, "fixed", 0.4, 0, acc, 0.1, 1.0, settings={"eps": eps},
                 overrides=[f"smoothing.eps={eps}", "optimizer.lr=0.05"])
    make_job(root, 3, "fixed", 0.4, 0, 0.5, 0.1, 1.0, settings={"eps": 0.5},
             overrides=["smoothing.eps=0.5", "optimizer.lr=0.5"])
    report.report([root])
    csv = pd.read_csv(root / "report.csv")
    assert list(csv["smoothing/eps"]) == [0.1, 0.3, 0.5, 0.5]
    assert list(csv["optimizer.lr"]) == [0.05, 0.05, 0.05, 0.5]
    assert list(csv["n"]) == [1, 1, 1, 1] and list(csv["test/acc_mean"]) == [0.8, 0.9, 0.7, 0.5]
    assert "| fixed | symmetric | 0.4 | 0.1 | 0.05 | 1 | 80.00 |" in (root / "report.md").read_text()


def test_the_same_seed_read_twice_is_flagged(tmp_path):
    for sweep in ("a", "b"):
        make_job(tmp_path / sweep, 0, "none", 0.4, 0, 0.7, 0.1, 1.0)
    report.report([tmp_path / "a", tmp_path / "b"], out=tmp_path / "both")
    md = (tmp_path / "both" / "report.md").read_text()
    assert "some seeds appear more than once" in md and "| none | symmetric | 0.4 | 2 |" in md


@pytest.mark.slow
def test_a_swept_policy_parameter_is_one_row_per_value_averaged_over_its_seeds(tmp_path):
    """smoothing.eps=0.1,0.2,0.4 x seed=0,1: three rows of two seeds each, never six jobs averaged as seeds."""
    root = tmp_path / "eps"
    accs = {0.1: (0.80, 0.82), 0.2: (0.85, 0.89), 0.4: (0.70, 0.76)}
    jobs = []
    for eps, per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            jobs.append(make_job(root, len(jobs), "fixed", 0.4, seed, acc, 0.1, 1.0, settings={"eps": eps},
                                 overrides=[f"smoothing.eps={eps}", f"seed={seed}"]))
    for seed in (0, 1):  # the baseline has no ε: a blank in that column, one row of its own
        make_job(root, len(jobs) + seed, "none", 0.4, seed, 0.6, 0.2, 1.5)

    def check():
        report.report([root])
        csv = pd.read_csv(root / "report.csv")
        assert list(csv["policy"]) == ["none", "fixed", "fixed", "fixed"]
        assert np.isnan(csv["smoothing/eps"][0]) and list(csv["smoothing/eps"][1:]) == [0.1, 0.2, 0.4]
        assert list(csv["n"]) == [2, 2, 2, 2]
        np.testing.assert_allclose(csv["test/acc_mean"][1:], [np.mean(a) for a in accs.values()])
        np.testing.assert_allclose(csv["test/acc_std"][1:], [np.std(a, ddof=1) for a in accs.values()])
        assert "some seeds appear more than once" not in (root / "report.md").read_text()

    check()
    for job in jobs:  # a job that did not record its settings is told apart by its override
        results = json.loads((job / "results.json").read_text())
        del results["smoothing/eps"]
        (job / "results.json").write_text(json.dumps(results))
    check()


@pytest.mark.slow
def test_rows_are_named_by_the_recorded_config_choice(tmp_path):
    """smoothing=negative and smoothing=fixed build the same class: they are still two rows, named as chosen."""
    root = tmp_path / "negative"
    for num, (policy, seed, acc) in enumerate([("negative", 0, 0.80), ("fixed", 0, 0.70), ("negative", 1, 0.84),
                                               ("fixed", 1, 0.74)]):
        make_job(root, num, policy, 0.4, seed, acc, 0.1, 1.0)
    report.report([root])
    csv = pd.read_csv(root / "report.csv")
    assert list(csv["policy"]) == ["fixed", "negative"] and list(csv["n"]) == [2, 2]
    assert list(csv["test/acc_mean"]) == pytest.approx([0.72, 0.82])
    assert "smoothing/eps" not in csv  # constant within each row: not a key


@pytest.mark.slow
def test_an_unknown_policy_gets_its_own_row_and_colour(tmp_path, monkeypatch):
    root = tmp_path / "toy"
    num = 0
    for policy in ("none", "fixed", "toy"):
        for rate in (0.2, 0.4):
            for seed in (0, 1):
                overrides = (["smoothing._target_=my_project.ToySmoothing"] if policy == "toy" else
                             [f"smoothing={policy}"]) + [f"noise.rate={rate}", f"seed={seed}"]
                make_job(root, num, policy, rate, seed, 0.8 - rate / 2, 0.1, 1.0, overrides=overrides, eps=0.1)
                num += 1
    figures = {}

    def keep_figure(fig, path):
        figures[Path(path).name] = fig
        return save_figure(fig, path)

    monkeypatch.setattr(report.plots, "save_figure", keep_figure)
    rep = report.report([root])
    csv = pd.read_csv(root / "report.csv")
    assert list(csv["policy"]) == ["none", "fixed", "toy"] * 2 and set(csv["n"]) == {2}
    assert "smoothing/strength" not in csv
    assert set(rep.plots.values()) == {root / n for n in report.PLOTS.values()}
    [ax] = figures[report.PLOTS["accuracy"]].axes
    colors = {c.get_label(): c.lines[0].get_color() for c in ax.containers if not c.get_label().startswith("_")}
    assert set(colors) == {"none", "fixed", "toy"} and len(set(colors.values())) == 3
    [eps_ax, _] = figures[report.PLOTS["eps"]].axes
    assert {line.get_label(): line.get_color() for line in eps_ax.get_lines()} == colors  # one colour in every plot


def test_label_file_noise_sits_at_its_realised_rate(tmp_path):
    """cifar10n has no nominal rate: its seeds share one rate, the mean realised rate of its jobs."""
    root = tmp_path / "cifar10n"
    settings = {"path": "/data/CIFAR-10_human.pt", "key": "worse_label", "clean_key": "clean_label"}
    for seed, realized in enumerate([0.40210, 0.40214]):
        make_job(root, seed, "fixed", realized, seed, 0.8, 0.1, 1.0, kind="cifar10n", noise_settings=settings,
                 overrides=["noise=cifar10n", f"seed={seed}"])
    report.report([root], reliability_setting=("cifar10n", 0.4021))
    [row] = pd.read_csv(root / "report.csv").to_dict("records")
    assert (row["policy"], row["noise"], row["rate"], row["n"]) == ("fixed", "cifar10n", 0.4021, 2)


@pytest.mark.slow
def test_interrupted_jobs_are_counted_and_listed_apart_from_failed_ones(sweep, caplog):
    job = make_job(sweep, 13, "fixed", 0.0, 3, 0, 0, 0, status="interrupted")
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"")
    caplog.set_level("INFO", logger="adaptive_ls.report")
    assert report.main([str(sweep)]) == 0
    assert "11 completed, 1 failed, 1 interrupted, 1 missing" in caplog.text
    assert "interrupted 2026-01-01_00-00-00/13: stopped before the end; run again in this folder" in caplog.text
    md = (sweep / "report.md").read_text()
    assert "Read 14 jobs: 11 completed, 1 failed, 1 interrupted, 1 missing" in md
    statuses = [line.split(" | ")[1] for line in md.splitlines() if line.startswith("| 2026-01-01_00-00-00/")]
    assert statuses == ["failed", "interrupted", "missing"]
    assert report.report([sweep]).counts == {"completed": 11, "failed": 1, "interrupted": 1, "missing": 1}


@pytest.mark.slow
def test_command_line_says_what_it_read(sweep, tmp_path, caplog):
    caplog.set_level("INFO", logger="adaptive_ls.report")
    assert report.main([str(sweep)]) == 0
    assert f"read 13 jobs under {sweep}: 11 completed, 1 failed, 1 missing" in caplog.text
    assert "failed 2026-01-01_00-00-00/11: ValueError: smoothing.eps=1.5" in caplog.text
    assert "missing 2026-01-01_00-00-00/12: no results.json" in caplog.text
    assert f"wrote {sweep / 'report.md'}, {sweep / 'report.csv'} and 6 plots" in caplog.text
    assert report.main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
def test_wandb_report_run_joins_the_sweep_group_offline(sweep, wandb_env, caplog):
    from tests import wandb_records

    for job in sweep.glob("*/results.json"):  # as train.py records them when the jobs logged to W&B
        results = json.loads(job.read_text())
        results.update({"wandb/group": "quickstart-2026", "wandb/project": "proj"})
        job.write_text(json.dumps(results))
    caplog.set_level("INFO", logger="adaptive_ls.report")
    assert report.main([str(sweep), "--wandb"]) == 0
    [run_dir] = wandb_records.offline_runs(sweep / "wandb")
    rec = wandb_records.read_offline_run(run_dir, wait_s=30)
    assert (rec.group, rec.job_type, rec.project, rec.exit_code) == ("quickstart-2026", "report", "proj", 0)
    logged = {k: v for row in rec.history for k, v in row.items()}
    assert logged["report/table"]["_type"] == "table-file" and logged["report/table"]["nrows"] == 4
    for name in report.PLOTS.values():
        assert logged[f"report/{Path(name).stem}"]["_type"] == "image-file"
    assert rec.summary["jobs/failed"] == 1 and rec.summary["jobs/missing"] == 1
    assert "would also publish a W&B Report 'adaptive-ls sweep quickstart-2026' in proj" in caplog.text


def test_wandb_report_blocks_select_the_sweep_runs():
    """The W&B Report's panels filter the project's runs down to this sweep's group (checked offline)."""
    from wandb_workspaces import expr

    blocks = report.wandb_report_blocks("quickstart-2026", "me", "adaptive-ls", "| table |", ["report/reliability"])
    grids = [b for b in blocks if type(b).__name__ == "PanelGrid"]
    leaves = [{(f.key.name, f.value) for f in expr.expr_to_filters(g.runsets[0].filters).filters} for g in grids]
    assert leaves == [{("group", "quickstart-2026"), ("jobType", "train")},
                      {("group", "quickstart-2026"), ("jobType", "report")}]
    assert grids[1].panels[0].media_keys == ["report/reliability"]


def versus_sweep(root: Path) -> Path:
    """fixed ε ∈ {0.2, 0.6} and one adaptive setting, at rates 0.4 and 0.6, seeds 0 and 1: numbers chosen so that
    the validation split prefers ε = 0.2 at 0.4 and ε = 0.6 at 0.6, while the test set would prefer the other."""
    num = 0
    cells = {  # (policy, eps, rate) -> (val/acc_best, test/acc per seed)
        ("fixed", 0.2, 0.4): (0.70, [0.60, 0.62]), ("fixed", 0.6, 0.4): (0.65, [0.70, 0.70]),
        ("fixed", 0.2, 0.6): (0.50, [0.55, 0.55]), ("fixed", 0.6, 0.6): (0.55, [0.45, 0.47]),
        ("adaptive", None, 0.4): (0.68, [0.63, 0.61]), ("adaptive", None, 0.6): (0.52, [0.50, 0.46]),
    }
    for (policy, eps, rate), (val, accs) in cells.items():
        for seed, acc in enumerate(accs):
            settings = {"eps": eps} if policy == "fixed" else {"eps_max": 0.9}
            make_job(root, num, policy, rate, seed, acc=acc, ece=0.1 + 0.01 * seed, nll=1.0, settings=settings,
                     extra={"val/acc_best": val, "test/ts_ece": 0.05},
                     overrides=[f"smoothing={policy}", f"noise.rate={rate}", f"seed={seed}"])
            num += 1
    return root


def test_versus_picks_the_baseline_on_validation_and_pairs_the_seeds(tmp_path):
    table = report.jobs_table(report.read_jobs([versus_sweep(tmp_path / "sweep")]))
    chosen, diffs = report.paired_differences(table, "fixed")
    assert dict(zip(chosen["rate"], chosen["setting:smoothing/eps"])) == {0.4: "0.2", 0.6: "0.6"}
    rows = diffs.set_index("rate")
    # rate 0.4: adaptive − fixed(0.2) = [0.63 − 0.60, 0.61 − 0.62] = [+0.03, −0.01]
    assert rows.loc[0.4, "test/acc_mean"] == pytest.approx(0.01)
    assert rows.loc[0.4, "test/acc_std"] == pytest.approx(np.std([0.03, -0.01], ddof=1))
    # rate 0.6: adaptive − fixed(0.6) = [0.50 − 0.45, 0.46 − 0.47] = [+0.05, −0.01]
    assert rows.loc[0.6, "test/acc_mean"] == pytest.approx(0.02)
    assert list(rows["pairs"]) == [2, 2] and list(rows["policy"]) == ["adaptive", "adaptive"]
    assert rows["wins"].all()  # positive at both rates
    assert rows.loc[0.4, "test/ece_mean"] == pytest.approx(0.0)  # same ECE per seed: paired, not pooled


def test_versus_does_not_win_when_one_rate_is_lost(tmp_path):
    root = versus_sweep(tmp_path / "sweep")
    results = json.loads((root / "9" / "results.json").read_text())  # adaptive, rate 0.6, seed 1
    assert results["smoothing"] == "adaptive" and results["seed"] == 1
    results["test/acc"] = 0.30  # mean Δ at 0.6 becomes (0.05 − 0.17) / 2 < 0
    (root / "9" / "results.json").write_text(json.dumps(results))
    _, diffs = report.paired_differences(report.jobs_table(report.read_jobs([root])), "fixed")
    assert not diffs["wins"].any()


def test_versus_section_in_the_report_and_a_missing_baseline(tmp_path, capsys):
    root = versus_sweep(tmp_path / "sweep")
    assert report.main([str(root), "--baseline", "fixed"]) == 0
    text = (root / "report.md").read_text()
    assert "## Against the best `fixed`, chosen on the noisy validation split" in text
    assert "- symmetric 0.4: fixed (eps=0.2), val/acc_best 70.00% (n = 2)" in text
    assert "| adaptive | symmetric | 0.4 | 2 | +1.00 ± 2.83 |" in text
    assert report.main([str(root), "--baseline", "annealed"]) == 2
    assert "--baseline annealed: no completed job of that policy; the sweep has adaptive, fixed" in \
        capsys.readouterr().err


def test_versus_a_setting_run_at_one_rate_only_does_not_win(tmp_path):
    root = versus_sweep(tmp_path / "sweep")
    make_job(root, 99, "annealed", 0.4, 0, acc=0.9, ece=0.1, nll=1.0, settings={"eps_start": 0.3},
             extra={"val/acc_best": 0.1, "test/ts_ece": 0.05})
    _, diffs = report.paired_differences(report.jobs_table(report.read_jobs([root])), "fixed")
    annealed = diffs[diffs["policy"] == "annealed"]
    assert len(annealed) == 1 and annealed["test/acc_mean"].item() > 0 and not annealed["wins"].item()


def test_a_setting_typed_two_ways_is_one_setting(tmp_path):
    """A multirun records ``data.verify=False``, a single run ``data.verify=false``: the same setting, averaged."""
    root = tmp_path / "sweep"
    for num, (seed, typed) in enumerate([(0, "False"), (1, "false")]):
        make_job(root, num, "fixed", 0.4, seed, acc=0.5 + 0.1 * seed, ece=0.1, nll=1.0,
                 overrides=["smoothing=fixed", "noise.rate=0.4", f"seed={seed}", f"data.verify={typed}",
                            "optimizer.lr=0.10" if seed else "optimizer.lr=0.1"])
    summary = report.summarize(report.jobs_table(report.read_jobs([root])))
    assert len(summary) == 1 and summary["n"].item() == 2 and summary["test/acc_mean"].item() == pytest.approx(0.55)


def test_versus_ranks_the_baseline_variants_on_their_common_seeds(tmp_path):
    """ε = 0.2 is best on seeds 0 and 1; a third seed of ε = 0.6 alone, however good, must not turn the choice."""
    root = versus_sweep(tmp_path / "sweep")
    make_job(root, 100, "fixed", 0.4, 7, acc=0.5, ece=0.1, nll=1.0, settings={"eps": 0.6},
             extra={"val/acc_best": 0.99, "test/ts_ece": 0.05})  # mean over all seeds: 0.76 > 0.70
    table = report.jobs_table(report.read_jobs([root]))
    chosen = report.best_variants(table, "fixed", report.varying_settings(table))
    assert dict(zip(chosen["rate"], chosen["setting:smoothing/eps"])) == {0.4: "0.2", 0.6: "0.6"}


def test_precision_is_shown_when_the_rows_differ_in_it(tmp_path):
    """Precision is a per-machine default: rows run in bf16 on one machine and float32 on another are told apart,
    and a table run in one precision throughout does not grow a column."""
    same, mixed = tmp_path / "same", tmp_path / "mixed"
    for num, (policy, rate) in enumerate([("none", 0.4), ("fixed", 0.4)]):
        make_job(same, num, policy, rate, 0, 0.8, 0.1, 1.0, extra={"precision": "32-true"})
        make_job(mixed, num, policy, rate, 0, 0.8, 0.1, 1.0,
                 extra={"precision": "32-true" if policy == "none" else "bf16-mixed"})
    report.report([same])
    report.report([mixed])
    assert "precision" not in pd.read_csv(same / "report.csv").columns
    assert list(pd.read_csv(mixed / "report.csv")["precision"]) == ["32-true", "bf16-mixed"]
    assert "| none | symmetric | 0.4 | 32-true |" in (mixed / "report.md").read_text()


def test_clean_rows_are_the_rate_zero_point_of_each_kind(tmp_path):
    """A grid of named settings (noise=none,sym40,asym40) keeps the clean runs apart in the table (noise ``none``)
    and draws them at rate 0 of each kind's panel."""
    from adaptive_ls.report.plots import _clean_in_every_panel

    root = tmp_path / "grid"
    make_job(root, 0, "none", 0.0, 0, 0.9, 0.1, 1.0, kind="none", noise_settings={})
    make_job(root, 1, "none", 0.4, 0, 0.6, 0.1, 1.0, kind="symmetric")
    make_job(root, 2, "none", 0.4, 0, 0.7, 0.1, 1.0, kind="asymmetric")
    rep = report.report([root])
    assert list(zip(rep.summary["noise"], rep.summary["rate"])) == [("none", 0.0), ("symmetric", 0.4),
                                                                     ("asymmetric", 0.4)]
    panels = _clean_in_every_panel(rep.summary)
    assert sorted(zip(panels["noise"], panels["rate"])) == [("asymmetric", 0.0), ("asymmetric", 0.4),
                                                             ("symmetric", 0.0), ("symmetric", 0.4)]
    assert (root / "accuracy_vs_noise.png").exists()
