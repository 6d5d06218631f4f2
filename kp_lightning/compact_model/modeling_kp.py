"""Compact encoders: stock transformers classes whose modules are resized to ``config.kp_structure``.

Copied into every compact export so ``AutoModelFor<Task>.from_pretrained(dir, trust_remote_code=True)``
works without kp_lightning; imports only torch and transformers. A removed post-LayerNorm sublayer (no
heads, or no neurons) computes ``LN(x + b)``, a removed pre-LayerNorm one ``x + b``: what the stock sublayer
computes with every unit zeroed. Its projection weights are gone, the output projection's (folded) bias ``b``
(zero without one) stays as a constant and its LayerNorm stays. ``kp_structure["removed_sublayer"]`` records
this; exports written before it existed (removed sublayers were the identity) are refused with a message.

Speed: each kept attention core with separate Q/K/V runs :class:`FusedQKVForward` (one Q/K/V GEMM, then the stock
attention kernel, sdpa unless eager was asked for); a removed sublayer costs its ``x + b`` and LayerNorm only.
Module names and state-dict keys are the stock ones.
"""

from __future__ import annotations

import inspect

import torch
import transformers
from torch import nn

from .configuration_kp import COMPACT_CONFIG_CLASSES
from .fused_attention import FusedQKVForward
from .layouts import LAYOUTS, EncoderLayout

STRUCTURE_RECORD_KEY = "kp_structure_record"
"""Config attribute of a compact model: what it keeps of the dense model (``EncoderStructure.to_dict``)."""

REMOVED_SUBLAYER = "bias_and_norm"
"""``kp_structure["removed_sublayer"]``: a removed sublayer keeps its output bias and its LayerNorm."""


class LegacyCompactModelError(ValueError):
    """A compact config written before removed sublayers kept their LayerNorm, with a removed sublayer."""


class ZeroLinear(nn.Module):
    """Stands in for the up projection of a removed FFN: returns zeros of width ``out_features`` (0)."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


class RemovedProjection(nn.Module):
    """Output projection of a removed sublayer: no weight, its bias returned at every position (zeros when the
    projection had no bias)."""

    in_features = 0

    def __init__(self, out_features: int, device=None, dtype=None, bias: bool = True):
        super().__init__()
        self.out_features = out_features
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x.new_zeros(*x.shape[:-1], self.out_features)
        # A broadcast view, not a copy (consumers, dropout, ``x + b`` and mask hooks, work out of place). Without
        # grad mode it is taken of a detached bias: a view of a leaf made there would claim requires_grad with no
        # grad_fn, which autograd hooks on module outputs (torch's ModuleTracker) reject.
        bias = self.bias if torch.is_grad_enabled() else self.bias.detach()
        return bias.expand(*x.shape[:-1], self.out_features)


class RemovedMHA(nn.Module):
    """Stands in for the attention core (the module holding Q/K/V) of a removed attention sublayer.

    Args:
        output_name: Name of the output projection when it lives inside the core (DistilBERT's ``out_lin``,
            set by the caller to a :class:`RemovedProjection`); the core then returns its constant output.
    """

    def __init__(self, output_name: str | None = None):
        super().__init__()
        self.output_name = output_name

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.output_name is None:
            return empty, None
        return getattr(self, self.output_name)(empty), None


class RemovedFFN(nn.Module):
    """Stands in for the FFN core (the module holding the up and down projections, ``layout.ffn_core``) of a removed
    FFN sublayer: returns the constant output of its down projection (set by the caller, a
    :class:`RemovedProjection` named ``output_name``)."""

    def __init__(self, output_name: str):
        super().__init__()
        self.output_name = output_name

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return getattr(self, self.output_name)(hidden_states.new_zeros(*hidden_states.shape[:-1], 0))


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Module at a dotted path."""
    return root.get_submodule(path) if path else root


def optional_module(root: nn.Module, path: str | None) -> nn.Module | None:
    """Module at a dotted path, or None when ``path`` is None or the model has no such module."""
    if not path:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


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


