"""Synthetic and real label noise: one small class per kind, diagnostics and label-file loading.

A noise kind is a :class:`NoiseKind`: its constructor checks the settings that need no dataset, ``bind`` the ones
that need the dataset's classes, and ``apply`` makes the noisy labels. Hydra builds them from ``conf/noise/*.yaml``
(``_target_: adaptive_ls.noise.SymmetricNoise``); every subclass registers under its ``name``, which is how
:func:`corrupt_labels` finds it. A bad setting raises :class:`NoiseSettingError`, naming the constructor parameter.

One module per kind (:mod:`.symmetric`, :mod:`.asymmetric`, :mod:`.pairflip`, :mod:`.instance`, :mod:`.label_file`),
next to :mod:`.kind` (the base class, the registry and the shared checks), :mod:`.class_maps`, :mod:`.stats`
(transition matrix, realised rate, label hash) and :mod:`.registry` (look-up by name). Everything public is
importable from here.

Everything here is numpy in, numpy out (any array-like, torch tensors included, is
accepted through ``np.asarray``) and every random draw comes from
``np.random.default_rng(seed)`` (PCG64), so a given seed yields bit-identical noisy
labels on every machine; ``label_hash`` fingerprints them for logs.

Noise convention of the synthetic kinds (EXACT counts)
------------------------------------------------------
* ``symmetric``: exactly ``round(rate * N)`` samples, drawn uniformly without
  replacement, are each moved to a uniformly random *other* class. The realised
  noise rate is therefore exactly ``rate`` (up to rounding).
* ``pairflip``: exactly ``round(rate * N)`` samples are moved from class ``c`` to
  ``(c + 1) mod K``.
* ``asymmetric``: for every source class ``c`` of the class map, exactly
  ``round(rate * n_c)`` of its samples are moved to ``map[c]``; the realised rate
  within each source class equals ``rate``, the overall rate is lower because the
  other classes are untouched. The default map for ``K == 10`` is the CIFAR-10 map of
  Patrini et al. (2017).
* ``instance``: the instance-dependent (IDN) generator of Xia et al., NeurIPS 2020
  ("Part-dependent label noise"); its realised rate is only approximately ``rate``
  because per-sample flip probabilities are drawn at random, and at small rates it is
  biased upwards by the truncation at 0 (mean of the truncated normal: ~0.13 at 0.1).

``round`` is Python's ``round`` (half to even). Two other conventions appear in papers
and give different numbers at the same nominal rate:

(a) each sample is flipped independently with probability ``rate``: the realised rate
    is Binomial(N, rate) / N, only approximately ``rate``;
(b) each selected sample is relabelled uniformly over all ``K`` classes, so it may
    redraw its true class: the effective noise rate is ``rate * (K - 1) / K``
    (e.g. "40% symmetric" on CIFAR-10 is 36% real noise).
"""
# The kinds register in definition order, which is the order error messages list them in: keep it.
from adaptive_ls.noise.kind import KINDS, NoiseKind, NoiseSettingError, NoNoise, RateNoise
from adaptive_ls.noise.symmetric import SymmetricNoise
from adaptive_ls.noise.asymmetric import AsymmetricNoise
from adaptive_ls.noise.pairflip import PairFlipNoise
from adaptive_ls.noise.instance import InstanceNoise
from adaptive_ls.noise.label_file import (CIFAR10N_KEYS, LABEL_FILE_SUFFIXES, Cifar10NNoise,
                                          LabelFileNoise, LabelFileNotFoundError, load_label_file,
                                          noisy_labels_from_file)
from adaptive_ls.noise.class_maps import (CIFAR10_ASYMMETRIC_MAP, CIFAR10_CLASSES, MNIST_ASYMMETRIC_MAP,
                                          parse_class_map)
from adaptive_ls.noise.registry import NOISE_KINDS, corrupt_labels, noise_kind
from adaptive_ls.noise.stats import label_hash, realized_noise_rate, transition_matrix

__all__ = [
    "NoiseSettingError",
    "LabelFileNotFoundError",
    "NoiseKind",
    "NoNoise",
    "RateNoise",
    "SymmetricNoise",
    "AsymmetricNoise",
    "PairFlipNoise",
    "InstanceNoise",
    "LabelFileNoise",
    "Cifar10NNoise",
    "KINDS",
    "noise_kind",
    "NOISE_KINDS",
    "CIFAR10_CLASSES",
    "CIFAR10_ASYMMETRIC_MAP",
    "MNIST_ASYMMETRIC_MAP",
    "CIFAR10N_KEYS",
    "LABEL_FILE_SUFFIXES",
    "parse_class_map",
    "corrupt_labels",
    "transition_matrix",
    "realized_noise_rate",
    "label_hash",
    "load_label_file",
    "noisy_labels_from_file",
]
