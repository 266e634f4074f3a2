"""Hand-checked tests for adaptive_ls.metrics and adaptive_ls.plots."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adaptive_ls.metrics import (
    AdaptiveCalibrationError,
    BrierScore,
    NegativeLogLikelihood,
    ReliabilityBins,
    TopLabelAccuracy,
    TopLabelCalibrationError,
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    evaluation_metrics,
    fit_temperature,
    reliability_bins,
    temperature_scaled_metrics,
)
from adaptive_ls.plots import reliability_diagram, save_figure

K = 3


def _probs_from_conf(conf: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Build K=3 probs whose top-1 (class 0) has the given confidence, and targets matching `correct`."""
    c = torch.tensor(conf, dtype=torch.float64)
    rest = (1 - c) / 2
    probs = torch.stack([c, rest, rest], dim=1)
    targets = torch.tensor([0 if ok else 1 for ok in correct])
    return probs, targets


def _logits_from_conf(conf, correct):
    """Logits whose softmax is exactly _probs_from_conf (up to float32 rounding)."""
    probs, targets = _probs_from_conf(conf, correct)
    return probs.log().float(), targets


# 5-sample hand example used by several tests.
CONF = [0.9, 0.9, 0.85, 0.5, 0.45]
CORRECT = [True, True, False, True, False]


def test_ece_by_hand_5_bins():
    logits, targets = _logits_from_conf(CONF, CORRECT)
    # bins of width 0.2: {0.9, 0.9, 0.85} in [0.8, 1.0), {0.5, 0.45} in [0.4, 0.6)
    expected = 3 / 5 * abs(2 / 3 - (0.9 + 0.9 + 0.85) / 3) + 2 / 5 * abs(1 / 2 - (0.5 + 0.45) / 2)
    assert expected == pytest.approx(0.14)
    m = calibration_metrics(logits, targets, n_bins=5)
    assert m["ece"].item() == pytest.approx(expected, abs=1e-6)


def test_ece_by_hand_default_15_bins():
    logits, targets = _logits_from_conf(CONF, CORRECT)
    # width 1/15: 0.9 -> [0.867, 0.933), 0.85 -> [0.8, 0.867), 0.5 -> [0.467, 0.533), 0.45 -> [0.4, 0.467)
    expected = 2 / 5 * abs(1 - 0.9) + 1 / 5 * abs(0 - 0.85) + 1 / 5 * abs(1 - 0.5) + 1 / 5 * abs(0 - 0.45)
    m = calibration_metrics(logits, targets)
    assert m["ece"].item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.4)


def test_ece_zero_for_perfectly_calibrated():
    # 8 samples at confidence 0.75 with exactly 6 correct, 4 at 0.5 with 2 correct.
    conf = [0.75] * 8 + [0.5] * 4
    correct = [True, True, True, False] * 2 + [True, False, True, False]
    logits, targets = _logits_from_conf(conf, correct)
    m = calibration_metrics(logits, targets)
    assert m["ece"].item() == pytest.approx(0.0, abs=1e-6)
    assert m["mce"].item() == pytest.approx(0.0, abs=1e-6)
    assert m["acc"].item() == pytest.approx(8 / 12)
    # equal-mass bins of 4 (stable sort keeps tie order): {0.5 x4: 2 right}, {0.75 x4: 3 right} x2
    m3 = calibration_metrics(logits, targets, n_bins=3)
    assert m3["ece_adaptive"].item() == pytest.approx(0.0, abs=1e-6)
    # with 15 equal-mass bins every sample is its own bin, so adaptive ECE is mean |correct - conf|
    per_sample = sum(abs(float(ok) - c) for c, ok in zip(conf, correct)) / len(conf)
    assert m["ece_adaptive"].item() == pytest.approx(per_sample, abs=1e-6)


def test_mce_by_hand():
    logits, targets = _logits_from_conf(CONF, CORRECT)
    gap_high = abs(2 / 3 - (0.9 + 0.9 + 0.85) / 3)  # 0.21667
    gap_mid = abs(1 / 2 - (0.5 + 0.45) / 2)  # 0.025
    m = calibration_metrics(logits, targets, n_bins=5)
    assert m["mce"].item() == pytest.approx(max(gap_high, gap_mid), abs=1e-6)
    # 15 bins: every sample alone except the two 0.9s -> worst is the wrong 0.85
    m15 = calibration_metrics(logits, targets)
    assert m15["mce"].item() == pytest.approx(0.85, abs=1e-6)


