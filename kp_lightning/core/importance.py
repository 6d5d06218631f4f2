"""Cheap weight-magnitude unit selection (for benchmarks and tests, not a pruning method)."""

from __future__ import annotations

import torch
from torch import nn

from kp_lightning.errors import ConfigError

from .adapter import EncoderAdapter
from .structure import EncoderStructure


@torch.no_grad()
def magnitude_structure(model: nn.Module, heads_kept: float, neurons_kept: float) -> EncoderStructure:
    """Keep, in every layer, the fraction of heads/neurons whose output-projection columns have the largest norm.

    Args:
        model: A supported encoder.
        heads_kept: Fraction of heads kept per layer, in (0, 1].
        neurons_kept: Fraction of FFN neurons kept per layer, in (0, 1].
    """
    for name, value in (("heads_kept", heads_kept), ("neurons_kept", neurons_kept)):
        if not 0 < value <= 1:
            raise ConfigError(f"{name} must be in (0, 1], got {value}")
    adapter = EncoderAdapter(model)
    heads, neurons = [], []
    for view in adapter.layers:
        n_heads, n_neurons = view.num_heads, view.num_neurons
        if n_heads:
            cols = view.attention_out.weight.norm(dim=0).view(n_heads, view.head_size).sum(dim=1)
            heads.append(cols.topk(max(1, round(heads_kept * n_heads))).indices.tolist())
        else:
            heads.append([])
        if n_neurons:
            cols = view.ffn_down.weight.norm(dim=0)
            neurons.append(cols.topk(max(1, round(neurons_kept * n_neurons))).indices.tolist())
        else:
            neurons.append([])
    shape = adapter.shape()
    return EncoderStructure(shape, heads=heads, neurons=neurons, hidden=list(range(shape.hidden_size)))
