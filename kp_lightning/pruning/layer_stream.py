"""Run an encoder from a cached layer input upward, so layers that are already final are not re-run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..core.adapter import EncoderAdapter


class _Passthrough(nn.Module):
    """Stands in for a layer below the start layer: hands its input hidden states on unchanged (as
    ``(hidden, None)``, no attention weights, when the architecture's layers return tuples). Other attributes
    the encoder's loop reads (ModernBERT's ``attention_type``) are the replaced layer's."""

    def __init__(self, layer: nn.Module, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple
        self.__dict__["_replaced"] = layer  # not a submodule

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_replaced"], name)

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states, None) if self.as_tuple else hidden_states


def layer_hidden(output) -> torch.Tensor:
    """The hidden stream from an encoder layer's output (a tensor, or a tuple starting with it)."""
    return output[0] if isinstance(output, tuple) else output


class _Stop(Exception):
    """Raised by a hook to end a forward pass early, once the wanted layer output is captured."""


class LayerFeed:
    """The hidden states the next forward pass starts from (set before each call)."""

    hidden: torch.Tensor | None = None


@contextmanager
def start_at_layer(model: nn.Module, layer: int) -> Iterator[LayerFeed]:
    """Within the context, ``model(**inputs)`` runs only layers ``layer..L-1`` (plus the task head).

    The embedding output is replaced by ``feed.hidden`` (the cached input of ``layer``) and the layers below
    are skipped. The model must be in eval mode (dropout after the embeddings must be the identity).
    """
    adapter = EncoderAdapter(model)
    layers = adapter.encoder_modules()
    feed = LayerFeed()

    def replace(module, args, output):
        if feed.hidden is None:
            raise RuntimeError("start_at_layer: set feed.hidden before calling the model")
        return feed.hidden

    handle = adapter.stream_start.register_forward_hook(replace)
    saved = [layers[i] for i in range(layer)]
    for i in range(layer):
        layers[i] = _Passthrough(saved[i], adapter.layout.layer_output_tuple)
    try:
        yield feed
    finally:
        handle.remove()
        for i, module in enumerate(saved):
            layers[i] = module


def embedding_output(model: nn.Module, inputs: dict) -> torch.Tensor:
    """Input of the first encoder layer for ``inputs`` (the embeddings' output)."""
    adapter = EncoderAdapter(model)
    captured = {}

    def grab(module, args, output):
        captured["h"] = output
        raise _Stop

    handle = adapter.stream_start.register_forward_hook(grab)
    try:
        model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"].detach()


@torch.no_grad()
def layer_outputs(model: nn.Module, layer: int, hidden: torch.Tensor, inputs: dict, capture: dict | None = None):
    """Run only encoder layer ``layer`` on ``hidden`` and return its output.

    Args:
        capture: Optional ``{name: module or None}``: the first positional input of each module is recorded
            (e.g. a LayerNorm, whose input is a residual sum) and returned alongside; None records the layer's
            output (a pre-LN layer's FFN sum).

    Returns:
        ``(layer output, {name: captured input})``.
    """
    adapter = EncoderAdapter(model)
    target = adapter.encoder_modules()[layer]
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in (capture or {}).items():
        if module is not None:
            handles.append(module.register_forward_pre_hook(_recorder(seen, name)))
    out = {}

    def stop(module, args, output):
        out["h"] = layer_hidden(output)
        for name, module in (capture or {}).items():
            if module is None:
                seen[name] = out["h"].detach()
        raise _Stop

    handles.append(target.register_forward_hook(stop))
    try:
        with start_at_layer(model, layer) as feed:
            feed.hidden = hidden
            model(**inputs)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return out["h"], seen


def _recorder(store: dict, name: str):
    def hook(module, args):
        store[name] = args[0].detach()

    return hook