def _relative(path: str, prefix: str) -> str:
    if not path.startswith(prefix + "."):
        raise ValueError(f"{path!r} is not inside {prefix!r}")
    return path[len(prefix) + 1 :]


def install_fused_qkv(model: nn.Module, layout: EncoderLayout) -> int:
    """Give every kept attention core of ``model`` a :class:`FusedQKVForward`; returns how many got one.

    A core that already has an instance-level ``forward``, or whose stock code is not the expected one, is
    left alone.
    """
    if layout.qkv:  # already one Q/K/V GEMM
        return 0
    names = tuple(_relative(path, layout.attention_core) for path in (layout.query, layout.key, layout.value))
    output_name = _relative(layout.attention_out, layout.attention_core) if attention_out_inside_core(layout) else None
    installed = 0
    for layer in get_module(base_model_of(model, layout), layout.layers):
        core = get_module(layer, layout.attention_core)
        if isinstance(core, RemovedMHA) or "forward" in core.__dict__ or not FusedQKVForward.supports(core):
            continue
        core.forward = FusedQKVForward(core, names, output_name)
        installed += 1
    return installed


def remove_fused_qkv(model: nn.Module) -> int:
    """Put the stock forward back on every attention core of ``model``; returns how many were changed."""
    removed = 0
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), FusedQKVForward):
            del module.__dict__["forward"]
            removed += 1
    return removed


def _sized_linear(old: nn.Module, in_features: int, out_features: int) -> nn.Linear:
    ref = old.weight
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=ref.device, dtype=ref.dtype)


def _sized_norm(old: nn.Module, size: int) -> nn.Module:
    """A LayerNorm like ``old`` of width ``size`` (an identity pre-norm stays the identity)."""
    if not isinstance(old, nn.LayerNorm):
        return old
    ref = old.weight
    return nn.LayerNorm(size, eps=old.eps, bias=old.bias is not None, device=ref.device, dtype=ref.dtype)


def _resize_norm(root: nn.Module, path: str | None, size: int) -> None:
    if (norm := optional_module(root, path)) is not None:
        set_module(root, path, _sized_norm(norm, size))


def _sized_embedding(old: nn.Embedding, dim: int) -> nn.Embedding:
    ref = old.weight
    return nn.Embedding(old.num_embeddings, dim, padding_idx=old.padding_idx, device=ref.device, dtype=ref.dtype)


def _removed_projection(layer: nn.Module, path: str, hidden: int) -> RemovedProjection:
    """The stand-in for the output projection at ``path`` (a Linear, or an already removed projection)."""
    old = get_module(layer, path)
    ref = next(old.parameters(), None)
    kwargs = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
    return RemovedProjection(hidden, bias=old.bias is not None, **kwargs)


