"""Backbones. Each is a plain function ``(num_classes, in_channels, ...) -> nn.Module`` that Hydra instantiates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 in its CIFAR variant: 3×3 stride-1 stem and no max-pool, for 32×32 inputs."""
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution, batch norm, ReLU: the unit every small net here is made of."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def small_cnn(num_classes: int = 10, in_channels: int = 3, width: int = 32) -> nn.Module:
    """A small, fast CNN for CPU runs (digits, quick checks): three conv blocks, one pooling step, a linear head."""
    return nn.Sequential(
        conv_bn(in_channels, width),
        conv_bn(width, 2 * width),
        nn.MaxPool2d(2),
        conv_bn(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes),
    )


class Mul(nn.Module):
    """Multiply by a constant: scales the logits of speed-run nets, whose heads are otherwise too confident early."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


# ---------------------------------------------------------------------------------------------------------------------
# fastnet: the CIFAR-10 speed-run network
# ---------------------------------------------------------------------------------------------------------------------


class DiracConv(nn.Conv2d):
    """3×3 convolution, no bias, whose first ``in_channels`` filters start as the identity.

    The identity start makes every block begin as an (implicit) residual connection, so the plain stack trains like
    a ResNet from the first step without skip connections that would cost memory traffic (airbench's ``Conv``).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            nn.init.dirac_(self.weight[: min(self.in_channels, self.out_channels)])


class FastBlock(nn.Sequential):
    """conv → 2×2 max-pool → BN → GELU → conv → BN → GELU: halves the resolution, as in airbench's ``ConvGroup``."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__(
            DiracConv(c_in, c_out), nn.MaxPool2d(2), nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.GELU(),
            DiracConv(c_out, c_out), nn.BatchNorm2d(c_out, momentum=bn_momentum), nn.GELU(),
        )


def fastnet(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Sequence[int] = (64, 256, 256),
    stem_width: int = 32,
    logit_scale: float = 1.0 / 9.0,
    bn_momentum: float = 0.4,
) -> nn.Module:
    """A small network for fast CIFAR-10 runs, after Keller Jordan's airbench94 (itself after Page's ResNet-9).

    conv stem → three blocks (widths 64/256/256, each halving the resolution) → global max-pool → linear head scaled
    by ``logit_scale``. About 2 M parameters; works on any input of at least 8×8 (the three pools need 2³ pixels).

    What is kept from airbench: the block layout, identity-initialised convolutions (implicit residuals), GELU, the
    global max-pool, the 1/9 logit scale (a small head keeps early logits soft, so a high learning rate is stable) and
    fast BatchNorm statistics (``bn_momentum`` 0.4: short runs need running statistics that follow the weights).
    What is not (they live outside a network): the frozen patch-whitening stem initialised from data, Lookahead/EMA
    of weights, a separate ×64 learning rate for BatchNorm biases, alternating flips and test-time augmentation.
    """
    if len(widths) != 3 or any(int(w) <= 0 for w in widths):
        raise ValueError(f"model.widths={list(widths)}: allowed is three positive channel counts, e.g. [64, 256, 256]")
    if int(stem_width) <= 0:
        raise ValueError(f"model.stem_width={stem_width}: allowed is a positive channel count")
    if not 0.0 < bn_momentum <= 1.0:
        raise ValueError(f"model.bn_momentum={bn_momentum}: allowed is 0 < bn_momentum <= 1 (PyTorch's convention)")
    w1, w2, w3 = (int(w) for w in widths)
    return nn.Sequential(
        nn.Conv2d(in_channels, stem_width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(stem_width, momentum=bn_momentum),
        nn.GELU(),
        FastBlock(stem_width, w1, bn_momentum),
        FastBlock(w1, w2, bn_momentum),
        FastBlock(w2, w3, bn_momentum),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, num_classes, bias=False),
        Mul(logit_scale),
    )
