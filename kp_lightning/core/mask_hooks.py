"""Apply :class:`StructuralMasks` to a model through forward hooks, leaving the weights untouched.

Where each mask acts (the same semantics :func:`compact` reproduces with smaller weights):

* head mask: scales each head's context vector (pre-hook on the attention output projection), so it works
  with eager, sdpa and any other attention kernel;
* neuron mask: scales the FFN activation (pre-hook on the down projection);
* sublayer scale and hidden mask: scale the output projection's output (bias included);
* hidden mask: every residual-stream LayerNorm normalises over the non-zero dims only and its output is scaled
  by the mask, so pruned dims stay exactly zero; so does the LayerNorm of a relative-position table read by the
  attention projections (DeBERTa); the MLM transform LayerNorm also normalises over kept dims;
* pre-LayerNorm blocks (ModernBERT): each pre-norm and the final norm normalise over the kept dims and are
  scaled by the mask like the others (an identity pre-norm gets no hook: its input is already masked);
* nothing special happens to a removed sublayer (scale 0 or no unit left): the output projection then
  returns its bias times the scale, so a post-LayerNorm sublayer computes ``LN(x + s·b)`` and a pre-LayerNorm
  one ``x + s·b``, which is what a compacted model keeps of it
  (:class:`~kp_lightning.compact_model.modeling_kp.RemovedProjection`). Hooks are attached to the output
  projections and LayerNorms of already-removed sublayers too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .adapter import EncoderAdapter
from .masks import StructuralMasks


def masked_layer_norm(norm: nn.LayerNorm, x: torch.Tensor, hidden: torch.Tensor, scale: bool) -> torch.Tensor:
    """LayerNorm over the dims where ``hidden`` is non-zero; zeros elsewhere; optionally scaled by ``hidden``."""
    kept = torch.nonzero(hidden != 0).flatten()
    out = x.new_zeros(x.shape)
    bias = None if norm.bias is None else norm.bias[kept]
    normed = F.layer_norm(x.index_select(-1, kept), (kept.numel(),), norm.weight[kept], bias, norm.eps)
    out = out.index_copy(-1, kept, normed)
    return out * hidden if scale else out


def _all_ones(t: torch.Tensor) -> bool:
    return bool((t == 1).all())


class MaskHandle:
    """Attached mask hooks; :meth:`detach` removes them. Also a context manager."""

    def __init__(self, masks: StructuralMasks):
        self.masks = masks
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, handle: torch.utils.hooks.RemovableHandle) -> None:
        self._handles.append(handle)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> MaskHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_masks(model: nn.Module, masks: StructuralMasks) -> MaskHandle:
    """Register hooks that apply ``masks`` to ``model``.

    Args:
        model: A supported encoder (see :class:`EncoderAdapter`).
        masks: Masks matching the model's current shape; read at every forward.

    Returns:
        A handle; call ``detach()`` (or use it as a context manager) to remove the hooks.
    """
    adapter = EncoderAdapter(model)
    masks.validate(adapter.shape())
    handle = MaskHandle(masks)
    for view in adapter.layers:
        i = view.index
        handle.add(view.attention_out.register_forward_pre_hook(_head_scale(masks, i, view.head_size)))
        handle.add(view.attention_out.register_forward_hook(_output_scale(masks, i, "attention")))
        handle.add(view.ffn_down.register_forward_pre_hook(_neuron_scale(masks, i)))
        handle.add(view.ffn_down.register_forward_hook(_output_scale(masks, i, "ffn")))
        for norm in (view.attention_norm, view.ffn_norm):
            if isinstance(norm, nn.LayerNorm):  # not an identity pre-norm
                handle.add(norm.register_forward_hook(_sublayer_norm(masks)))
    if adapter.final_norm is not None:
        handle.add(adapter.final_norm.register_forward_hook(_sublayer_norm(masks)))
    projection = adapter.embedding_projection
    if projection is not None:  # the stream starts at a Linear: its output dims are the hidden dims
        handle.add(projection.register_forward_hook(_stream_scale(masks)))
    else:
        handle.add(adapter.embedding_norm.register_forward_hook(_stream_norm(masks, scale=True)))
    relative_norm = adapter.relative_embedding_norm
    if relative_norm is not None:  # the relative-position table is a second hidden-stream source
        handle.add(relative_norm.register_forward_hook(_stream_norm(masks, scale=True)))
    if adapter.head.lm_norm and projection is None:  # with a projection the MLM output space is not pruned
        handle.add(
            adapter.model.get_submodule(adapter.head.lm_norm).register_forward_hook(_stream_norm(masks, scale=False))
        )
    return handle


def _head_scale(masks: StructuralMasks, layer: int, head_size: int) -> Callable:
    def hook(module, args):
        head = masks.head[layer]
        if _all_ones(head):
            return None
        return (args[0] * head.to(args[0].dtype).repeat_interleave(head_size),) + tuple(args[1:])

    return hook


def _neuron_scale(masks: StructuralMasks, layer: int) -> Callable:
    def hook(module, args):
        neuron = masks.neuron[layer]
        if _all_ones(neuron):
            return None
        return (args[0] * neuron.to(args[0].dtype),) + tuple(args[1:])

    return hook


def _output_scale(masks: StructuralMasks, layer: int, kind: str) -> Callable:
    def hook(module, args, output):
        scale = getattr(masks, kind)[layer]
        hidden = masks.hidden
        if _all_ones(hidden) and bool(scale == 1):
            return None
        return output * (scale * hidden).to(output.dtype)

    return hook


def _sublayer_norm(masks: StructuralMasks) -> Callable:
    def hook(module, args, output):
        if _all_ones(masks.hidden):
            return None
        return masked_layer_norm(module, args[0], masks.hidden.to(args[0].dtype), scale=True)

    return hook


def _stream_scale(masks: StructuralMasks) -> Callable:
    def hook(module, args, output):
        hidden = masks.hidden
        return None if _all_ones(hidden) else output * hidden.to(output.dtype)

    return hook


def _stream_norm(masks: StructuralMasks, scale: bool) -> Callable:
    def hook(module, args, output):
        hidden = masks.hidden
        if _all_ones(hidden) or (not scale and bool((hidden != 0).all())):
            return None
        return masked_layer_norm(module, args[0], hidden.to(args[0].dtype), scale=scale)

    return hook
