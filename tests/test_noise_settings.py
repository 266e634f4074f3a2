"""Named noise settings (conf/noise/sym40.yaml, ...): one grid lists settings of any kind, label files included, and
results.json and the report name each job by its kind and rate, whatever the setting was called."""
from __future__ import annotations

import json
from pathlib import Path

import hydra
import pytest

from adaptive_ls import report
from adaptive_ls.config import noise_kind_name
from adaptive_ls.noise import Cifar10NNoise, NoiseKind
from adaptive_ls.resolvers import auto_precision
from tests.runs import CONF_DIR, compose, entry_point, write_cifar10, write_human_pt

KIND_OPTIONS = {"none", "symmetric", "asymmetric", "pairflip", "instance", "file", "cifar10n"}
NAMED = sorted(p.stem for p in (CONF_DIR / "noise").glob("*.yaml") if p.stem not in KIND_OPTIONS)
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_there_are_named_settings_of_every_synthetic_kind_and_of_cifar10n():
    kinds = {noise_kind_name(compose(f"noise={name}")) for name in NAMED}
    assert kinds == {"symmetric", "asymmetric", "pairflip", "instance", "cifar10n"}


@pytest.mark.parametrize("name", NAMED)
def test_a_named_setting_is_its_kind_with_its_parameters(name):
    cfg = compose(f"noise={name}")
    kind_option = noise_kind_name(cfg)
    kind = compose(f"noise={kind_option}").noise
    assert cfg.noise._target_ == kind._target_  # the kind's own config, with only its parameters changed
    assert set(cfg.noise) == set(kind)
    noise = hydra.utils.instantiate(cfg.noise)
    assert isinstance(noise, NoiseKind) and type(noise).name == kind_option
    if "rate" in cfg.noise:  # the name says the rate: sym40 is 0.4, pairflip45 is 0.45
        digits = "".join(c for c in name if c.isdigit())
        assert cfg.noise.rate == pytest.approx(int(digits) / 100)
    else:
        assert isinstance(noise, Cifar10NNoise) and cfg.noise.key.replace("_label", "") == name.removeprefix("cifar10n_")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_every_noise_option(experiment):
    """A grid over noise.rate would ask a label file or clean labels for a rate: experiments list settings."""
    for option in [*KIND_OPTIONS - {"file"}, *NAMED]:
        cfg = compose(f"experiment={experiment}", f"noise={option}", hydra=True)
        params = cfg.hydra.sweeper.get("params")
        grid = list(params) if params else []
        assert not [key for key in grid if key.startswith("noise.")], (experiment, grid)
        hydra.utils.instantiate(cfg.noise)


@pytest.mark.slow
def test_one_grid_crosses_noise_kinds_label_files_included(tmp_path):
    """experiment=cifar10_cpu with noise=none,asym40,cifar10n_worse: three jobs, each named by its kind, in the
    precision this machine's CPU runs fastest (recorded in results.json)."""
    tiny = write_cifar10(tmp_path / "data", per_batch=40, num_test=20)
    write_human_pt(tmp_path / "data" / "CIFAR-10_human.pt", tiny.train_labels)
    sweep_dir = tmp_path / "sweep"
    proc = entry_point("experiment=cifar10_cpu", "noise=none,asym40,cifar10n_worse", "smoothing=none",
                       f"data.root={tiny.root}", f"paths.data_dir={tiny.root}", "data.verify=false",
                       "data.train_subset=null", "data.val_size=20", "data.eval_batch_size=50", "model.widths=[8,8,8]",
                       "trainer.max_epochs=1", "test_best=false", run_dir=sweep_dir, preset=(), multirun=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    assert [(r["noise"], r["noise_setting"], r["status"]) for r in results] == [
        ("none", "none", "completed"), ("asymmetric", "asym40", "completed"), ("cifar10n", "cifar10n_worse", "completed")]
    assert {r["precision"] for r in results} == {auto_precision("cpu", True)}
    rep = report.report([sweep_dir])
    assert list(rep.summary["noise"]) == ["none", "asymmetric", "cifar10n"]
    assert list(rep.summary["rate"])[:2] == [0.0, 0.4]
