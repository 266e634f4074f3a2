"""The package's OmegaConf resolvers: hardware- and data-dependent defaults, and what a job calls its policy.

``${auto_precision:${.accelerator}}`` (conf/trainer/default.yaml) is ``bf16-mixed`` when the run will use a CUDA GPU
that supports bfloat16 (Ampere and later), else ``32-true``: the same config is fast on a GPU and exact on a CPU.
``${auto_precision:${.accelerator},true}`` also picks ``bf16-mixed`` on a CPU whose bf16 is native (AVX512-BF16 or
AMX on x86, BF16 on Arm Linux); where the CPU only emulates bf16 it runs ~13x slower than float32, so ``32-true``.
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


# /proc/cpuinfo flags that mean bf16 matmuls and convolutions run in hardware: x86 (AVX512-BF16, AMX) and Arm (BF16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 ``flags``, Arm ``Features``); empty where there is no such
    file (macOS, Windows), which makes :func:`cpu_has_native_bf16` answer no: float32 is never the slow choice."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively. Without it oneDNN emulates bf16 and a bf16-mixed step is an order of
    magnitude slower than a float32 one (fastnet, batch 128, 2-core AVX2 EPYC: 48 against 617 images/s)."""
    return bool(cpu_flags(cpuinfo) & NATIVE_BF16_FLAGS)


def auto_precision(accelerator: str = "auto", cpu_bf16: bool = False) -> str:
    """Lightning precision for ``trainer.accelerator``: bf16 autocast on a bf16-capable CUDA GPU, and with
    ``cpu_bf16`` on a CPU with native bf16; float32 elsewhere."""
    import torch  # here, not at the top: the command line takes the run folder's lock before torch loads

    accelerator = str(accelerator).lower()
    if accelerator in GPU_ACCELERATORS and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    on_cpu = accelerator in ("auto", "cpu")
    return "bf16-mixed" if on_cpu and _as_bool(cpu_bf16) and cpu_has_native_bf16() else "32-true"


def _as_bool(value) -> bool:
    """A resolver argument as a boolean: OmegaConf passes ``true`` as True, a quoted or interpolated one as text."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1")
    return bool(value)


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