def test_adaptive_ece_by_hand_equal_split():
    # given shuffled; sorted conf [.4 .5 .6 | .7 .8 .9] with correct [0 1 1 | 1 1 0]
    conf = [0.8, 0.4, 0.9, 0.6, 0.7, 0.5]
    correct = [True, False, False, True, True, True]
    probs, targets = _probs_from_conf(conf, correct)
    low = abs(2 / 3 - (0.4 + 0.5 + 0.6) / 3)  # 1/6
    high = abs(2 / 3 - (0.7 + 0.8 + 0.9) / 3)  # 2/15
    expected = 0.5 * low + 0.5 * high
    assert expected == pytest.approx(0.15)
    assert adaptive_calibration_error(probs.float(), targets, n_bins=2).item() == pytest.approx(expected, abs=1e-6)


def test_adaptive_ece_by_hand_unequal_split():
    # N=5, 2 bins -> tensor_split sizes [3, 2]: {0.45, 0.5, 0.85} and {0.9, 0.9}
    probs, targets = _probs_from_conf(CONF, CORRECT)
    first = abs(1 / 3 - (0.45 + 0.5 + 0.85) / 3)
    second = abs(1.0 - 0.9)
    expected = 3 / 5 * first + 2 / 5 * second
    got = adaptive_calibration_error(probs.float(), targets, n_bins=2)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # more bins than samples: each sample is its own bin (empty bins contribute 0)
    per_sample = sum(abs(float(ok) - c) for c, ok in zip(CONF, CORRECT)) / 5
    assert adaptive_calibration_error(probs.float(), targets, n_bins=8).item() == pytest.approx(per_sample, abs=1e-6)
    logits, _ = _logits_from_conf(CONF, CORRECT)
    assert calibration_metrics(logits, targets, n_bins=2)["ece_adaptive"].item() == pytest.approx(expected, abs=1e-6)


def test_brier_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    targets = torch.tensor([0, 2])
    first = 0.3**2 + 0.2**2 + 0.1**2  # 0.14
    second = 0.1**2 + 0.6**2 + 0.7**2  # 0.86
    assert brier_score(probs[:1], targets[:1]).item() == pytest.approx(0.14, abs=1e-6)
    assert brier_score(probs, targets).item() == pytest.approx((first + second) / 2, abs=1e-6)
    # range [0, 2]: perfect one-hot -> 0, certain and wrong -> 2
    onehot = torch.eye(3)
    assert brier_score(onehot, torch.tensor([0, 1, 2])).item() == pytest.approx(0.0)
    assert brier_score(onehot, torch.tensor([1, 2, 0])).item() == pytest.approx(2.0)
    logits, t = _logits_from_conf([0.7], [True])  # probs [0.7, 0.15, 0.15]
    assert calibration_metrics(logits, t)["brier"].item() == pytest.approx(0.09 + 2 * 0.15**2, abs=1e-6)


def test_nll_and_acc_match_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=g) * 3
    targets = torch.randint(0, 7, (64,), generator=g)
    m = calibration_metrics(logits, targets)
    assert torch.allclose(m["nll"], F.cross_entropy(logits, targets))
    assert m["acc"].item() == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert set(m) == {"acc", "nll", "ece", "ece_adaptive", "mce", "brier"}
    for v in m.values():
        assert v.ndim == 0 and v.dtype == torch.float32


def test_bf16_logits_computed_in_float32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(256, 10, generator=g) * 4).bfloat16()
    targets = torch.randint(0, 10, (256,), generator=g)
    m_bf16 = calibration_metrics(logits, targets)
    m_f32 = calibration_metrics(logits.float(), targets)
    for k in m_f32:
        assert m_bf16[k].dtype == torch.float32
        assert m_bf16[k].item() == pytest.approx(m_f32[k].item(), abs=1e-6)


