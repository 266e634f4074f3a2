"""End-to-end runs: the composed Hydra config through adaptive_ls.train.run, and the real entry point in a subprocess."""
from __future__ import annotations

import json

import hydra
import numpy as np
import pytest

from tests.runs import DIGITS_ON_CPU, compose, entry_point, run_config

# What every results.json carries (the list), whatever the policy.
RESULT_KEYS = ("status", "test/acc", "test/ece", "test/nll", "test/brier", "val/acc", "val/acc_best",
               "test/acc_at_best_val", "noise/realized_rate", "smoothing", "noise", "noise/rate",
               "seed", "noise_seed", "wall_time_s", "history")

POLICY_PARAMS = {
    "none": {},
    "fixed": {"smoothing/eps": 0.1},
    "annealed": {"smoothing/eps_start": 0.3, "smoothing/eps_end": 0.0, "smoothing/schedule": "linear"},
    "adaptive": {"smoothing/eps_min": 0.0, "smoothing/eps_max": 0.9, "smoothing/signal": "true_class_prob",
                 "smoothing/freeze_fraction": 0.4, "smoothing/q": "prediction"},
}


@pytest.mark.slow
@pytest.mark.parametrize("policy", list(POLICY_PARAMS))
def test_run_writes_results_for_each_policy(tmp_path, policy):
    cfg = compose(*DIGITS_ON_CPU, f"smoothing={policy}", "noise=symmetric", "noise.rate=0.4", hydra=True)
    returned = run_config(cfg, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == json.loads(json.dumps(returned, default=str))  # what run() returns is what it wrote

    assert set(RESULT_KEYS) <= set(results), set(RESULT_KEYS) - set(results)
    assert results["status"] == "completed" and results["smoothing"] == policy
    for key, value in POLICY_PARAMS[policy].items():
        assert results[key] == value, key
    assert results["noise"] == "symmetric" and results["noise/rate"] == 0.4
    assert results["noise/realized_rate"] == pytest.approx(0.4, abs=1e-3)
    assert results["seed"] == 0 and results["noise_seed"] == 0 and results["wall_time_s"] > 0
    for key in ("test/acc", "val/acc", "val/acc_best", "test/acc_at_best_val"):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["test/nll"] > 0 and 0 <= results["test/ece"] <= 1 and 0 <= results["test/brier"] <= 2

    history = results["history"]
    assert [row["epoch"] for row in history] == [0, 1]  # one row per epoch
    assert all({"train/loss", "train/acc", "val/acc", "smoothing/eps_mean"} <= set(row) for row in history)
    assert results["val/acc_best"] == pytest.approx(max(row["val/acc"] for row in history))
    eps = [row["smoothing/eps_mean"] for row in history]
    if policy == "none":
        assert eps == [0.0, 0.0]
    elif policy == "fixed":
        assert eps == pytest.approx([0.1, 0.1])
    elif policy == "annealed":
        assert 0.3 > eps[0] > eps[1] > 0.0
    else:
        assert eps[0] == pytest.approx(0.1)  # warm-up epoch
        assert 0.0 <= history[1]["smoothing/eps_min"] < history[1]["smoothing/eps_max"] <= 0.9

    # the saved noisy labels are the data module's, and the run's files are where the issue says
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    np.testing.assert_array_equal(np.load(tmp_path / "noisy_labels.npy"), datamodule.noisy_labels.numpy())
    assert (tmp_path / "noise_transition.csv").is_file() and (tmp_path / "reliability.json").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "csv" / "metrics.csv").is_file()


@pytest.mark.slow
def test_entry_point_end_to_end(tmp_path):
    """`python -m adaptive_ls.train` as a user runs it: Hydra's own run dir, results.json there, exit code 0."""
    run_dir = tmp_path / "run"
    proc = entry_point("trainer.max_epochs=1", "smoothing=adaptive", "smoothing.warmup_epochs=0", "noise.rate=0.2", run_dir=run_dir,
                       preset=DIGITS_ON_CPU)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["smoothing"] == "adaptive"
    assert results["noise/realized_rate"] == pytest.approx(0.2, abs=1e-3)
    assert 0 <= results["test/acc"] <= 1 and len(results["history"]) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "noisy_labels.npy").is_file()
    assert not (tmp_path / "outputs").exists()  # nothing written outside the run dir