class HeadBiasSelection:
    """Forward pre-hook of a compact attention core: the per-head score bias the encoder computed for all the
    original heads (``layout.head_bias_input``), cut to the core's kept heads.

    Args:
        core: The attention core (its forward's signature locates the argument).
        argument: Name of the bias argument.
        kept_heads: Indices, among the original heads, of the heads the core keeps.
    """

    def __init__(self, core: nn.Module, argument: str, kept_heads: list[int]):
        names = list(inspect.signature(type(core).forward).parameters)[1:]
        self.argument = argument
        self.position = names.index(argument)
        self.kept_heads = list(kept_heads)
        self._index: torch.Tensor | None = None  # not a buffer: loading code never sees or re-initialises it

    def _select(self, bias: torch.Tensor) -> torch.Tensor:
        if self._index is None or self._index.device != bias.device:
            self._index = torch.tensor(self.kept_heads, dtype=torch.long, device=bias.device)
        return bias.index_select(1, self._index)

    def __call__(self, core: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if len(args) > self.position and args[self.position] is not None:
            args = (*args[: self.position], self._select(args[self.position]), *args[self.position + 1 :])
        elif kwargs.get(self.argument) is not None:
            kwargs = {**kwargs, self.argument: self._select(kwargs[self.argument])}
        return args, kwargs


def resize_attention_core(core: nn.Module, layout: EncoderLayout, config, layer: int, heads: int, width: int) -> None:
    """What kept attention core ``layer`` needs beyond resized projections: its width and head-count attributes
    and, for a shared per-head score bias, a :class:`HeadBiasSelection` of its heads (from the config's structure
    record)."""
    if layout.core_width_attr:
        setattr(core, layout.core_width_attr, width)
    if layout.core_heads_attr:
        setattr(core, layout.core_heads_attr, heads)
    if layout.head_bias_input:
        kept = original_heads(config, layer, heads, getattr(config, layout.num_heads_attr))
        core.register_forward_pre_hook(HeadBiasSelection(core, layout.head_bias_input, kept), with_kwargs=True)


def original_heads(config, layer: int, heads: int, total: int) -> list[int]:
    """Indices, among the original model's heads, of the ``heads`` heads a compact layer keeps (from the
    structure record compaction writes into the config); ``total``: the original model's heads per layer.

    Raises:
        ValueError: the config has no structure record and the layer does not keep every head, so which
            original heads it keeps is unknown.
    """
    record = getattr(config, STRUCTURE_RECORD_KEY, None)
    if not record:
        if heads != total:
            raise ValueError(
                f"layer {layer} keeps {heads} of {total} heads, but the config has no '{STRUCTURE_RECORD_KEY}' "
                "saying which: this architecture's shared per-head position bias needs it. Export the model "
                "with kp_lightning (export_compact), which writes it."
            )
        return list(range(heads))
    kept = record["heads"][layer]
    if len(kept) != heads:
        raise ValueError(f"layer {layer}: the structure record keeps {len(kept)} heads, kp_structure {heads}")
    return list(kept)


def remove_attention(layer: nn.Module, layout: EncoderLayout, hidden: int) -> None:
    """Replace a layer's attention sublayer by ``LN(x + b)`` (pre-LN: ``x + b``): no Q/K/V, a constant output bias
    (the LayerNorm stays)."""
    inside = attention_out_inside_core(layout)
    removed = _removed_projection(layer, layout.attention_out, hidden)
    set_module(
        layer,
        layout.attention_core,
        RemovedMHA(_relative(layout.attention_out, layout.attention_core) if inside else None),
    )
    set_module(layer, layout.attention_out, removed)


def remove_ffn(layer: nn.Module, layout: EncoderLayout, hidden: int) -> None:
    """Replace a layer's FFN sublayer by ``LN(x + b)`` (pre-LN: ``x + b``): no up projection, a constant output bias
    (the LayerNorm stays)."""
    removed = _removed_projection(layer, layout.ffn_down, hidden)
    if layout.ffn_core:
        set_module(layer, layout.ffn_core, RemovedFFN(_relative(layout.ffn_down, layout.ffn_core)))
    else:
        set_module(layer, layout.ffn_up, ZeroLinear(0))
    set_module(layer, layout.ffn_down, removed)


def check_removed_sublayer_semantics(structure: dict) -> None:
    """Refuse a compact config from before removed sublayers kept their LayerNorm, if it removes one.

    Raises:
        LegacyCompactModelError: such a model cannot be rebuilt by this code without changing its outputs.
    """
    if structure.get("removed_sublayer") == REMOVED_SUBLAYER:
        return
    if 0 in structure["heads"] or 0 in structure["intermediate"]:
        raise LegacyCompactModelError(
            "this compact model was exported by an earlier kp_lightning, in which a removed sublayer skipped its "
            "LayerNorm (the identity); this version keeps the LayerNorm (LN(x + b)). Load it with the code "
            "shipped in its directory, in a process that does not import kp_lightning: "
            "AutoModelFor<Task>.from_pretrained(dir, trust_remote_code=True); or prune the dense model again."
        )


def resize_to_structure(model: nn.Module, layout: EncoderLayout, structure: dict) -> None:
    """Replace every prunable module by an (uninitialised) module of the size ``structure`` gives."""
    base = base_model_of(model, layout)
    hidden = int(structure["hidden_size"])
    head_size = getattr(model.config, layout.hidden_size_attr) // getattr(model.config, layout.num_heads_attr)
    projection = optional_module(base, layout.embedding_projection)
    if projection is not None:  # the hidden stream starts at the projection; the embeddings keep their width
        set_module(base, layout.embedding_projection, _sized_linear(projection, projection.in_features, hidden))
    else:
        for path in layout.embedding_tables:
            if (table := optional_module(base, path)) is not None:
                set_module(base, path, _sized_embedding(table, hidden))
        _resize_norm(base, layout.embedding_norm, hidden)
    _resize_norm(base, layout.final_norm, hidden)
    relative = optional_module(base, layout.relative_embeddings)
    if relative is not None:  # a second hidden-stream source, read by every layer's projections
        set_module(base, layout.relative_embeddings, _sized_embedding(relative, hidden))
        if (norm := optional_module(base, layout.relative_embedding_norm)) is not None:
            set_module(base, layout.relative_embedding_norm, _sized_norm(norm, hidden))
    check_removed_sublayer_semantics(structure)
    layers = get_module(base, layout.layers)
    for index, (layer, heads, neurons) in enumerate(
        zip(layers, structure["heads"], structure["intermediate"], strict=True)
    ):
        if heads == 0:
            remove_attention(layer, layout, hidden)
        else:
            width = heads * head_size
            for path in layout.head_projection_paths:
                if (head_projection := optional_module(layer, path)) is not None:
                    rows = width * layout.head_row_blocks(path)
                    set_module(layer, path, _sized_linear(head_projection, hidden, rows))
            out = get_module(layer, layout.attention_out)
            set_module(layer, layout.attention_out, _sized_linear(out, width, hidden))
            resize_attention_core(get_module(layer, layout.attention_core), layout, model.config, index, heads, width)
        _resize_norm(layer, layout.attention_norm, hidden)
        if neurons == 0:
            remove_ffn(layer, layout, hidden)
        else:
            rows = neurons * layout.neuron_row_blocks
            set_module(layer, layout.ffn_up, _sized_linear(get_module(layer, layout.ffn_up), hidden, rows))
            set_module(layer, layout.ffn_down, _sized_linear(get_module(layer, layout.ffn_down), neurons, hidden))
        _resize_norm(layer, layout.ffn_norm, hidden)
    head = layout.heads[task_of(model, layout)]
    readers = [layout.pooler] if layout.pooler and getattr(base, "pooler", None) is not None else []
    for path in readers:
        old = get_module(base, path)
        set_module(base, path, _sized_linear(old, hidden, old.out_features))
    for path in head.token_readers + head.sequence_readers:
        old = get_module(model, path)
        set_module(model, path, _sized_linear(old, hidden, old.out_features))
    if head.lm_transform and projection is not None:  # it writes the unpruned embedding space
        transform = get_module(model, head.lm_transform)
        set_module(model, head.lm_transform, _sized_linear(transform, hidden, transform.out_features))
    elif head.lm_transform:
        set_module(model, head.lm_transform, _sized_linear(get_module(model, head.lm_transform), hidden, hidden))
        _resize_norm(model, head.lm_norm, hidden)
        decoder = get_module(model, head.lm_decoder)
        set_module(model, head.lm_decoder, _sized_linear(decoder, hidden, decoder.out_features))


def _compact_model_class(layout: EncoderLayout, task: str) -> type:
    base_cls = getattr(transformers, layout.class_prefix + task)
    config_cls = COMPACT_CONFIG_CLASSES[layout.model_type]

    def __init__(self, config, *args, **kwargs):
        base_cls.__init__(self, config, *args, **kwargs)
        resize_to_structure(self, layout, config.kp_structure)
        install_fused_qkv(self, layout)
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