def test_reliability_bins_by_hand():
    logits, targets = _logits_from_conf(CONF, CORRECT)
    b = reliability_bins(logits, targets, n_bins=5)
    assert torch.allclose(b["bin_lower"], torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8]))
    assert torch.allclose(b["bin_upper"], torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0]))
    assert b["count"].dtype == torch.int64
    assert b["count"].tolist() == [0, 0, 2, 0, 3]
    assert int(b["count"].sum()) == len(CONF)
    exp_conf = torch.tensor([0, 0, (0.5 + 0.45) / 2, 0, (0.9 + 0.9 + 0.85) / 3])
    exp_acc = torch.tensor([0, 0, 1 / 2, 0, 2 / 3])
    assert torch.allclose(b["confidence"], exp_conf, atol=1e-6)
    assert torch.allclose(b["accuracy"], exp_acc, atol=1e-6)


def test_reliability_bins_confidence_one_in_last_bin_and_ece_consistent():
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = reliability_bins(logits, torch.tensor([0, 2]), n_bins=10)
    assert b["count"][-1].item() == 1 and b["count"][3].item() == 1  # 1.0 -> last bin, 1/3 -> [0.3, 0.4)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(500, 4, generator=g) * 2
    targets = torch.randint(0, 4, (500,), generator=g)
    b = reliability_bins(logits, targets)
    assert int(b["count"].sum()) == 500
    ece = (b["count"] * (b["accuracy"] - b["confidence"]).abs()).sum() / b["count"].sum()
    assert ece.item() == pytest.approx(calibration_metrics(logits, targets)["ece"].item(), abs=1e-5)


# -- the Metric objects ---------------------------------------------------------------------------------------------

METRIC_KEYS = {"acc", "nll", "ece", "ece_adaptive", "mce", "brier"}


