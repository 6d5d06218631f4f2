"""Sharding a sample set over processes and summing statistics across them (``torch.distributed``)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (no-op in a single process) and return it."""
    if world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def owned_batches(num_batches: int) -> list[int]:
    """Indices of the batches this process measures: batch ``i`` goes to rank ``i % world_size``.

    Whole batches are sharded (not examples), so every batch has the same composition and padding as in a
    single-process run, and per-batch statistics (squared batch gradients) are identical.
    """
    rank, size = world()
    return list(range(rank, num_batches, size))
