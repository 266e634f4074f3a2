"""Lookahead (airbench's weight averaging): its schedule, what one pull does, and a run that ends on (and resumes
with) the slow weights."""
from __future__ import annotations

import pytest
import torch

from adaptive_ls.lookahead import Lookahead
from adaptive_ls.models import small_cnn
from adaptive_ls.module import LabelSmoothingClassifier
from tests.runs import Crash, run_in

LOOKAHEAD = ("+callbacks.lookahead._target_=adaptive_ls.lookahead.Lookahead", "+callbacks.lookahead.every_n_steps=2",
             "+callbacks.lookahead.max_decay=0.9")
CRASH = ("+callbacks.crash._target_=tests.runs.CrashAt", "+callbacks.crash.epoch=1", "+callbacks.crash.batch=3")


def test_decay_follows_airbench_cubic_schedule():
    lookahead = Lookahead()
    assert lookahead.decay(0, 100) == 0.0
    assert lookahead.decay(50, 100) == pytest.approx(0.95**5 / 8)
    assert lookahead.decay(100, 100) == pytest.approx(0.95**5)


def test_a_pull_moves_the_slow_weights_toward_the_fast_ones_and_resets_the_fast_ones():
    module = LabelSmoothingClassifier(small_cnn(width=4))
    lookahead = Lookahead()
    fast = lookahead._floating_state(module)
    assert any(k.endswith("running_var") for k in fast)  # BatchNorm statistics are averaged too
    before = {k: v.clone() for k, v in fast.items()}
    lookahead.slow = {k: torch.zeros_like(v) for k, v in fast.items()}
    lookahead.pull(module, 0.75)
    for name, weight in lookahead._floating_state(module).items():
        torch.testing.assert_close(weight, 0.25 * before[name])
        torch.testing.assert_close(lookahead.slow[name], weight)


@pytest.mark.parametrize("kwargs, key", [({"every_n_steps": 0}, "every_n_steps=0"), ({"max_decay": 1.0}, "max_decay=1.0"),
                                         ({"power": 0}, "power=0")])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=rf"callbacks\.lookahead\.{key}"):
        Lookahead(**kwargs)


def _last(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def test_a_run_ends_on_the_slow_weights_and_resumes_exactly(tmp_path):
    whole = run_in(tmp_path / "whole", "trainer.max_epochs=3", *LOOKAHEAD)
    checkpoint = _last(tmp_path / "whole")
    (slow,) = [state["slow"] for key, state in checkpoint["callbacks"].items() if key.startswith("Lookahead")]
    assert slow and all(torch.equal(checkpoint["state_dict"][f"net.{name}"], value) for name, value in slow.items())

    run_dir = tmp_path / "crashed"
    with pytest.raises(Crash):
        run_in(run_dir, "trainer.max_epochs=3", *LOOKAHEAD, *CRASH)
    resumed = run_in(run_dir, "trainer.max_epochs=3", *LOOKAHEAD)  # continues from epoch 0's checkpoint
    assert resumed["resumed_from_epoch"] == 0 and resumed["test/acc"] == whole["test/acc"]
    final, reference = _last(run_dir)["state_dict"], checkpoint["state_dict"]
    assert all(torch.equal(final[k], reference[k]) for k in reference)
