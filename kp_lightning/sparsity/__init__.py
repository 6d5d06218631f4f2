"""Weight sparsity for Prune Once for All (plain torch): schedule, magnitude masks, hard-zero masked weights."""

from .lr_rewinding import RewindingLinearSchedule
from .masked_weights import ALLOCATIONS, MaskedWeights
from .patterns import SparsityPattern, SparsityPatternError, global_magnitude_masks, magnitude_mask
from .schedule import CubicSparsitySchedule
from .weight_selection import NoWeightsSelectedError, encoder_linear_names, select_linear_names

__all__ = [
    "ALLOCATIONS",
    "CubicSparsitySchedule",
    "MaskedWeights",
    "NoWeightsSelectedError",
    "RewindingLinearSchedule",
    "SparsityPattern",
    "SparsityPatternError",
    "encoder_linear_names",
    "global_magnitude_masks",
    "magnitude_mask",
    "select_linear_names",
]
