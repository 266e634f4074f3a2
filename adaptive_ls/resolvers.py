"""The package's OmegaConf resolvers: hardware- and data-dependent defaults, and what a job calls its policy.

``${auto_precision:${.accelerator}}`` (conf/trainer/default.yaml) is ``bf16-mixed`` when the run will use a CUDA GPU
that supports bfloat16 (Ampere and later), else ``32-true``: the same config is fast on a GPU and exact on a CPU.
``${negate:${.deterministic}}`` turns cuDNN autotuning on unless deterministic kernels were asked for.
``${class_folders:${.root}/${.train_dir}}`` and ``${image_channels:${.grayscale}}`` (conf/data/image_folder.yaml)
give an ImageFolder tree's ``num_classes`` and ``in_channels``, which the model is built from.
``${choice:smoothing}`` is what a job calls its policy (:func:`adaptive_ls.config.choice_name`).
``${epoch_fraction:0.3,${trainer.max_epochs}}`` is the epoch at 30% of training: a warm-up given by its authors as
"60 of 200 epochs" keeps its share of a shorter schedule.
``${pending_record:${hydra.runtime.output_dir}}`` (conf/hydra/default.yaml) is where Hydra saves a job's ``.hydra``
until its folder is accepted (:mod:`adaptive_ls.ownership`).
"""
from __future__ import annotations

import os
from typing import Optional

from omegaconf import OmegaConf

GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision for ``trainer.accelerator``: bf16 autocast on a bf16-capable CUDA GPU, else float32."""
    import torch  # here, not at the top: the command line takes the run folder's lock before torch loads

    on_gpu = str(accelerator).lower() in GPU_ACCELERATORS and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def class_folders(folder: str) -> Optional[int]:
    """Number of class sub-folders of an ImageFolder split, as torchvision counts them; None when there is no such
    folder (the data module then says what is missing)."""
    if not os.path.isdir(folder):
        return None
    return sum(1 for entry in os.scandir(folder) if entry.is_dir())


def image_channels(grayscale: bool) -> int:
    """Channels of the decoded images: 1 for grayscale, else 3 (RGB)."""
    return 1 if grayscale else 3


def epoch_fraction(fraction: float, max_epochs: int) -> int:
    """round(fraction · max_epochs): an epoch count that scales with the schedule's length."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"epoch_fraction: fraction={fraction}: allowed is 0 <= fraction <= 1")
    return int(round(float(fraction) * int(max_epochs)))


def job_choice(group: str, *, _root_) -> str:
    """What the job calls its ``group``: :func:`adaptive_ls.config.choice_name` of the whole config."""
    from adaptive_ls.config import choice_name  # on use: the config layer loads Lightning

    return choice_name(_root_, group)


def register_resolvers() -> None:
    """Register the package's resolvers (idempotent; done on ``import adaptive_ls``)."""
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("negate"):  # benchmark: ${negate:${.deterministic}}
        OmegaConf.register_new_resolver("negate", lambda value: not bool(value))
    if not OmegaConf.has_resolver("class_folders"):  # image_folder: num_classes
        OmegaConf.register_new_resolver("class_folders", class_folders)
    if not OmegaConf.has_resolver("image_channels"):  # image_folder: in_channels
        OmegaConf.register_new_resolver("image_channels", image_channels)
    if not OmegaConf.has_resolver("epoch_fraction"):  # smoothing/{alasca,self_adaptive}.yaml: warm-up epochs
        OmegaConf.register_new_resolver("epoch_fraction", epoch_fraction)
    if not OmegaConf.has_resolver("pending_record"):  # hydra/default.yaml: .hydra staged until the folder is the job's
        from adaptive_ls.ownership import pending_record

        OmegaConf.register_new_resolver("pending_record", pending_record)
    if not OmegaConf.has_resolver("choice"):  # logger/wandb.yaml: the W&B run's name and tags
        OmegaConf.register_new_resolver("choice", job_choice)
