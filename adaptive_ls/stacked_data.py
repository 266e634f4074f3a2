"""The data side of a stack of jobs (adaptive_ls.stacking): the members' data modules side by side, one batch of
each per step, each drawn, augmented and normalised by its own data module exactly as in its single run."""
from __future__ import annotations

from typing import Sequence

import pytorch_lightning as pl
from torch import Tensor


def _zip_loaders(loaders: list, split: str):
    """The members' loaders of one split stepped together: every member sees its own loader's sequence of batches,
    so all must have the same number of batches."""
    lengths = [len(loader) for loader in loaders]
    if len(set(lengths)) != 1:
        raise ValueError(f"the members' {split} loaders have {lengths} batches: a stack steps its members together, "
                         f"so allowed are members with the same number of {split} batches (the same data size, "
                         f"val_size and batch sizes)")
    return ZippedLoaders(loaders)


class ZippedLoaders:
    """The members' loaders stepped together, one batch of each per step (a plain iterable, so that Lightning's own
    combining of a trainer's loaders, e.g. calibration's two splits, sees one batch list per step)."""

    def __init__(self, loaders: list):
        self.loaders = loaders

    def __iter__(self):
        return (list(batches) for batches in zip(*self.loaders))

    def __len__(self) -> int:
        return len(self.loaders[0])


class StackedDataModule(pl.LightningDataModule):
    """The members' data modules side by side, for :class:`StackedClassifier`.

    Every split's batch is a list with one batch per member. Each member's data module draws its own order, crops
    and flips from its own seeds (it is attached to the stack's trainer, whose epoch it reads) and normalises its own
    batch in its own ``on_after_batch_transfer``, so member ``i`` sees exactly the batches of its single run.
    """

    def __init__(self, members: Sequence[pl.LightningDataModule]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members=[]: allowed is a list of one or more data modules, one per member")
        for i, datamodule in enumerate(members):
            if not isinstance(datamodule, pl.LightningDataModule):
                raise TypeError(f"members[{i}]={type(datamodule).__name__}: allowed are LightningDataModule "
                                f"instances")
        if len({id(dm) for dm in members}) != len(members):
            raise ValueError("members: the same data module appears twice; allowed are distinct data modules "
                             "(one per member: each keeps its own augmentation generator)")
        self.members = members

    def prepare_data(self) -> None:
        for datamodule in self.members:
            datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        for datamodule in self.members:
            datamodule.trainer = self.trainer  # its loaders and augmentation read this trainer's epoch and device
            datamodule.setup(stage)

    def _split(self, split: str):
        loaders = [getattr(datamodule, f"{split}_dataloader")() for datamodule in self.members]
        empty = [isinstance(loader, (list, tuple)) and not loader for loader in loaders]
        if all(empty):
            return []
        if any(empty):
            raise ValueError(f"only some members have a {split} split ({empty.count(False)} of {len(empty)}): "
                             f"allowed are members that all have one or none (val_size)")
        return _zip_loaders(loaders, split)

    def train_dataloader(self):
        return self._split("train")

    def val_dataloader(self):
        return self._split("val")

    def test_dataloader(self):
        return self._split("test")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return [dm.on_before_batch_transfer(b, dataloader_idx) for dm, b in zip(self.members, batch)]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return [dm.on_after_batch_transfer(b, dataloader_idx) for dm, b in zip(self.members, batch)]


def member_images(batches: Sequence) -> list[Tensor]:
    """The members' images ``[B, ...]`` of one step, each as its data module made it (its strides pick the
    convolution's kernel, so a looped member computes bitwise what its single run does); one shape for all."""
    shapes = {tuple(batch[0].shape) for batch in batches}
    if len(shapes) != 1:
        raise ValueError(f"the members' batches have image shapes {sorted(shapes)}: a stack runs them as one "
                         f"tensor, so allowed are members with the same batch sizes and image sizes")
    return [batch[0] for batch in batches]
