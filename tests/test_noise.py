"""Tests for adaptive_ls.noise: exact-count corruption, the noise-kind classes, diagnostics and label files."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
import torch

from adaptive_ls.noise import (
    CIFAR10_ASYMMETRIC_MAP,
    CIFAR10_CLASSES,
    CIFAR10N_KEYS,
    Cifar10NNoise,
    KINDS,
    MNIST_ASYMMETRIC_MAP,
    NOISE_KINDS,
    AsymmetricNoise,
    InstanceNoise,
    LabelFileNoise,
    LabelFileNotFoundError,
    NoiseKind,
    NoiseSettingError,
    NoNoise,
    PairFlipNoise,
    SymmetricNoise,
    corrupt_labels,
    label_hash,
    load_label_file,
    parse_class_map,
    realized_noise_rate,
    transition_matrix,
)
from tests.runs import compose

N, K = 1000, 10


@pytest.fixture
def labels() -> np.ndarray:
    """Balanced labels, 100 per class, shuffled."""
    return np.random.default_rng(123).permutation(np.repeat(np.arange(K), N // K))


# ------------------------------------------------------------------ constants


def test_constants():
    assert NOISE_KINDS == ("none", "symmetric", "asymmetric", "pairflip", "instance")
    assert CIFAR10_CLASSES[9] == "truck" and CIFAR10_CLASSES[1] == "automobile"
    assert CIFAR10_ASYMMETRIC_MAP == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    assert MNIST_ASYMMETRIC_MAP == {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
    assert len(CIFAR10N_KEYS) == 6 and "worse_label" in CIFAR10N_KEYS


# ------------------------------------------------------------------ symmetric / pairflip


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.35, 0.5, 0.8])
def test_symmetric_exact_count(labels, rate):
    noisy, is_noisy = corrupt_labels(labels, "symmetric", rate, K, seed=0)
    assert noisy.dtype == np.int64 and is_noisy.dtype == np.bool_
    assert int((noisy != labels).sum()) == round(rate * N)
    np.testing.assert_array_equal(is_noisy, noisy != labels)
    assert realized_noise_rate(labels, noisy) == pytest.approx(round(rate * N) / N)


def test_symmetric_targets_are_other_classes_and_spread(labels):
    noisy, is_noisy = corrupt_labels(labels, "symmetric", 0.6, K, seed=1)
    assert np.all(noisy[is_noisy] != labels[is_noisy])
    # every clean class reaches every other class
    t = transition_matrix(labels, noisy, K)
    off_diag = t[~np.eye(K, dtype=bool)]
    assert np.all(off_diag > 0)
    assert noisy.min() >= 0 and noisy.max() < K


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.45])
def test_pairflip_exact_count_and_target(labels, rate):
    noisy, is_noisy = corrupt_labels(labels, "pairflip", rate, K, seed=2)
    assert int(is_noisy.sum()) == round(rate * N)
    np.testing.assert_array_equal(noisy[is_noisy], (labels[is_noisy] + 1) % K)


def test_pairflip_wraps_last_class():
    y = np.full(100, K - 1)
    noisy, is_noisy = corrupt_labels(y, "pairflip", 0.3, K, seed=0)
    assert set(noisy[is_noisy].tolist()) == {0}


# ------------------------------------------------------------------ asymmetric


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_asymmetric_default_cifar_map(labels, rate):
    noisy, is_noisy = corrupt_labels(labels, "asymmetric", rate, K, seed=3)
    for c in range(K):
        members = labels == c
        changed = is_noisy & members
        if c in CIFAR10_ASYMMETRIC_MAP:
            assert int(changed.sum()) == round(rate * members.sum())
            assert np.all(noisy[changed] == CIFAR10_ASYMMETRIC_MAP[c])
        else:
            assert not changed.any()
    assert int(is_noisy.sum()) == len(CIFAR10_ASYMMETRIC_MAP) * round(rate * 100)


def test_asymmetric_unbalanced_per_class_counts():
    y = np.concatenate([np.zeros(37), np.ones(250), np.full(13, 2)]).astype(int)
    noisy, is_noisy = corrupt_labels(y, "asymmetric", 0.3, 3, seed=0, class_map={0: 1, 2: 0})
    assert int((is_noisy & (y == 0)).sum()) == round(0.3 * 37)
    assert int((is_noisy & (y == 2)).sum()) == round(0.3 * 13)
    assert not (is_noisy & (y == 1)).any()
    assert np.all(noisy[is_noisy & (y == 0)] == 1) and np.all(noisy[is_noisy & (y == 2)] == 0)


def test_asymmetric_class_map_by_name_matches_ids(labels):
    by_name = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    a = corrupt_labels(labels, "asymmetric", 0.3, K, seed=4, class_map=by_name)[0]
    b = corrupt_labels(labels, "asymmetric", 0.3, K, seed=4, class_map=CIFAR10_ASYMMETRIC_MAP)[0]
    c = corrupt_labels(labels, "asymmetric", 0.3, K, seed=4)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_asymmetric_swap_does_not_chain(labels):
    # cat<->dog: a cat moved to dog must not then be moved back by the dog entry
    noisy, is_noisy = corrupt_labels(labels, "asymmetric", 0.4, K, seed=5, class_map={3: 5, 5: 3})
    assert np.all(noisy[is_noisy & (labels == 3)] == 5)
    assert np.all(noisy[is_noisy & (labels == 5)] == 3)
    assert int(is_noisy.sum()) == 80


def test_parse_class_map_forms():
    assert parse_class_map({"truck": "automobile", 2: 0, "4": "7"}, 10) == {9: 1, 2: 0, 4: 7}
    assert parse_class_map({"Cat": "DOG"}, 10) == {3: 5}
    assert parse_class_map({"a": "b"}, 3, class_names=["a", "b", "c"]) == {0: 1}
    assert parse_class_map(MNIST_ASYMMETRIC_MAP, 10) == MNIST_ASYMMETRIC_MAP


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"zebra": 1}, r"class_map.*'zebra'.*airplane"),
        ({3: 10}, r"class_map.*out of range.*\[0, 10\)"),
        ({-1: 2}, r"class_map.*out of range"),
        ({"cat": 3}, r"class_map.*itself"),
        ({3: 5, "cat": 4}, r"class_map.*twice"),
        ({}, r"class_map.*empty"),
        ({1.5: 2}, r"class_map"),
    ],
)
def test_parse_class_map_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_class_map(bad, 10)


def test_parse_class_map_names_need_class_names():
    with pytest.raises(ValueError, match=r"class_map.*'cat'.*\[0, 5\)"):
        parse_class_map({"cat": 1}, 5)


# ------------------------------------------------------------------ none / determinism


@pytest.mark.parametrize("kind, rate", [("none", 0.3), ("symmetric", 0.0), ("pairflip", 0.0)])
def test_none_or_zero_rate_is_unchanged_copy(labels, kind, rate):
    noisy, is_noisy = corrupt_labels(labels, kind, rate, K, seed=0)
    np.testing.assert_array_equal(noisy, labels)
    assert not is_noisy.any()
    noisy[0] = (noisy[0] + 1) % K
    assert noisy[0] != labels[0]  # a copy, not a view


@pytest.mark.parametrize("kind", ["symmetric", "pairflip", "asymmetric"])
def test_determinism(labels, kind):
    a = corrupt_labels(labels, kind, 0.3, K, seed=7)
    b = corrupt_labels(labels, kind, 0.3, K, seed=7)
    c = corrupt_labels(labels, kind, 0.3, K, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert label_hash(a[0]) == label_hash(b[0]) != label_hash(c[0])


def test_accepts_torch_and_lists(labels):
    a = corrupt_labels(torch.from_numpy(labels), "symmetric", 0.2, K, seed=0)[0]
    b = corrupt_labels(labels.tolist(), "symmetric", 0.2, K, seed=0)[0]
    np.testing.assert_array_equal(a, b)


def test_input_not_modified(labels):
    before = labels.copy()
    corrupt_labels(labels, "symmetric", 0.5, K, seed=0)
    np.testing.assert_array_equal(labels, before)


# ------------------------------------------------------------------ instance


@pytest.fixture(scope="module")
def idn_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 2000)
    x = rng.integers(0, 256, (2000, 3, 8, 8), dtype=np.uint8)
    return y, x


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_instance_rate_and_determinism(idn_data, rate):
    y, x = idn_data
    noisy, is_noisy = corrupt_labels(y, "instance", rate, K, seed=11, features=x)
    assert abs(is_noisy.mean() - rate) <= 0.05
    np.testing.assert_array_equal(is_noisy, noisy != y)
    assert noisy.min() >= 0 and noisy.max() < K
    again = corrupt_labels(y, "instance", rate, K, seed=11, features=x)[0]
    np.testing.assert_array_equal(noisy, again)
    other = corrupt_labels(y, "instance", rate, K, seed=12, features=x)[0]
    assert not np.array_equal(noisy, other)


def test_instance_float_features_equal_scaled_uint8(idn_data):
    y, x = idn_data
    a = corrupt_labels(y, "instance", 0.3, K, seed=1, features=x)[0]
    b = corrupt_labels(y, "instance", 0.3, K, seed=1, features=torch.from_numpy(x / 255.0))[0]
    np.testing.assert_array_equal(a, b)


def test_instance_needs_features(labels):
    with pytest.raises(ValueError, match="instance.*features"):
        corrupt_labels(labels, "instance", 0.2, K, seed=0)
    with pytest.raises(ValueError, match="one row per label"):
        corrupt_labels(labels, "instance", 0.2, K, seed=0, features=np.zeros((5, 3)))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="gaussian", rate=0.2), r"kind='gaussian'.*'none', 'symmetric'"),
        (dict(kind="symmetric", rate=-0.1), r"^rate=-0\.1.*0 <= rate < 1"),
        (dict(kind="symmetric", rate=1.0), r"^rate=1\.0.*0 <= rate < 1"),
        (dict(kind="symmetric", rate=0.9), r"^rate=0\.9.*\(K-1\)/K"),
        (dict(kind="pairflip", rate=0.5), r"^rate=0\.5.*< 0\.5"),
        (dict(kind="asymmetric", rate=0.5), r"^rate=0\.5.*< 0\.5"),
        (dict(kind="symmetric", rate="abc"), r"^rate='abc'"),
    ],
)
def test_corrupt_labels_validation(labels, kwargs, match):
    with pytest.raises(NoiseSettingError, match=match):
        corrupt_labels(labels, num_classes=K, seed=0, **kwargs)


def test_symmetric_limit_depends_on_k():
    y = np.arange(100) % 2
    with pytest.raises(NoiseSettingError, match=r"^rate=0\.5.*K=2"):
        corrupt_labels(y, "symmetric", 0.5, 2, seed=0)
    assert int(corrupt_labels(y, "symmetric", 0.49, 2, seed=0)[1].sum()) == 49


def test_other_validation(labels):
    with pytest.raises(ValueError, match="num_classes"):
        corrupt_labels([0, 0, 0], "symmetric", 0.1, 1, seed=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        corrupt_labels([0, 10], "symmetric", 0.1, 10, seed=0)
    with pytest.raises(ValueError, match="labels must hold integers"):
        corrupt_labels([0.0, 1.0], "symmetric", 0.1, 10, seed=0)
    with pytest.raises(NoiseSettingError, match=r"^class_map=None.*num_classes=5"):
        corrupt_labels(labels % 5, "asymmetric", 0.2, 5, seed=0)
    assert corrupt_labels(labels % 5, "asymmetric", 0.2, 5, seed=0, class_map={0: 1})[1].sum() == 40


# ------------------------------------------------------------------ diagnostics


def test_transition_matrix_hand_computed():
    clean = [0, 0, 0, 0, 1, 1, 2]
    noisy = [0, 1, 1, 2, 1, 1, 0]
    expected = np.array(
        [
            [0.25, 0.5, 0.25, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],  # class 3 absent
        ]
    )
    t = transition_matrix(clean, noisy, 4)
    assert t.dtype == np.float64 and t.shape == (4, 4)
    np.testing.assert_allclose(t, expected)
    np.testing.assert_allclose(t[:3].sum(axis=1), 1.0)


def test_transition_matrix_rows_sum_to_one(labels):
    noisy = corrupt_labels(labels, "symmetric", 0.4, K, seed=0)[0]
    t = transition_matrix(labels, noisy, K)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.diag(t).mean(), 0.6)


def test_realized_noise_rate():
    assert realized_noise_rate([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        realized_noise_rate([0, 1], [0])


def test_label_hash_fixed_value():
    y = np.arange(10)
    assert label_hash(y) == "23c379d6c0f22ef6"
    assert label_hash(y.astype(np.int32)) == "23c379d6c0f22ef6"  # dtype-independent
    assert label_hash(torch.arange(10)) == "23c379d6c0f22ef6"
    z = y.copy()
    z[4] = 5
    assert label_hash(z) != label_hash(y)


# ------------------------------------------------------------------ label files


def test_load_npy(tmp_path):
    y = np.arange(20, dtype=np.int32) % 10
    p = tmp_path / "labels.npy"
    np.save(p, y)
    out = load_label_file(p, num_samples=20, num_classes=10)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, y)


@pytest.fixture
def cifar10n_file(tmp_path):
    rng = np.random.default_rng(0)
    data = {k: rng.integers(0, 10, 50).astype(np.int64) for k in CIFAR10N_KEYS}
    p = tmp_path / "CIFAR-10_human.pt"
    torch.save(data, p)
    return p, data


def test_load_cifar10n_pt(cifar10n_file):
    p, data = cifar10n_file
    for key in ("aggre_label", "worse_label"):
        out = load_label_file(p, key=key, num_samples=50, num_classes=10)
        np.testing.assert_array_equal(out, data[key])
        assert out.dtype == np.int64


def test_load_tensor_pt(tmp_path):
    p = tmp_path / "labels.pth"
    torch.save(torch.tensor([1, 2, 3]), p)
    np.testing.assert_array_equal(load_label_file(p), [1, 2, 3])


def test_load_errors(tmp_path, cifar10n_file):
    p, _ = cifar10n_file
    with pytest.raises(FileNotFoundError, match=r"^path=.*missing\.npy"):
        load_label_file(tmp_path / "missing.npy")
    txt = tmp_path / "labels.txt"
    txt.write_text("1 2 3")
    with pytest.raises(ValueError, match=r"^path.*'\.txt'.*'\.npy', '\.pt', '\.pth'"):
        load_label_file(txt)
    with pytest.raises(ValueError, match=r"^path=.*set key to.*aggre_label"):
        load_label_file(p)
    with pytest.raises(ValueError, match=r"^key='noisy_label' not found.*clean_label"):
        load_label_file(p, key="noisy_label")
    with pytest.raises(ValueError, match=r"^path.*num_samples=50000"):
        load_label_file(p, key="aggre_label", num_samples=50000)
    with pytest.raises(ValueError, match=r"^path.*\[0, 5\)"):
        load_label_file(p, key="aggre_label", num_classes=5)

    npy = tmp_path / "float.npy"
    np.save(npy, np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"^path.*1-D integer"):
        load_label_file(npy)
    two_d = tmp_path / "two_d.npy"
    np.save(two_d, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^path.*1-D integer"):
        load_label_file(two_d)
    with pytest.raises(ValueError, match=r"^key='aggre_label' given.*single array"):
        load_label_file(two_d, key="aggre_label")


# ------------------------------------------------------------------ noise kinds as classes


class FlipFirstNoise(NoiseKind):
    """A noise kind as a user adds one: a constructor argument and apply, nothing else."""

    def __init__(self, rate: float):
        self.rate = rate

    def apply(self, clean, images, num_classes, seed):
        noisy = clean.copy()
        count = round(self.rate * clean.size)
        noisy[:count] = (clean[:count] + 1) % num_classes
        return noisy, noisy != clean


@pytest.mark.parametrize("noise, kind, class_map", [
    (NoNoise(), "none", None),
    (SymmetricNoise(0.3), "symmetric", None),
    (PairFlipNoise(0.3), "pairflip", None),
    (AsymmetricNoise(0.3), "asymmetric", None),
    (AsymmetricNoise(0.3, class_map={"cat": "dog", 0: "truck"}), "asymmetric", {"cat": "dog", 0: "truck"}),
    (InstanceNoise(0.3), "instance", None),
])
def test_each_class_gives_the_labels_of_corrupt_labels(idn_data, noise, kind, class_map):
    y, x = idn_data
    expected = corrupt_labels(y, kind, getattr(noise, "rate", 0.0), K, seed=9, class_map=class_map, features=x)
    bound = noise.bind(K, CIFAR10_CLASSES, CIFAR10_ASYMMETRIC_MAP)
    noisy, is_noisy = bound.apply(y, x, K, seed=9)
    np.testing.assert_array_equal(noisy, expected[0])
    np.testing.assert_array_equal(is_noisy, expected[1])
    assert type(noise).name == kind and KINDS[kind] is type(noise)


def test_registry_names_every_kind():
    assert set(NOISE_KINDS) <= set(KINDS) and KINDS["file"] is LabelFileNoise
    assert KINDS["flipfirst"] is FlipFirstNoise  # no name given: the class name without "Noise"
    assert "rate" not in KINDS  # the shared base of the rate kinds is not a kind


def test_a_kind_defined_elsewhere_works_through_corrupt_labels(labels):
    noisy, is_noisy = corrupt_labels(labels, "flipfirst", 0.1, K, seed=0)
    assert is_noisy[:100].all() and not is_noisy[100:].any()
    np.testing.assert_array_equal(noisy[:100], (labels[:100] + 1) % K)


def test_a_kind_defined_elsewhere_works_through_a_target_override():
    cfg = compose("data=digits", "noise._target_=tests.test_noise.FlipFirstNoise", "noise.rate=0.25")
    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule.noise, FlipFirstNoise)
    datamodule.setup("fit")
    count = round(0.25 * datamodule.num_train_total)
    assert datamodule.is_noisy[:count].all() and not datamodule.is_noisy[count:].any()
    assert datamodule.realized_noise_rate == pytest.approx(count / datamodule.num_train_total)


@pytest.mark.parametrize("option, cls", [
    ("none", NoNoise), ("symmetric", SymmetricNoise), ("asymmetric", AsymmetricNoise), ("pairflip", PairFlipNoise),
    ("instance", InstanceNoise), ("cifar10n", Cifar10NNoise),
])
def test_every_noise_option_builds_its_class(option, cls):
    noise = hydra.utils.instantiate(compose(f"noise={option}").noise)
    assert type(noise) is cls


@pytest.mark.parametrize("build, match", [
    (lambda: SymmetricNoise(1.0), r"^rate=1\.0 is out of range: allowed is 0 <= rate < 1"),
    (lambda: SymmetricNoise(None), r"^rate=None is not a number"),
    (lambda: PairFlipNoise(0.5), r"^rate=0\.5 is out of range.*< 0\.5"),
    (lambda: AsymmetricNoise(0.6), r"^rate=0\.6 is out of range.*< 0\.5"),
    (lambda: AsymmetricNoise(0.2, class_map=[3, 5]), r"^class_map=\[3, 5\]: allowed is a mapping"),
    (lambda: InstanceNoise(-0.1), r"^rate=-0\.1"),
    (lambda: LabelFileNoise(None), r"^path=None: allowed is a \.npy, \.pt or \.pth file"),
    (lambda: LabelFileNoise("labels.txt"), r"^path='labels\.txt' has unsupported suffix '\.txt'"),
    (lambda: LabelFileNoise("labels.pt", key=3), r"^key=3: allowed is a string"),
    (lambda: LabelFileNoise("labels.pt", clean_key=["a"]), r"^clean_key=\['a'\]"),
])
def test_constructors_check_what_needs_no_dataset(build, match):
    with pytest.raises(NoiseSettingError, match=match) as error:
        build()
    assert error.value.node == "noise" and isinstance(error.value, ValueError)


def test_bind_checks_what_needs_the_classes():
    noise = SymmetricNoise(0.7)  # fine for 10 classes, not for 3
    assert noise.bind(10) is noise
    with pytest.raises(NoiseSettingError, match=r"^rate=0\.7 is out of range.*\(K-1\)/K = 0\.6667.*K=3"):
        noise.bind(3)
    with pytest.raises(ValueError, match="num_classes"):
        NoNoise().bind(1)


def test_bind_resolves_the_class_map_per_dataset_without_changing_the_setting():
    noise = AsymmetricNoise(0.4, class_map={"cat": "dog"})
    three = noise.bind(3, class_names=("cat", "dog", "frog"))
    cifar = noise.bind(10, class_names=CIFAR10_CLASSES)
    y = np.repeat(np.arange(3), 10)
    flipped = np.flatnonzero(three.apply(y, None, 3, seed=0)[1])
    assert len(flipped) == 4 and set(flipped) <= set(range(10))  # 40% of class 0, which is cat here
    assert not cifar.apply(y, None, 10, seed=0)[1].any()  # and class 3 in CIFAR-10: none in y
    assert noise.class_map == {"cat": "dog"}
    with pytest.raises(NoiseSettingError, match=r"^class_map source 'cat' is not a known class"):
        noise.bind(10, class_names=tuple(str(d) for d in range(10)))
    with pytest.raises(NoiseSettingError, match=r"^class_map=None.*num_classes=3"):
        AsymmetricNoise(0.2).bind(3)
    assert AsymmetricNoise(0.2).bind(10, default_class_map=MNIST_ASYMMETRIC_MAP)._class_ids == MNIST_ASYMMETRIC_MAP
    with pytest.raises(RuntimeError, match="bind"):
        AsymmetricNoise(0.2).apply(y, None, 3, seed=0)


def test_a_missing_label_file_is_a_noise_setting_and_a_missing_file(tmp_path):
    noise = LabelFileNoise(str(tmp_path / "missing.npy"))
    with pytest.raises(LabelFileNotFoundError, match=r"^path=.*missing\.npy") as error:
        noise.apply(np.zeros(3, dtype=np.int64), None, 10, seed=0)
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, NoiseSettingError)
