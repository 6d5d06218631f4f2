"""Weight sparsity for Prune Once for All (plain torch): the cubic schedule and magnitude masks per pattern."""

from .patterns import SparsityPattern, SparsityPatternError, global_magnitude_masks, magnitude_mask
from .schedule import CubicSparsitySchedule

__all__ = [
    "CubicSparsitySchedule",
    "SparsityPattern",
    "SparsityPatternError",
    "global_magnitude_masks",
    "magnitude_mask",
]
