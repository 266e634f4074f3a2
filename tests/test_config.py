"""Bad settings fail early with one line naming the key, the value given and what is allowed (adaptive_ls.config)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adaptive_ls.config import ConfigError, OutputDirError, build_run
from adaptive_ls.resume import ResumePlan, check_resumed_labels
from tests.runs import CONF_DIR, TINY, compose, entry_point, run_in, write_cifar10

# (overrides, what the one-line message must say): the key and value given, then what is allowed.
NO_DATA_NEEDED = [
    (["smoothing=fixed", "smoothing.eps=1.0"], ["smoothing.eps=1.0", "-1.0 <= ε < 1"]),
    (["smoothing=fixed", "smoothing.eps=-1.5"], ["smoothing.eps=-1.5", "-1.0 <= ε < 1"]),
    (["smoothing=annealed", "smoothing.eps_start=1.2"], ["smoothing.eps_start=1.2", "-1.0 <= ε < 1"]),
    (["smoothing=annealed", "smoothing.eps_end=-3"], ["smoothing.eps_end=-3", "-1.0 <= ε < 1"]),
    (["smoothing=annealed", "smoothing.schedule=sigmoid"], ["smoothing.schedule='sigmoid'", "linear, cosine"]),
    (["smoothing=adaptive", "smoothing.eps_min=0.5", "smoothing.eps_max=0.2"],
     ["smoothing.eps_min=0.5 > smoothing.eps_max=0.2", "eps_min <= eps_max"]),
    (["smoothing=adaptive", "smoothing.signal=margin"], ["smoothing.signal='margin'", "max_prob, entropy"]),
    (["+smoothing.epss=0.1", "smoothing=fixed"], ["smoothing:", "unexpected keyword argument 'epss'"]),
    (["noise.rate=1.0"], ["noise.rate=1.0", "0 <= rate < 1"]),
    (["noise.rate=-0.1"], ["noise.rate=-0.1", "0 <= rate < 1"]),
    (["noise=symmetric", "noise.rate=0.95"], ["noise.rate=0.95", "symmetric", "(K-1)/K"]),
    (["noise=asymmetric", "noise.rate=0.5"], ["noise.rate=0.5", "asymmetric", "< 0.5"]),
    (["noise=pairflip", "noise.rate=0.6"], ["noise.rate=0.6", "pairflip", "< 0.5"]),
    (["noise._target_=adaptive_ls.noise.GaussianNoise"], ["noise._target_", "GaussianNoise"]),
    (["noise=asymmetric", "noise.class_map={3: 12}"], ["noise.class_map", "12", "ids in [0, 10)"]),
    (["data=cifar10", "noise=asymmetric", "noise.class_map={zebra: cat}"],
     ["noise.class_map", "'zebra'", "'airplane'"]),
    (["data.batch_size=0"], ["data.batch_size=0", "integer > 0"]),
    (["data.batch_size=-8"], ["data.batch_size=-8", "integer > 0"]),
    (["data.eval_batch_size=0"], ["data.eval_batch_size=0", "integer > 0"]),
    (["data.val_size=-1"], ["data.val_size=-1", "integer >= 0"]),
    (["resume=maybe"], ["resume='maybe'", "auto, true, false"]),
    (["seed=-1"], ["seed=-1", "integer >= 0"]),
    (["module.eval_tta=flip"], ["module.eval_tta='flip'", "none, hflip"]),
    (["module.norm_bias_lr_scale=0"], ["module.norm_bias_lr_scale=0", "positive number"]),
    (["callbacks.diagnostics.mode=train"], ["callbacks.diagnostics.mode='train'", "train_outputs, eval_pass"]),
    (["logger=wandb", "logger.wandb.mode=sometimes"], ["logger.wandb.mode='sometimes'", "auto, online"]),
    (["optimized_metric=test/acc"], ["optimized_metric='test/acc'", "val/"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "integer >= 1"]),
]


def assert_one_line(error: BaseException, *parts: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize("overrides, parts", NO_DATA_NEEDED, ids=[" ".join(o) for o, _ in NO_DATA_NEEDED])
def test_settings_checked_before_any_data(tmp_path, overrides, parts):
    with pytest.raises(ConfigError) as error:
        run_in(tmp_path / "run", *overrides)
    assert_one_line(error.value, *parts)
    assert not (tmp_path / "run" / "noisy_labels.npy").exists()  # nothing was loaded


def test_default_config_is_valid():
    build_run(compose(*TINY))
    build_run(compose(*TINY, "data=cifar10", "noise=asymmetric", "smoothing=adaptive"))


# Checks that need the data run when it is loaded, before training starts.
@pytest.mark.slow
@pytest.mark.parametrize("case", ["val_split_too_large", "dataset_missing", "checksum_mismatch"])
def test_data_checks_fail_before_training(tmp_path, case):
    overrides = []
    if case == "val_split_too_large":
        overrides += ["data.val_size=5000"]
        parts = ["data.val_size=5000", "smaller than the training set (1438 images)"]
    elif case == "dataset_missing":
        overrides += ["data=cifar10", f"data.root={tmp_path / 'empty'}", "data.download=false"]
        parts = [f"data.root={tmp_path / 'empty'}", "CIFAR-10 not found", "data.download=true"]
    else:
        write_cifar10(tmp_path / "cifar")  # the real layout, other contents: other checksums
        overrides += ["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.verify=true"]
        parts = ["data.verify=true", "fail torchvision's CIFAR-10 checksums", "data.verify=false"]
    with pytest.raises(ConfigError) as error:
        run_in(tmp_path / "run", *overrides)
    assert_one_line(error.value, *parts)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(not (CONF_DIR / "noise" / "file.yaml").is_file(), reason="noise=file (label files) is not here")
@pytest.mark.parametrize("case", ["wrong_length", "out_of_range"])
def test_label_file_checked_against_the_data(tmp_path, case):
    labels = np.zeros(100 if case == "wrong_length" else 1438, dtype=np.int64)
    labels[-1] = 0 if case == "wrong_length" else 10
    np.save(tmp_path / "labels.npy", labels)
    with pytest.raises(ConfigError) as error:
        run_in(tmp_path / "run", "noise=file", f"noise.path={tmp_path / 'labels.npy'}")
    expected = ["noise.path", "100 labels", "1438"] if case == "wrong_length" else ["noise.path", "[0, 10)"]
    assert_one_line(error.value, *expected)


def test_resume_refuses_other_noisy_labels(tmp_path):
    plan = ResumePlan(tmp_path / "checkpoints" / "last.ckpt", labels_hash="0123456789abcdef", epoch=3)
    check_resumed_labels(plan, "0123456789abcdef")
    with pytest.raises(OutputDirError) as error:
        check_resumed_labels(plan, "fedcba9876543210")
    assert_one_line(error.value, "fedcba9876543210", "0123456789abcdef", "noisy_labels.npy", "hydra.run.dir")


@pytest.mark.slow
def test_entry_point_reports_a_bad_setting_in_one_line(tmp_path):
    """The user's view: exit code 2, one line on stderr, no traceback; the run's folder records the failure."""
    run_dir = tmp_path / "run"
    proc = entry_point("smoothing=fixed", "smoothing.eps=1.5", run_dir=run_dir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "error: smoothing.eps=1.5 is out of range: allowed is -1.0 <= ε < 1 (ε < 0 is negative label smoothing; "
        "ε = 1 would discard the label entirely)"]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["error"].startswith("ConfigError: smoothing.eps=1.5")
    assert not math.isnan(results["seed"])  # the failure record still says which run it was
    assert not (run_dir / "noisy_labels.npy").exists()  # nothing was loaded


@pytest.mark.slow
def test_a_completed_run_dir_is_refused_and_left_alone(tmp_path):
    """Re-running into a completed run's folder: refused, naming the ways out; nothing there changes (main does not
    record this failure in the folder's results.json: the folder is not this run's)."""
    from adaptive_ls.cli import record_failure

    run_dir = tmp_path / "run"
    run_in(run_dir, "trainer.max_epochs=1")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(OutputDirError) as error:
        run_in(run_dir, "trainer.max_epochs=1")
    assert_one_line(error.value, f"paths.output_dir={run_dir} already holds a completed run", "hydra.run.dir",
                    "resume=true")
    record_failure(compose(*TINY, "trainer.max_epochs=1", f"paths.output_dir={run_dir}"), error.value)
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_failed_jobs_are_recorded_and_reported(tmp_path, capsys, monkeypatch):
    """What main does with a failure: one line and an exit code alone, NaN (the sweep goes on) in a multirun."""
    from adaptive_ls.config import RunCompleted
    from adaptive_ls.callbacks import NonFiniteLossError
    from adaptive_ls.cli import handle_failure

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = compose(*TINY, f"paths.output_dir={tmp_path}")
    # a sweep run again in its folder: a completed job reports its stored metric and its folder is left alone
    assert handle_failure(cfg, RunCompleted("completed", {"val/acc_best": 0.75}), multirun=True) == 0.75
    assert not (tmp_path / "results.json").exists()
    # a failed job in a sweep: recorded, NaN to the sweeper
    assert math.isnan(handle_failure(cfg, ConfigError("smoothing.eps=2.0 is out of range"), multirun=True))
    recorded = json.loads((tmp_path / "results.json").read_text())
    assert recorded["status"] == "failed" and recorded["error"] == "ConfigError: smoothing.eps=2.0 is out of range"
    # alone: one line on stderr and an exit code (2: a setting to fix; 1: a run that diverged)
    for error, code in ((ConfigError("data.batch_size=0: allowed is an integer > 0"), 2),
                        (NonFiniteLossError("non-finite training loss"), 1)):
        with pytest.raises(SystemExit) as exit_:
            handle_failure(cfg, error, multirun=False)
        assert exit_.value.code == code and capsys.readouterr().err == f"error: {error}\n"
    with pytest.raises(KeyError):  # anything else is a bug: Hydra shows the traceback
        handle_failure(cfg, KeyError("bug"), multirun=False)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):
        handle_failure(cfg, ConfigError("data.batch_size=0"), multirun=False)


def test_ddp_processes_cannot_be_started_inside_a_multirun(monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=RunMode.MULTIRUN)))
    for name in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as error:
        build_run(compose(*TINY, "trainer=ddp", "trainer.devices=2"))
    assert_one_line(error.value, "trainer.strategy=ddp", "trainer.devices=2", "hydra/launcher=submitit_slurm",
                    "tasks_per_node=2")
    build_run(compose(*TINY, "trainer=ddp", "trainer.devices=1"))  # one process: nothing to start


def test_a_moved_dataset_does_not_block_a_resume_but_other_settings_do():
    from adaptive_ls.resume import config_differences

    saved = {"data": {"root": "/data1", "batch_size": 64}, "noise": {"path": "/data1/h.pt", "rate": 0.4}}
    moved = {"data": {"root": "/data2", "batch_size": 64}, "noise": {"path": "/data2/h.pt", "rate": 0.4}}
    assert config_differences(saved, moved) == []  # the labels' hash, checked on resume, catches other data
    changed = {"data": {"root": "/data2", "batch_size": 32}, "noise": {"path": "/data2/h.pt", "rate": 0.4}}
    assert config_differences(saved, changed) == ["data.batch_size: 64 -> 32"]


def test_the_composed_config_is_the_object_graph():
    """instantiate(cfg.data) and instantiate(cfg.module) alone give the noisy data and the whole module."""
    import hydra

    from adaptive_ls.module import LabelSmoothingClassifier
    from adaptive_ls.noise import PairFlipNoise
    from adaptive_ls.smoothing import AnnealedSmoothing

    cfg = compose(*TINY, "noise=pairflip", "noise.rate=0.3", "noise_seed=3", "smoothing=annealed",
                  "module.eval_tta=hflip", "optimizer.lr=0.2")
    data = hydra.utils.instantiate(cfg.data)
    assert isinstance(data.noise, PairFlipNoise) and data.noise.rate == 0.3 and data.noise_seed == 3
    data.setup("fit")
    assert data.realized_noise_rate == pytest.approx(0.3, abs=1e-3)
    module = hydra.utils.instantiate(cfg.module)
    assert isinstance(module, LabelSmoothingClassifier) and isinstance(module.smoothing, AnnealedSmoothing)
    assert module.eval_tta == "hflip" and module.optimizer_factory.keywords["lr"] == 0.2
    assert module.num_classes == 10 and module.net(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_the_module_yaml_and_the_constructor_agree_on_every_default():
    """conf/module/default.yaml holds the options a run uses; the constructor's defaults (for use without Hydra) must
    be the same values."""
    import inspect

    from omegaconf import OmegaConf

    from adaptive_ls.module import LabelSmoothingClassifier

    options = OmegaConf.load(CONF_DIR / "module" / "default.yaml")
    defaults = {name: p.default for name, p in inspect.signature(LabelSmoothingClassifier).parameters.items()
                if p.default is not inspect.Parameter.empty and name in options and not OmegaConf.is_interpolation(
                    options, name)}
    assert defaults and all(options[name] == value for name, value in defaults.items()), defaults


@pytest.mark.parametrize("policy, share", [("self_adaptive", 0.3), ("alasca", 0.25)])
def test_literature_warmups_keep_their_authors_share_of_the_schedule(policy, share):
    """SAT's 60 of 200 and ALASCA's 30 of 120 warm-up epochs scale with trainer.max_epochs (a 30-epoch run would
    otherwise never leave SAT's warm-up); an explicit override still wins."""
    import hydra

    for max_epochs, expected in ((200, round(share * 200)), (30, round(share * 30)), (1, round(share * 1))):
        cfg = compose(*TINY, f"smoothing={policy}", f"trainer.max_epochs={max_epochs}")
        assert cfg.smoothing.warmup_epochs == expected
        assert hydra.utils.instantiate(cfg.smoothing).warmup_epochs == expected
    assert compose(*TINY, f"smoothing={policy}", "smoothing.warmup_epochs=5").smoothing.warmup_epochs == 5
    assert compose(*TINY, f"smoothing={policy}", "trainer.max_epochs=200").smoothing.warmup_epochs == \
        {"self_adaptive": 60, "alasca": 50}[policy]
