"""A shuffling sampler whose order depends only on a seed and the epoch, so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(length)`` seeded with ``seed + epoch``.

    Lightning calls :meth:`set_epoch` at the start of every epoch (as for ``DistributedSampler``), so the order
    does not depend on the global RNG: a run resumed from a checkpoint shuffles exactly like an uninterrupted
    one. Under DDP Lightning replaces it with a ``DistributedSampler`` (also seeded per epoch).
    """

    def __init__(self, length: int, seed: int = 0):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length
