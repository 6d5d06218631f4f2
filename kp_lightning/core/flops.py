"""Analytic FLOPs (K-prune's cost model) and a cross-check with ``FlopCounterMode``.

Per sequence of length ``n``, hidden width ``d`` and head size ``d_h`` (kprune.md §1), counting 2 FLOPs per
multiply-accumulate of the matrix products; embeddings, LayerNorm, biases and softmax are ignored::

    F_head   = 3·2·d·d_h·n + 2·2·n²·d_h + 2·d_h·n·d  (+ 2·d_h·(P·d + R·n))
    F_neuron = 2·(g+1)·n·d

``g`` is the number of rows a neuron owns in the up projection (2 in a gated FFN: ModernBERT).
The bracketed term is relative-position attention (DeBERTa): each head projects ``P`` table rows (summed over
the projections that read the table, ``EncoderShape.position_projected_rows``) and scores ``R`` rows against
every query or key (summed over the c2p / p2c terms, ``EncoderShape.position_rows``). The projection is
computed once per forward for the whole batch, so per sequence it costs ``1/B`` of it at batch ``B``: the
``batch_size`` arguments below (K-prune's and Kwon's ``flops_batch_size``); the other terms do not depend on it.
A sliding-window layer (ModernBERT's local attention) is counted like a global one: eager and sdpa compute every
score and mask those outside the window, which is also what ``FlopCounterMode`` sees.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .adapter import EncoderAdapter, EncoderShape
from .attention_implementation import eager_attention


def head_flops(
    hidden_size: int,
    head_size: int,
    seq_len: int,
    position_rows: int = 0,
    projected_rows: int = 0,
    batch_size: int = 1,
) -> float:
    """FLOPs of one attention head for one sequence of a batch of ``batch_size`` (relative-position rows it scores
    and projects: see above)."""
    d, dh, n = hidden_size, head_size, seq_len
    projection = 2 * dh * projected_rows * d / batch_size if projected_rows else 0
    return 6 * d * dh * n + 4 * n * n * dh + 2 * dh * n * d + 2 * dh * position_rows * n + projection


def shape_head_flops(shape: EncoderShape, seq_len: int, batch_size: int = 1) -> float:
    """:func:`head_flops` of one head of an encoder of ``shape`` (its relative-position rows included)."""
    rows, projected = shape.position_rows, shape.position_projected_rows
    return head_flops(shape.hidden_size, shape.head_size, seq_len, rows, projected, batch_size)


def neuron_flops(hidden_size: int, seq_len: int, up_rows: int = 1) -> int:
    """FLOPs of one FFN neuron for one sequence (``up_rows``: its rows in the up projection, 2 when gated)."""
    return 2 * (up_rows + 1) * seq_len * hidden_size


def shape_neuron_flops(shape: EncoderShape, seq_len: int) -> int:
    """:func:`neuron_flops` of one FFN neuron of an encoder of ``shape``."""
    return neuron_flops(shape.hidden_size, seq_len, shape.neuron_row_blocks)


def encoder_flops(shape: EncoderShape, seq_len: int, batch_size: int = 1) -> float:
    """FLOPs of all encoder layers for one sequence of a batch of ``batch_size``."""
    fh = shape_head_flops(shape, seq_len, batch_size)
    fn = shape_neuron_flops(shape, seq_len)
    return sum(h * fh + n * fn for h, n in zip(shape.heads, shape.neurons, strict=True))


def head_linear_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs of the Linear layers outside the encoder layers for one sequence: the embedding projection (at
    every token), the pooler and the task head."""
    adapter = EncoderAdapter(model)
    encoder = adapter.encoder_modules()
    inside = {id(m) for m in encoder.modules()}
    token_level = {id(model.get_submodule(p)) for p in adapter.head.token_level}
    if adapter.embedding_projection is not None:
        token_level.add(id(adapter.embedding_projection))
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module) not in inside:
            rows = seq_len if id(module) in token_level else 1
            total += 2 * rows * module.in_features * module.out_features
    return total


def model_flops(model: nn.Module, seq_len: int, batch_size: int = 1) -> dict[str, float]:
    """Analytic FLOPs for one sequence of a batch of ``batch_size``: encoder, head (pooler + task head) and total."""
    enc = encoder_flops(EncoderAdapter(model).shape(), seq_len, batch_size)
    head = head_linear_flops(model, seq_len)
    return {"encoder": enc, "head": head, "total": enc + head}


@torch.no_grad()
def measured_flops(model: nn.Module, seq_len: int, batch_size: int = 1) -> dict[str, int]:
    """FLOPs per sequence counted by ``FlopCounterMode`` on a random input: encoder layers and total.

    Attention runs in eager mode while counting (fused CPU attention kernels have no FLOP formula). A
    multiple-choice model gets one choice per example, so its counts are per encoder sequence too.
    """
    adapter = EncoderAdapter(model)
    device = next(model.parameters()).device
    vocab = adapter.word_embeddings.num_embeddings
    ids = torch.randint(0, vocab, adapter.input_shape(batch_size, seq_len), device=device)  # batch_size sequences
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    encoder_flops_total = 0
    handles = []
    layer_counts: list[int] = []

    def before(module, args):
        layer_counts.append(counter.get_total_flops())

    def after(module, args, output):
        nonlocal encoder_flops_total
        encoder_flops_total += counter.get_total_flops() - layer_counts.pop()

    for layer in adapter.encoder_modules():
        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_hook(after))
    try:
        with eager_attention(model), counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"encoder": encoder_flops_total // batch_size, "total": counter.get_total_flops() // batch_size}
