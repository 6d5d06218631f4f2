"""Run a transformers model with eager attention for a while (FLOPs counting, ONNX export)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the context ``model`` uses eager attention; its own choice is put back afterwards.

    ``FlopCounterMode`` counts eager attention's matmuls, and an ONNX graph of eager attention is plain
    MatMul/Softmax (sdpa's export adds an IsNaN/Where guard over every attention matrix, ~20 % slower in ONNX
    Runtime)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield model
        return
    model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
