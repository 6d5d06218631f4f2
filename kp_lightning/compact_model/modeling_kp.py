"""Compact encoders: stock transformers classes whose modules are resized to ``config.kp_structure``.

Copied into every compact export so ``AutoModelFor<Task>.from_pretrained(dir, trust_remote_code=True)``
works without kp_lightning; imports only torch and transformers. A removed sublayer (no heads, or no
neurons) is the identity: its output projection returns zeros and its LayerNorm is skipped, so the layer
passes its input through unchanged.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from .configuration_kp import COMPACT_CONFIG_CLASSES
from .layouts import LAYOUTS, EncoderLayout


class ZeroLinear(nn.Module):
    """Stands in for the projection of a removed sublayer: returns zeros of width ``out_features``."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class RemovedMHA(nn.Module):
    """Stands in for the attention core (the module holding Q/K/V) of a removed attention sublayer."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features), None


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Module at a dotted path."""
    return root.get_submodule(path) if path else root


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the module at a dotted path."""
    parent_path, _, name = path.rpartition(".")
    setattr(get_module(root, parent_path), name, module)


def attention_out_inside_core(layout: EncoderLayout) -> bool:
    """True when the attention output projection lives inside the attention core (DistilBERT)."""
    return layout.attention_out.startswith(layout.attention_core + ".")


def base_model_of(model: nn.Module, layout: EncoderLayout) -> nn.Module:
    """The bare encoder (``model.bert``), or the model itself for ``*Model`` classes."""
    return getattr(model, layout.base_prefix, model)


def task_of(model: nn.Module, layout: EncoderLayout) -> str:
    """Task suffix of a model class, e.g. ``ForSequenceClassification``."""
    for cls in type(model).__mro__:
        name = cls.__name__.removeprefix("KP")
        if name.startswith(layout.class_prefix) and name[len(layout.class_prefix) :] in layout.heads:
            return name[len(layout.class_prefix) :]
    raise ValueError(f"{type(model).__name__} is not a supported {layout.class_prefix} class")


def _sized_linear(old: nn.Module, in_features: int, out_features: int) -> nn.Linear:
    ref = old.weight
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=ref.device, dtype=ref.dtype)


def _sized_norm(old: nn.LayerNorm, size: int) -> nn.LayerNorm:
    return nn.LayerNorm(size, eps=old.eps, elementwise_affine=True, device=old.weight.device, dtype=old.weight.dtype)


def _sized_embedding(old: nn.Embedding, dim: int) -> nn.Embedding:
    ref = old.weight
    return nn.Embedding(old.num_embeddings, dim, padding_idx=old.padding_idx, device=ref.device, dtype=ref.dtype)


def remove_attention(layer: nn.Module, layout: EncoderLayout, hidden: int) -> None:
    """Turn a layer's attention sublayer into the identity."""
    inside = attention_out_inside_core(layout)
    set_module(layer, layout.attention_core, RemovedMHA(hidden if inside else 0))
    if not inside:
        set_module(layer, layout.attention_out, ZeroLinear(hidden))
    set_module(layer, layout.attention_norm, nn.Identity())


def remove_ffn(layer: nn.Module, layout: EncoderLayout, hidden: int) -> None:
    """Turn a layer's FFN sublayer into the identity."""
    set_module(layer, layout.ffn_up, ZeroLinear(0))
    set_module(layer, layout.ffn_down, ZeroLinear(hidden))
    set_module(layer, layout.ffn_norm, nn.Identity())


def resize_to_structure(model: nn.Module, layout: EncoderLayout, structure: dict) -> None:
    """Replace every prunable module by an (uninitialised) module of the size ``structure`` gives."""
    base = base_model_of(model, layout)
    hidden = int(structure["hidden_size"])
    head_size = getattr(model.config, layout.hidden_size_attr) // getattr(model.config, layout.num_heads_attr)
    for path in layout.embedding_tables:
        set_module(base, path, _sized_embedding(get_module(base, path), hidden))
    set_module(base, layout.embedding_norm, _sized_norm(get_module(base, layout.embedding_norm), hidden))
    layers = get_module(base, layout.layers)
    for layer, heads, neurons in zip(layers, structure["heads"], structure["intermediate"], strict=True):
        if heads == 0:
            remove_attention(layer, layout, hidden)
        else:
            width = heads * head_size
            for path in (layout.query, layout.key, layout.value):
                set_module(layer, path, _sized_linear(get_module(layer, path), hidden, width))
            out = get_module(layer, layout.attention_out)
            set_module(layer, layout.attention_out, _sized_linear(out, width, hidden))
            set_module(layer, layout.attention_norm, _sized_norm(get_module(layer, layout.attention_norm), hidden))
        if neurons == 0:
            remove_ffn(layer, layout, hidden)
        else:
            set_module(layer, layout.ffn_up, _sized_linear(get_module(layer, layout.ffn_up), hidden, neurons))
            set_module(layer, layout.ffn_down, _sized_linear(get_module(layer, layout.ffn_down), neurons, hidden))
            set_module(layer, layout.ffn_norm, _sized_norm(get_module(layer, layout.ffn_norm), hidden))
    head = layout.heads[task_of(model, layout)]
    readers = [layout.pooler] if layout.pooler and getattr(base, "pooler", None) is not None else []
    for path in readers:
        old = get_module(base, path)
        set_module(base, path, _sized_linear(old, hidden, old.out_features))
    for path in head.token_readers + head.sequence_readers:
        old = get_module(model, path)
        set_module(model, path, _sized_linear(old, hidden, old.out_features))
    if head.lm_transform:
        set_module(model, head.lm_transform, _sized_linear(get_module(model, head.lm_transform), hidden, hidden))
        set_module(model, head.lm_norm, _sized_norm(get_module(model, head.lm_norm), hidden))
        decoder = get_module(model, head.lm_decoder)
        set_module(model, head.lm_decoder, _sized_linear(decoder, hidden, decoder.out_features))


def _compact_model_class(layout: EncoderLayout, task: str) -> type:
    base_cls = getattr(transformers, layout.class_prefix + task)
    config_cls = COMPACT_CONFIG_CLASSES[layout.model_type]

    def __init__(self, config, *args, **kwargs):
        base_cls.__init__(self, config, *args, **kwargs)
        resize_to_structure(self, layout, config.kp_structure)
        self.post_init()

    name = "KP" + base_cls.__name__
    attrs = {"__init__": __init__, "config_class": config_cls, "__module__": __name__}
    return type(name, (base_cls,), attrs)


COMPACT_MODEL_CLASSES: dict[tuple[str, str], type] = {}
for _layout in LAYOUTS.values():
    for _task in _layout.heads:
        _cls = _compact_model_class(_layout, _task)
        globals()[_cls.__name__] = _cls
        COMPACT_MODEL_CLASSES[(_layout.model_type, _task)] = _cls
