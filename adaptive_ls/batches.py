"""Batches on the training device: augmentation as batched tensor ops, per-epoch permutations that a resumed run
repeats, and the loaders that slice uint8 tensors into (images, labels, index) batches (:mod:`adaptive_ls.data`)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

# ---------------------------------------------------------------------------------------------------------------------
# Batched augmentation (runs on whatever device the batch is on)
# ---------------------------------------------------------------------------------------------------------------------


def batch_random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` and take one random crop of the original size per image, for the whole batch at once."""
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # gather gives [B, H, W, C]: channels-last memory


def batch_random_hflip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Flip a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [B, C, H, W] → float32 standardised per channel (``mean``/``std`` on the 0–1 scale)."""
    return (images.float() / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffling order of one epoch, drawn on the CPU from (seed, epoch) alone: the same on CPU and GPU, for both
    loaders, and for a run resumed at that epoch."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def epoch_shard(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """This process's part of :func:`epoch_permutation`: equal contiguous shards, so every process takes the same
    number of steps (the last ``n % world_size`` samples of the order sit out that epoch)."""
    per_rank = n // world_size
    return epoch_permutation(n, seed, epoch)[rank * per_rank:(rank + 1) * per_rank]


class EpochSampler(DistributedSampler):
    """The DataLoader path's sampler: :func:`epoch_permutation`'s order (the same as the device loader's), sharded
    between processes like :class:`TensorBatches`. Lightning calls ``set_epoch`` every epoch (so a resumed run sees
    the same order); iterated without a trainer, it moves on to the next epoch by itself."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)

    def __len__(self) -> int:
        return len(self.dataset) // self.num_replicas

    def __iter__(self):
        order = epoch_shard(len(self.dataset), self.seed, self.epoch, self.rank, self.num_replicas)
        self.epoch += 1
        return iter(order.tolist())


class TensorBatches:
    """Yields (images, labels, index) batches for the samples ``index`` of tensors already on the training device.

    The shuffling permutation is :func:`epoch_permutation` (CPU, from ``seed`` and the epoch: CPU and GPU runs see
    the same order, and a resumed run continues the same sequence); with ``world_size > 1`` each rank takes its
    own shard.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        index: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        epoch_fn: Optional[Callable[[], int]] = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.labels, self.index = images, labels, index
        self.batch_size, self.shuffle, self.drop_last, self.seed = int(batch_size), shuffle, drop_last, int(seed)
        self.epoch_fn, self.rank, self.world_size = epoch_fn, rank, world_size
        self._epochs_iterated = 0

    def _order(self) -> Tensor:
        n = self.index.shape[0]
        if self.shuffle:
            epoch = self.epoch_fn() if self.epoch_fn is not None else self._epochs_iterated
            order = epoch_shard(n, self.seed, epoch, self.rank, self.world_size)
        else:  # evaluation order; under DDP every rank takes every world_size-th sample
            order = torch.arange(n)[self.rank::self.world_size]
        return order.to(self.index.device, non_blocking=True)

    def __len__(self) -> int:
        n = self.index.shape[0]
        if self.world_size > 1:
            n = n // self.world_size if self.shuffle else len(range(self.rank, n, self.world_size))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = self._order()
        self._epochs_iterated += 1
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = self.index[order[start:start + self.batch_size]]
            yield self.images[index], self.labels[index], index


class IndexedTensorDataset(Dataset):
    """Map-style dataset of (uint8 image, label, index), for the DataLoader path."""

    def __init__(self, images: Tensor, labels: Tensor, index: Tensor):
        self.images, self.labels, self.index = images, labels, index

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], self.index[i]
