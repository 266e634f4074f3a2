"""A bad setting anywhere in the run's object graph (optimizer, model, scheduler, Trainer, callbacks, loggers,
booleans, types) is refused before the data loads: one line naming the full key, the value and what is allowed, exit
code 2 (adaptive_ls.preflight, adaptive_ls.arguments). The mechanism knows no list of mistakes: the cases below are
a sample, several of them settings no check in the package names."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adaptive_ls.config import ConfigError, build_run
from tests.runs import DIGITS_ON_CPU, REPO_ROOT, TINY, compose, entry_point

# (overrides, what the line must say), a bad setting of each group, through `python -m adaptive_ls`
BY_PROCESS = [
    (["optimizer.lr=-1"], ["optimizer.lr=-1", "allowed is a number >= 0"]),
    (["optimizer.lr=nan"], ["optimizer.lr=nan", "allowed is a finite number"]),
    (["model.width=0"], ["model.width=0", "allowed is an integer >= 1"]),
    (["scheduler.warmup_fraction=2"], ["scheduler.warmup_fraction=2", "allowed is 0 <= warmup_fraction <= 1"]),
    (["trainer.precision=fp8"], ["trainer.precision='fp8'", "allowed are", "32-true"]),
    (["trainer.devices=0"], ["trainer.devices=0", "allowed is an integer >= 1"]),
    (["callbacks.best_checkpoint.monitor=val/accuracy"],
     ["callbacks.best_checkpoint.monitor='val/accuracy'", "allowed is a metric the module logs", "val/acc,"]),
    (["logger.csv.version=[1]"], ["logger.csv.version=[1]", "allowed is"]),
    (["data.clean_val=no"], ["data.clean_val='no'", "allowed are true, false"]),
    (["smoothing=fixed", "smoothing.eps=[0.1]"], ["smoothing.eps=[0.1]", "allowed is a number"]),
    (["smoothing=adaptive", "smoothing.warmup_epochs=2"],
     ["smoothing.warmup_epochs=2 >= trainer.max_epochs=2", "allowed is smoothing.warmup_epochs < trainer.max_epochs"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, parts", BY_PROCESS, ids=[" ".join(o) for o, _ in BY_PROCESS])
def test_a_bad_setting_of_any_group_exits_2_with_one_line_before_the_data(tmp_path, overrides, parts):
    run_dir = tmp_path / "run"
    proc = entry_point(*overrides, run_dir=run_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])
    results = json.loads((run_dir / "results.json").read_text())  # a fresh folder records the refusal
    assert results["status"] == "failed" and "noise/labels_hash" not in results
    assert not (run_dir / "noisy_labels.npy").exists() and not (run_dir / "checkpoints").exists()


# The same mechanism in-process, over settings of every kind of callee: the package's own objects, torch's
# optimizers and schedules, Lightning's Trainer and callbacks.
IN_PROCESS = [
    (["optimizer=adamw", "+optimizer.betas=[1.5,0.9]"], ["optimizer.betas=[1.5, 0.9]", "AdamW", "allowed is"]),
    (["optimizer=adamw", "optimizer.weight_decay=-0.5"], ["optimizer.weight_decay=-0.5", "allowed is a number >= 0"]),
    (["optimizer.momentum=-0.5"], ["optimizer.momentum=-0.5", "allowed is a number > 0"]),
    (["optimizer.nesterov=maybe"], ["optimizer.nesterov='maybe'", "allowed are true, false"]),
    (["scheduler=none", "scheduler.factor=2"], ["scheduler.factor=2", "ConstantLR", "allowed is"]),
    (["scheduler.final_lr_fraction=inf"], ["scheduler.final_lr_fraction=inf", "finite"]),
    (["callbacks.best_checkpoint.save_top_k=-5"], ["callbacks.best_checkpoint.save_top_k=-5", "integer >= -1"]),
    (["callbacks.best_checkpoint.mode=maxx"], ["callbacks.best_checkpoint.mode='maxx'", "can be min, max", "allowed is"]),
    (["+callbacks.stop._target_=pytorch_lightning.callbacks.EarlyStopping", "+callbacks.stop.monitor=val/loss"],
     ["callbacks.stop.monitor='val/loss'", "val/nll"]),
    (["trainer.max_epochs=2.5"], ["trainer.max_epochs=2.5", "allowed is an integer"]),
    (["trainer.deterministic=yes"], ["trainer.deterministic='yes'", "true, false"]),
    (["trainer.accelerator=gpu"], ["trainer.accelerator='gpu'", "allowed is"]),
    (["module.ece_bins=0"], ["module.ece_bins=0", "allowed is an integer >= 1"]),
    (["smoothing=adaptive", "smoothing.freeze_patience=3", "data.val_size=0"],
     ["data.val_size=0", "smoothing.freeze_patience=3", "allowed is data.val_size > 0"]),
    (["smoothing=adaptive", "smoothing.freeze_patience=-1"], ["smoothing.freeze_patience=-1", "integer >= 0"]),
    (["module.num_classes=7"], ["module.num_classes=7", "allowed is 10"]),
    (["module.channels_last=1"], ["module.channels_last=1", "true, false"]),
    (["data.crop_padding=-1"], ["data.crop_padding=-1", "integer >= 0"]),
    (["data.batch_size=64.5"], ["data.batch_size=64.5", "allowed is an integer"]),
    (["noise.rate=abc"], ["noise.rate='abc'", "allowed is a number"]),
    (["test_best=maybe"], ["test_best='maybe'", "true, false"]),
    (["logger=wandb", "logger.wandb.log_model=maybe"], ["logger.wandb.log_model='maybe'", "true, false"]),
]


@pytest.mark.parametrize("overrides, parts", IN_PROCESS, ids=[" ".join(o) for o, _ in IN_PROCESS])
def test_every_object_is_built_and_checked_before_the_data(tmp_path, overrides, parts):
    with pytest.raises(ConfigError) as error:
        build_run(compose(*TINY, *overrides, f"paths.output_dir={tmp_path}"))
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_good_settings_of_every_group_pass_the_checks(tmp_path):
    """What the checks allow: the defaults of every group, and values at their bounds."""
    build_run(compose(*DIGITS_ON_CPU, "model=fastnet", "data=cifar10", f"paths.output_dir={tmp_path}"))
    for overrides in ([], ["optimizer=adamw", "scheduler=none"],
                      ["smoothing=adaptive", "smoothing.warmup_epochs=1", "smoothing.freeze_patience=2"],
                      ["smoothing=self_adaptive"],
                      ["smoothing=alasca"], ["callbacks.best_checkpoint.monitor=val/nll",
                                             "callbacks.best_checkpoint.mode=min"],
                      ["callbacks.best_checkpoint.save_top_k=-1", "scheduler.warmup_fraction=1",
                       "trainer.deterministic=true", "data.clean_val=true", "trainer.precision=32"]):
        build_run(compose(*TINY, *overrides, f"paths.output_dir={tmp_path}"))


@pytest.mark.parametrize("overrides, line", [
    (("optimizer=adam",), "error: optimizer=adam: no such option of optimizer; allowed are adamw, sgd"),
    (("optimzer.lr=0.1",), "error: optimzer.lr=0.1: no such key (write +optimzer.lr=0.1 to add one)"),
    (("-m", "smoothing=none,fixd"), "error: smoothing=fixd: no such option of smoothing; allowed are "),
    (("-m", "noise=sym40,asym4", "smoothing=none"), "error: noise=asym4: no such option of noise; allowed are "),
])
def test_a_misspelled_option_or_key_is_one_line_before_hydra_runs(tmp_path, overrides, line):
    """Hydra's own composition error is several lines and, in a sweep, comes only when the bad value's job starts:
    the command line is composed first, every swept value of it, and nothing is written."""
    command = [sys.executable, "-m", "adaptive_ls", *overrides, f"hydra.run.dir={tmp_path / 'run'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(line), done.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_options_from_the_users_config_folder_are_allowed(tmp_path):
    """``hydra.searchpath`` adds a user's own options (conf/extending): the early composition sees them too."""
    from adaptive_ls.cli import CONFIG_DIR
    from adaptive_ls.command_line import command_line_problem

    (tmp_path / "my_conf" / "callbacks").mkdir(parents=True)
    (tmp_path / "my_conf" / "callbacks" / "mine.yaml").write_text("defaults:\n  - default\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    assert command_line_problem(["-m", searchpath, "callbacks=mine", "seed=1,2"], CONFIG_DIR) is None
    assert command_line_problem(["-m", searchpath, "callbacks=mien"], CONFIG_DIR).startswith(
        "callbacks=mien: no such option of callbacks")
