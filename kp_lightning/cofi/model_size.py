"""Encoder parameter count as a function of what the gates keep (CoFi's ŝ, with every bias counted).

For a layer with hidden width ``K`` (kept hidden dims), ``H`` heads of size ``d_h`` and ``F`` FFN neurons::

    attention = a·H·((4+p)·d_h·K + (3+p)·d_h) + 3·K   # Q, K, V, O (+ p position projections) weights and
                                                     # biases; O bias + LayerNorm
    ffn       = m·F·(2·K + 1) + 3·K           # up and down weights; up bias; down bias + LayerNorm

with ``a``/``m`` the sublayer gates, which is exactly the parameter count of the compacted layer (a removed
sublayer keeps its output bias and LayerNorm, ``3·K``). Feeding
probabilities ``P(z>0)`` instead of counts gives the expected size, because distinct gates are independent.
Embeddings, pooler and task head are not counted (the paper's convention), so at all-ones the sparsity is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from kp_lightning.core.adapter import EncoderShape
from kp_lightning.core.structure import EncoderStructure


def encoder_size(
    heads: Sequence,
    neurons: Sequence,
    attention: Sequence,
    ffn: Sequence,
    hidden,
    head_size: int,
    position_projections: int = 0,
):
    """Parameters of the encoder layers given per-layer kept amounts (counts or probabilities).

    Args:
        heads: Per layer, the (expected) number of kept heads.
        neurons: Per layer, the (expected) number of kept FFN neurons.
        attention: Per layer, 1/0 (or the probability) that the attention sublayer is kept.
        ffn: Per layer, 1/0 (or the probability) that the FFN sublayer is kept.
        hidden: The (expected) number of kept hidden dimensions.
        head_size: Size of one head.
        position_projections: Per-head relative-position projections per layer beyond Q/K/V (DeBERTa).

    Returns:
        The size, a float or a tensor (differentiable when the inputs are).
    """
    total = 0.0
    p = position_projections
    for h, f, a, m in zip(heads, neurons, attention, ffn, strict=True):
        total = total + a * h * ((4 + p) * head_size * hidden + (3 + p) * head_size) + 3 * hidden
        total = total + m * f * (2 * hidden + 1) + 3 * hidden
    return total


def full_size(shape: EncoderShape) -> int:
    """Encoder-layer parameters of an unpruned model of ``shape``."""
    ones = [1] * shape.num_layers
    return int(
        encoder_size(
            shape.heads, shape.neurons, ones, ones, shape.hidden_size, shape.head_size, shape.position_projections
        )
    )


def structure_size(structure: EncoderStructure) -> int:
    """Encoder-layer parameters of the model ``structure`` keeps."""
    shape = structure.shape
    heads = [len(h) for h in structure.heads]
    neurons = [len(n) for n in structure.neurons]
    attention = [1 if h else 0 for h in heads]
    ffn = [1 if n else 0 for n in neurons]
    return int(
        encoder_size(heads, neurons, attention, ffn, len(structure.hidden), shape.head_size, shape.position_projections)
    )


def structure_sparsity(structure: EncoderStructure) -> float:
    """Fraction of encoder-layer parameters removed by ``structure``."""
    return 1.0 - structure_size(structure) / full_size(structure.shape)
