"""What a retraining-free pruning run returns, and the error it raises on bad input."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from kp_lightning.errors import KPError

from ..core.masks import StructuralMasks
from ..core.structure import EncoderStructure


class PruneError(KPError, ValueError):
    """Bad input to a pruning run (raised before anything is modified or written)."""


@dataclass
class PruneResult:
    """A pruned, physically compact model and how it was obtained.

    Attributes:
        model: The compact model (``KP<Class>``), in eval mode.
        structure: Units kept, as indices into the input model's current layers.
        flops_dense: Encoder FLOPs per sequence of the input model (analytic, at ``seq_len``).
        flops_pruned: Encoder FLOPs per sequence of the result.
        seq_len: Sequence length of the FLOPs model (mean non-padding length of the sample set).
        flops_batch_size: Batch size of the FLOPs model.
        seconds: Wall time per phase.
        notes: Things the user should know (ridge fallbacks, stopped mask tuning, ...).
        stats: Method-specific numbers (sample size, peak memory, ...).
        masks: For methods that end with masks on the input model (Kwon et al.: real-valued tuned scales),
            those masks; ``compact(input, masks)`` is ``model``.
    """

    model: nn.Module
    structure: EncoderStructure
    flops_dense: float
    flops_pruned: float
    seq_len: float
    flops_batch_size: int = 1
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    masks: StructuralMasks | None = None

    @property
    def flops_reduction(self) -> float:
        """Fraction of encoder FLOPs removed."""
        return 1.0 - self.flops_pruned / self.flops_dense


def structure_within(outer: EncoderStructure, inner: EncoderStructure) -> EncoderStructure:
    """``inner`` (relative to the same dense model as ``outer``, and inside it) relative to ``outer``'s
    compacted shape: what to compact a model with structure ``outer`` to, to obtain ``inner``."""

    def positions(kept_outer: list[int], kept_inner: list[int]) -> list[int]:
        where = {unit: i for i, unit in enumerate(kept_outer)}
        return [where[u] for u in kept_inner]

    return EncoderStructure(
        shape=outer.compacted_shape(),
        heads=[positions(o, i) for o, i in zip(outer.heads, inner.heads, strict=True)],
        neurons=[positions(o, i) for o, i in zip(outer.neurons, inner.neurons, strict=True)],
        hidden=positions(outer.hidden, inner.hidden),
    )
