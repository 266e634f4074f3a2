"""adaptive_ls: label smoothing under label noise — fixed, annealed and confidence-adaptive ε, one LightningModule."""
from adaptive_ls.noise import corrupt_labels, transition_matrix
from adaptive_ls.smoothing import (
    AdaptiveSmoothing,
    AnnealedSmoothing,
    FixedSmoothing,
    NoSmoothing,
    Progress,
    SmoothingPolicy,
    SmoothingTarget,
    smoothed_cross_entropy,
)
from adaptive_ls.resolvers import register_resolvers

register_resolvers()  # ${auto_precision:...} in conf/trainer/, ${class_folders:...} in conf/data/, ${choice:...}

__version__ = "0.1.0"


def __getattr__(name):  # the Lightning-heavy pieces load on first use, so `import adaptive_ls` stays light
    if name == "LabelSmoothingClassifier":
        from adaptive_ls.module import LabelSmoothingClassifier

        return LabelSmoothingClassifier
    if name in ("CIFAR10DataModule", "DigitsDataModule", "NoisyLabelDataModule"):
        from adaptive_ls import data

        return getattr(data, name)
    raise AttributeError(f"module 'adaptive_ls' has no attribute {name!r}")


__all__ = [
    "AdaptiveSmoothing", "AnnealedSmoothing", "FixedSmoothing", "NoSmoothing", "Progress", "SmoothingPolicy",
    "SmoothingTarget", "smoothed_cross_entropy", "corrupt_labels", "transition_matrix", "LabelSmoothingClassifier",
    "CIFAR10DataModule", "DigitsDataModule", "NoisyLabelDataModule",
]
