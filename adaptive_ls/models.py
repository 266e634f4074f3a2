"""Backbones. Each is a plain function ``(num_classes, in_channels, ...) -> nn.Module`` that Hydra instantiates."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from adaptive_ls.errors import SettingError


class ModelSettingError(SettingError):
    """A bad backbone argument; reported under the ``model`` config group."""

    node = "model"


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
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelSettingError(f"width={width!r}: allowed is an integer >= 1 (channels of the first block)")
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


class PatchWhitening(nn.Conv2d):
    """A frozen ``k×k`` convolution that whitens image patches: airbench's first layer.

    Its ``2·C·k²`` filters are the eigenvectors of the training patches' covariance, scaled by 1/sqrt(eigenvalue),
    with their negatives (so the GELU after it keeps both signs). Every input direction then starts at unit variance,
    which lets a short schedule use a high learning rate from the first step. The weights come from data,
    :meth:`init_from_data`, which :class:`~adaptive_ls.module.LabelSmoothingClassifier` calls with training images
    before fitting; they are never trained. The bias is trained.
    """

    def __init__(self, in_channels: int, kernel_size: int = 2, eps: float = 5e-4):
        super().__init__(in_channels, 2 * in_channels * kernel_size**2, kernel_size, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)
        with torch.no_grad():
            self.bias.zero_()

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Set the filters from normalised training images ``[N, C, H, W]`` (airbench uses 5,000)."""
        c, (h, w) = self.in_channels, self.kernel_size
        covariance, count = torch.zeros(c * h * w, c * h * w, dtype=torch.float64, device=images.device), 0
        for chunk in images.split(500):  # all patches of 5,000 images at once would take ~0.5 GB
            patches = chunk.double().unfold(2, h, 1).unfold(3, w, 1)  # [n, C, H', W', h, w]
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * h * w)
            covariance += patches.T @ patches
            count += patches.shape[0]
        covariance /= count
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending; columns are eigenvectors
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)).T.flip(0).reshape(-1, c, h, w)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))


class FastBlock(nn.Sequential):
    """conv → 2×2 max-pool → BN → GELU → conv → BN → GELU: halves the resolution, as in airbench's ``ConvGroup``."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float, bn_scale: bool = True):
        super().__init__(
            DiracConv(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out, bn_momentum, bn_scale), nn.GELU(),
            DiracConv(c_out, c_out), batch_norm(c_out, bn_momentum, bn_scale), nn.GELU(),
        )


def batch_norm(channels: int, momentum: float, scale: bool = True) -> nn.BatchNorm2d:
    """BatchNorm whose scale (γ) is learnt only if ``scale``; airbench keeps γ = 1 and learns the shift alone."""
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    norm.weight.requires_grad_(scale)
    return norm


FASTNET_STEMS = ("conv", "whiten")


def fastnet(
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Sequence[int] = (64, 256, 256),
    stem: str = "conv",
    stem_width: int = 32,
    logit_scale: float = 1.0 / 9.0,
    bn_momentum: float = 0.4,
    bn_scale: bool = True,
) -> nn.Module:
    """A small network for fast CIFAR-10 runs, after Keller Jordan's airbench94 (itself after Page's ResNet-9).

    stem → three blocks (widths 64/256/256, each halving the resolution) → global max-pool → linear head scaled
    by ``logit_scale``. About 2 M parameters; works on any input of at least 8×8 (the three pools need 2³ pixels).

    ``stem="conv"``: a learnt 3×3 conv → BN → GELU of ``stem_width`` channels. ``stem="whiten"``: airbench's frozen
    2×2 :class:`PatchWhitening` layer (2·C·4 channels, set from training images before fitting) → GELU.
    ``bn_scale=False`` keeps every BatchNorm's γ at 1 (airbench), so only the shifts are learnt.

    Kept from airbench: the block layout, identity-initialised convolutions (implicit residuals), GELU, the global
    max-pool, the 1/9 logit scale (a small head keeps early logits soft, so a high learning rate is stable) and fast
    BatchNorm statistics (``bn_momentum`` 0.4: short runs need running statistics that follow the weights). Its
    ×64 learning rate for BatchNorm shifts is the module's ``norm_bias_lr_scale`` and its flip test-time augmentation
    the module's ``eval_tta``; its Lookahead, alternating flips and translate-TTA are not copied.
    """
    if len(widths) != 3 or any(int(w) <= 0 for w in widths):
        raise ModelSettingError(f"widths={list(widths)}: allowed is three positive channel counts, e.g. [64, 256, 256]")
    if stem not in FASTNET_STEMS:
        raise ModelSettingError(f"stem={stem!r}: allowed are {', '.join(FASTNET_STEMS)}")
    if int(stem_width) <= 0:
        raise ModelSettingError(f"stem_width={stem_width}: allowed is a positive channel count")
    if not 0.0 < bn_momentum <= 1.0:
        raise ModelSettingError(f"bn_momentum={bn_momentum}: allowed is 0 < bn_momentum <= 1 (PyTorch's convention)")
    w1, w2, w3 = (int(w) for w in widths)
    if stem == "whiten":
        whitening = PatchWhitening(in_channels)
        stem_layers, stem_out = [whitening, nn.GELU()], whitening.out_channels
    else:
        stem_layers = [nn.Conv2d(in_channels, stem_width, kernel_size=3, padding=1, bias=False),
                       batch_norm(stem_width, bn_momentum, bn_scale), nn.GELU()]
        stem_out = int(stem_width)
    return nn.Sequential(
        *stem_layers,
        FastBlock(stem_out, w1, bn_momentum, bn_scale),
        FastBlock(w1, w2, bn_momentum, bn_scale),
        FastBlock(w2, w3, bn_momentum, bn_scale),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(w3, num_classes, bias=False),
        Mul(logit_scale),
    )
