"""Encoder parameter count as a function of what the gates keep (CoFi's ŝ, with every bias counted).

For a layer with hidden width ``K`` (kept hidden dims), ``H`` heads of size ``d_h`` and ``F`` FFN neurons::

    attention = a·H·((4+p)·d_h·K + β_a·(3+p)·d_h) + β_a·K + ν·K   # Q, K, V, O (+ p position projections)
                                                                 # weights and biases; O bias; LayerNorm
    ffn       = m·F·((g+1)·K + β_f·g) + β_f·K + ν·K              # up (g rows per neuron) and down weights;
                                                                 # up biases; down bias; LayerNorm

with ``a``/``m`` the sublayer gates, ``β`` 1 where the projections have biases, ``g`` 2 in a gated FFN and ``ν``
the LayerNorm's parameters per dim (2, 1 without bias, 0 for an identity pre-norm). That is exactly the
parameter count of the compacted layer (a removed sublayer keeps its output bias and LayerNorm). Feeding
probabilities ``P(z>0)`` instead of counts gives the expected size, because distinct gates are independent.
Embeddings, pooler, final norm and task head are not counted (the paper's convention), so at all-ones the
sparsity is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from kp_lightning.core.adapter import EncoderShape
from kp_lightning.core.structure import EncoderStructure


def encoder_size(heads: Sequence, neurons: Sequence, attention: Sequence, ffn: Sequence, hidden, shape: EncoderShape):
    """Parameters of the encoder layers given per-layer kept amounts (counts or probabilities).

    Args:
        heads: Per layer, the (expected) number of kept heads.
        neurons: Per layer, the (expected) number of kept FFN neurons.
        attention: Per layer, 1/0 (or the probability) that the attention sublayer is kept.
        ffn: Per layer, 1/0 (or the probability) that the FFN sublayer is kept.
        hidden: The (expected) number of kept hidden dimensions.
        shape: The unpruned encoder (head size, per-head projections, biases, gating, LayerNorms).

    Returns:
        The size, a float or a tensor (differentiable when the inputs are).
    """
    total = 0.0
    p, dh, g = shape.position_projections, shape.head_size, shape.neuron_row_blocks
    b_a, b_f = int(shape.attention_bias), int(shape.ffn_bias)
    norm = 2 if shape.norm_bias else 1
    for layer, (h, f, a, m) in enumerate(zip(heads, neurons, attention, ffn, strict=True)):
        attention_norm = 0 if layer in shape.unnormed_attention_layers else norm
        total = total + a * h * ((4 + p) * dh * hidden + b_a * (3 + p) * dh) + (b_a + attention_norm) * hidden
        total = total + m * f * ((g + 1) * hidden + b_f * g) + (b_f + norm) * hidden
    return total


def full_size(shape: EncoderShape) -> int:
    """Encoder-layer parameters of an unpruned model of ``shape``."""
    ones = [1] * shape.num_layers
    return int(encoder_size(shape.heads, shape.neurons, ones, ones, shape.hidden_size, shape))


def structure_size(structure: EncoderStructure) -> int:
    """Encoder-layer parameters of the model ``structure`` keeps."""
    shape = structure.shape
    heads = [len(h) for h in structure.heads]
    neurons = [len(n) for n in structure.neurons]
    attention = [1 if h else 0 for h in heads]
    ffn = [1 if n else 0 for n in neurons]
    return int(encoder_size(heads, neurons, attention, ffn, len(structure.hidden), shape))


def structure_sparsity(structure: EncoderStructure) -> float:
    """Fraction of encoder-layer parameters removed by ``structure``."""
    return 1.0 - structure_size(structure) / full_size(structure.shape)
