"""The chaos script's short version: a tiny sweep killed, terminated, doubled and truncated, then compared exactly
with an uninterrupted run of the same sweep."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.runs import REPO_ROOT

TINY_SWEEP = ["data=digits", "trainer.accelerator=cpu", "trainer.max_epochs=4", "model.width=8", "test_best=false",
              "smoothing=none,adaptive", "noise.rate=0.4"]


def load_chaos():
    spec = importlib.util.spec_from_file_location("chaos", REPO_ROOT / "scripts" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_sweep_under_faults_loses_nothing_and_changes_nothing(tmp_path, capsys):
    chaos = load_chaos()
    code = chaos.main(["--faults", "4", "--seed", "1", "--window", "0.3", "0.9", "--timeout", "300",
                       "--out", str(tmp_path / "chaos"), *TINY_SWEEP])
    summary = json.loads((tmp_path / "chaos" / "chaos.json").read_text())
    assert summary["faults_total"] >= 3, summary  # faults did strike (a round that finished first injects none)
    assert summary["jobs_lost"] == [] and summary["metrics_differing"] == [], summary
    assert code == 0
    assert "jobs lost: 0" in capsys.readouterr().out
