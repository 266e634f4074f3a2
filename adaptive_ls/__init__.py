"""adaptive_ls: label smoothing under label noise — fixed, annealed and confidence-adaptive ε, one LightningModule.

The names below load on first use, so that ``import adaptive_ls`` (and the command line, which takes its run folder's
lock first) does not wait for torch and Lightning.
"""
from importlib import import_module

from adaptive_ls.resolvers import register_resolvers

register_resolvers()  # ${auto_precision:...} in conf/trainer/, ${class_folders:...} in conf/data/, ${choice:...}

__version__ = "0.1.0"

_WHERE = {  # public name -> the module that defines it
    **dict.fromkeys(("AdaptiveSmoothing", "AnnealedSmoothing", "FixedSmoothing", "NoSmoothing", "Progress",
                     "SmoothingPolicy", "SmoothingTarget", "smoothed_cross_entropy"), "smoothing"),
    **dict.fromkeys(("corrupt_labels", "transition_matrix"), "noise"),
    **dict.fromkeys(("CIFAR10DataModule", "DigitsDataModule", "NoisyLabelDataModule"), "data"),
    "LabelSmoothingClassifier": "module",
    **dict.fromkeys(("StackedClassifier", "StackedDataModule", "StackedNet"), "stacking"),
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'adaptive_ls' has no attribute {name!r}")
    return getattr(import_module(f"adaptive_ls.{_WHERE[name]}"), name)
