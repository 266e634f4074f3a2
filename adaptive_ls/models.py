"""Backbones. Each is a plain function ``(num_classes, in_channels, ...) -> nn.Module`` that Hydra instantiates."""
from __future__ import annotations

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
