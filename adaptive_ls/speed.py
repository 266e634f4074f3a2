"""Hardware-dependent defaults, as OmegaConf resolvers so that configs can say ``auto`` and still show a real value.

``${auto_precision:${.accelerator}}`` (conf/trainer/default.yaml) is ``bf16-mixed`` when the run will use a CUDA GPU
that supports bfloat16 (Ampere and later), else ``32-true``: the same config is fast on a GPU and exact on a CPU.
``${negate:${.deterministic}}`` turns cuDNN autotuning on unless deterministic kernels were asked for.
"""
from __future__ import annotations

import torch
from omegaconf import OmegaConf

GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def auto_precision(accelerator: str = "auto") -> str:
    """Lightning precision for ``trainer.accelerator``: bf16 autocast on a bf16-capable CUDA GPU, else float32."""
    on_gpu = str(accelerator).lower() in GPU_ACCELERATORS and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def register_resolvers() -> None:
    """Register the package's resolvers (idempotent; done on ``import adaptive_ls``)."""
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", auto_precision)
    if not OmegaConf.has_resolver("negate"):  # benchmark: ${negate:${.deterministic}}
        OmegaConf.register_new_resolver("negate", lambda value: not bool(value))