def _random_split(n: int = 503, k: int = 7, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, torch.randint(0, k, (n,), generator=g)


def _one_shot(metric, logits, targets):
    metric.update(logits, targets)
    return metric.compute()


def test_metric_objects_by_hand():
    logits, targets = _logits_from_conf(CONF, CORRECT)
    ece = 3 / 5 * abs(2 / 3 - (0.9 + 0.9 + 0.85) / 3) + 2 / 5 * abs(1 / 2 - (0.5 + 0.45) / 2)
    assert _one_shot(TopLabelCalibrationError(K, n_bins=5), logits, targets).item() == pytest.approx(ece, abs=1e-6)
    mce = _one_shot(TopLabelCalibrationError(K, n_bins=5, norm="max"), logits, targets)
    assert mce.item() == pytest.approx(abs(2 / 3 - (0.9 + 0.9 + 0.85) / 3), abs=1e-6)
    adaptive = 3 / 5 * abs(1 / 3 - (0.45 + 0.5 + 0.85) / 3) + 2 / 5 * abs(1.0 - 0.9)
    assert _one_shot(AdaptiveCalibrationError(n_bins=2), logits, targets).item() == pytest.approx(adaptive, abs=1e-6)
    assert _one_shot(TopLabelAccuracy(K), logits, targets).item() == pytest.approx(3 / 5)
    nll = -sum(math.log(c) if ok else math.log((1 - c) / 2) for c, ok in zip(CONF, CORRECT)) / 5
    assert _one_shot(NegativeLogLikelihood(), logits, targets).item() == pytest.approx(nll, abs=1e-6)
    brier = sum((1 - c) ** 2 + 2 * ((1 - c) / 2) ** 2 if ok else c**2 + (1 - (1 - c) / 2) ** 2 + ((1 - c) / 2) ** 2
                for c, ok in zip(CONF, CORRECT)) / 5
    assert _one_shot(BrierScore(), logits, targets).item() == pytest.approx(brier, abs=1e-6)
    bins = _one_shot(ReliabilityBins(n_bins=5), logits, targets)
    assert bins["count"].tolist() == [0, 0, 2, 0, 3]
    assert torch.allclose(bins["accuracy"], torch.tensor([0, 0, 1 / 2, 0, 2 / 3]), atol=1e-6)


def test_collection_keys_prefix_and_values_of_each_metric_alone():
    metrics = evaluation_metrics(7, prefix="val/")
    assert set(metrics.keys()) == {f"val/{k}" for k in METRIC_KEYS}
    logits, targets = _random_split()
    metrics.update(logits, targets)
    values = metrics.compute()
    assert set(values) == {f"val/{k}" for k in METRIC_KEYS}
    # each metric alone gives the value it has in the collection
    alone = {"acc": TopLabelAccuracy(7), "nll": NegativeLogLikelihood(), "ece": TopLabelCalibrationError(7),
             "ece_adaptive": AdaptiveCalibrationError(), "mce": TopLabelCalibrationError(7, norm="max"),
             "brier": BrierScore()}
    for name, metric in alone.items():
        assert values[f"val/{name}"].item() == pytest.approx(_one_shot(metric, logits, targets).item(), abs=1e-7), name


def test_metric_objects_match_the_functions():
    logits, targets = _random_split()
    probs = logits.softmax(1)
    assert _one_shot(BrierScore(), logits, targets).item() == pytest.approx(brier_score(probs, targets).item(), abs=1e-6)
    assert _one_shot(AdaptiveCalibrationError(), logits, targets).item() == pytest.approx(
        adaptive_calibration_error(probs, targets).item(), abs=1e-6)
    assert _one_shot(NegativeLogLikelihood(), logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), abs=1e-6)
    assert _one_shot(TopLabelAccuracy(7), logits, targets).item() == pytest.approx(
        (logits.argmax(1) == targets).float().mean().item(), abs=1e-7)
    bins, expected = _one_shot(ReliabilityBins(), logits, targets), reliability_bins(logits, targets)
    assert set(bins) == set(expected)
    assert torch.equal(bins["count"], expected["count"])
    for key in ("bin_lower", "bin_upper", "confidence", "accuracy"):
        torch.testing.assert_close(bins[key], expected[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("sizes", [[1, 2, 500], [64] * 7 + [55], [250, 253]])
def test_batched_updates_equal_one_update(sizes):
    logits, targets = _random_split()
    whole, batched = evaluation_metrics(7), evaluation_metrics(7)
    whole.update(logits, targets)
    bins_whole, bins_batched = ReliabilityBins(), ReliabilityBins()
    bins_whole.update(logits, targets)
    for z, y in zip(logits.split(sizes), targets.split(sizes)):
        batched.update(z, y)
        bins_batched.update(z, y)
    expected, got = whole.compute(), batched.compute()
    for name in METRIC_KEYS:
        assert got[name].item() == pytest.approx(expected[name].item(), abs=1e-6), name
    assert torch.equal(bins_batched.compute()["count"], bins_whole.compute()["count"])
    torch.testing.assert_close(bins_batched.compute()["confidence"], bins_whole.compute()["confidence"])


def test_each_member_reset_then_new_epoch_matches_a_fresh_collection():
    """Lightning computes and resets the logged members one by one; the shared state must follow the next epoch."""
    (first_z, first_y), (second_z, second_y) = _random_split(seed=5), _random_split(n=301, seed=6)
    metrics = evaluation_metrics(7)
    metrics.update(first_z, first_y)
    for _, metric in metrics.items():
        metric.compute()
        metric.reset()
    metrics.update(second_z, second_y)
    got = {name: metric.compute() for name, metric in metrics.items()}
    expected = calibration_metrics(second_z, second_y)
    for name in METRIC_KEYS:
        assert got[name].item() == pytest.approx(expected[name].item(), abs=1e-6), name


def test_states_reduce_across_processes_as_one_update():
    """Two processes' shards, merged with each state's dist_reduce_fx (what DDP's sync does), equal one update."""
    logits, targets = _random_split()
    half = logits.shape[0] // 2
    for make in (lambda: TopLabelCalibrationError(7), lambda: AdaptiveCalibrationError(), BrierScore,
                 NegativeLogLikelihood, lambda: TopLabelAccuracy(7), ReliabilityBins):
        whole, rank0, rank1 = make(), make(), make()
        whole.update(logits, targets)
        rank1.update(logits[:half], targets[:half])  # merge_state puts the incoming state first
        rank0.update(logits[half:], targets[half:])
        rank0.merge_state(rank1)
        expected, got = whole.compute(), rank0.compute()
        if isinstance(expected, dict):
            assert torch.equal(got["count"], expected["count"])
            got, expected = got["accuracy"], expected["accuracy"]
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_metric_objects_take_bf16_logits_and_return_float32():
    logits, targets = _random_split()
    metrics = evaluation_metrics(7)
    metrics.update(logits.bfloat16(), targets)
    expected = calibration_metrics(logits.bfloat16().float(), targets)
    for name, value in metrics.compute().items():
        assert value.dtype == torch.float32 and value.ndim == 0, name
        assert value.item() == pytest.approx(expected[name].item(), abs=1e-6), name


def _synthetic(n: int = 20000, k: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z with labels drawn from softmax(z): z is calibrated, so the true temperature is 1."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g) * 2
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z, y


@pytest.mark.parametrize("scale, expected_t", [(3.0, 3.0), (0.5, 0.5)])
def test_fit_temperature_recovers_known_temperature(scale, expected_t):
    z, y = _synthetic()
    t = fit_temperature(z * scale, y)
    assert isinstance(t, float)
    assert t == pytest.approx(expected_t, rel=0.10)
    assert (t > 1) == (expected_t > 1)


def test_fit_temperature_under_inference_mode():
    z, y = _synthetic(n=2000)
    with torch.inference_mode():
        zi, yi = z * 3, y.clone()
        t = fit_temperature(zi, yi)
    assert t == pytest.approx(3.0, rel=0.2)


def test_temperature_scaled_metrics_improves_nll():
    z, y = _synthetic(n=20000)
    z = z * 3  # over-confident
    val, test = slice(0, 10000), slice(10000, None)
    out = temperature_scaled_metrics(z[val], y[val], z[test], y[test])
    raw = calibration_metrics(z[test], y[test])
    assert {"temperature", "ts_acc", "ts_nll", "ts_ece", "ts_ece_adaptive", "ts_mce", "ts_brier"} <= set(out)
    assert out["temperature"] > 1
    assert out["ts_nll"].item() <= raw["nll"].item()
    assert out["ts_ece"].item() < raw["ece"].item()
    assert out["ts_acc"].item() == pytest.approx(raw["acc"].item())  # T > 0 keeps the argmax
    expected_nll = F.cross_entropy(z[test] / out["temperature"], y[test])
    assert out["ts_nll"].item() == pytest.approx(expected_nll.item(), rel=1e-5)


@pytest.mark.parametrize(
    "logits, targets, match",
    [
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\[N, K\]"),
        (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), "N=4"),
        (torch.zeros(4, 3), torch.zeros(4), "integer"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "N=0"),
    ],
)
def test_argument_checks(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        calibration_metrics(logits, targets)


def test_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        calibration_metrics(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), n_bins=0)


def test_reliability_diagram_writes_png(tmp_path):
    logits, targets = _logits_from_conf(CONF, CORRECT)
    b = reliability_bins(logits, targets, n_bins=5)
    fig = reliability_diagram(b, title="hand example")
    ax = fig.axes[0]
    acc_bars, gap_bars = ax.containers[0], ax.containers[1]
    assert len(acc_bars) == 5 and len(gap_bars) == 5
    assert [p.get_height() for p in acc_bars] == pytest.approx([0, 0, 0.5, 0, 2 / 3], abs=1e-6)
    assert ax.get_title() == "hand example"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(lbl == "ECE = 0.1400" for lbl in labels), labels
    out = save_figure(fig, tmp_path / "sub" / "dir" / "reliability.png")
    assert out.exists()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_on_given_axes(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    logits = torch.randn(50, 3, generator=torch.Generator().manual_seed(3))
    b = reliability_bins(logits, torch.zeros(50, dtype=torch.long))
    assert reliability_diagram(b, ax=ax) is fig
    assert len(ax.containers[0]) == 15
    assert save_figure(fig, tmp_path / "r.png").stat().st_size > 0


def test_reliability_diagram_rejects_bad_bins():
    with pytest.raises(ValueError, match="reliability_bins"):
        reliability_diagram({"confidence": torch.zeros(3)})
