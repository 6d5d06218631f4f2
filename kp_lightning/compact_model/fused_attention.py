"""One fused Q/K/V GEMM for the attention cores of compact models (installed by ``modeling_kp``).

Copied into every compact export next to ``modeling_kp.py``; imports only torch.
"""

from __future__ import annotations

import copy
import inspect
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn

STOCK_ONLY_ARGUMENTS = frozenset(
    ("cache", "past_key_value", "encoder_hidden_states", "encoder_attention_mask", "output_attentions")
)
"""Keyword arguments of an attention core that, when set (not None or False), send the call down the stock path."""


def _has_global_hooks() -> bool:
    """Whether hooks registered for every module (``register_module_forward_hook``...) are active."""
    g = nn.modules.module  # where torch keeps them
    return bool(
        getattr(g, "_global_forward_hooks", None)
        or getattr(g, "_global_forward_pre_hooks", None)
        or getattr(g, "_global_backward_hooks", None)
        or getattr(g, "_global_backward_pre_hooks", None)
    )


def _is_plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` that runs its class forward: no subclass (quantized, parametrized), hook or instance forward."""
    d = module.__dict__
    return (
        type(module) is nn.Linear
        and "forward" not in d
        and not (d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"])
    )


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (grad, vmap) is running; its tensors must not outlive the call."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active and active())


def _dispatch_modes_active() -> bool:
    """Whether a ``TorchDispatchMode`` (fake tensors, FLOP counting) sees the ops: its tensors must not be kept."""
    depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return bool(depth and depth())


def _capturing_graph() -> bool:
    """Whether the forward is being traced, compiled or exported (a cached tensor would become a constant)."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or bool(exporting and exporting())
        or torch.onnx.is_in_onnx_export()
    )


def _may_cache(tensors: list[torch.Tensor]) -> bool:
    """Whether a tensor computed from ``tensors`` can be reused by later calls (see :class:`FusedQKVForward`)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not (_capturing_graph() or _functorch_active() or _dispatch_modes_active())


class FusedQKVForward:
    """Forward of a kept attention core with one GEMM for Q, K and V; otherwise the stock code, verbatim.

    Installed as ``forward`` on the core instance, which it references weakly (no reference cycle: the core is
    freed with its model); copied and pickled along with the core. The ``query``/``key``/``value`` Linear
    modules stay (same state-dict keys) and are read at every call, so replacing or editing them is seen. Computes
    ``F.linear(x, cat(Wq, Wk, Wv), cat(bq, bk, bv))``, splits it and calls the attention interface of the stock
    forward with the same arguments (and, when the output projection lives in the core, that module).

    The stock forward runs instead when a projection is not a plain ``nn.Linear`` (quantized, parametrized), has
    hooks (global module hooks included) or an instance-level ``forward`` (fake quantization), or when the call
    brings a cache, encoder states or ``output_attentions``, or while a graph is being captured (export, tracing,
    compile). The concatenated weight is cached only when no gradient is needed and no ``torch.func`` transform
    runs; it is rebuilt when a
    projection's Parameter is replaced, its storage changes or it is modified in place (its version counter).
    Writes through ``.data`` do not move version counters: call :meth:`clear_cache` after them.

    Args:
        core: The attention core (``BertSelfAttention``, ``DistilBertSelfAttention``...).
        projection_names: Names of the query, key and value Linear modules inside the core.
        output_name: Name of the output projection inside the core, when it is applied there (DistilBERT).
    """

    def __init__(self, core: nn.Module, projection_names: tuple[str, str, str], output_name: str | None = None):
        self._core = weakref.ref(core)
        self.projection_names = projection_names
        self.output_name = output_name
        parameters = inspect.signature(type(core).forward).parameters
        self.consumed_arguments = frozenset(
            name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )
        self._cache: tuple | None = None

    @property
    def core(self) -> nn.Module:
        """The attention core this forward belongs to."""
        core = self._core()
        if core is None:
            raise ReferenceError("the attention core of this FusedQKVForward no longer exists")
        return core

    def __reduce__(self):
        return type(self), (self.core, self.projection_names, self.output_name)

    def __deepcopy__(self, memo: dict) -> FusedQKVForward:
        return type(self)(copy.deepcopy(self.core, memo), self.projection_names, self.output_name)

    def clear_cache(self) -> None:
        """Forget the cached concatenated weight."""
        self._cache = None

    @staticmethod
    def supports(core: nn.Module) -> bool:
        """Whether the core's stock forward is the one this class reproduces (attributes and helpers exist)."""
        stock = sys.modules.get(type(core).__module__)
        helpers = ("ALL_ATTENTION_FUNCTIONS", "eager_attention_forward")
        attributes = ("config", "attention_head_size", "scaling", "dropout")
        return all(hasattr(stock, name) for name in helpers) and all(hasattr(core, name) for name in attributes)

    def _projections(self) -> list[nn.Module] | None:
        """The query, key and value modules when the fused GEMM computes what they would, else None."""
        core = self.core
        projections = [core._modules.get(name) for name in self.projection_names]
        if any(m is None for m in projections):  # nested paths
            projections = [core.get_submodule(name) for name in self.projection_names]
        if not all(_is_plain_linear(m) for m in projections) or _has_global_hooks():
            return None
        q, k, v = projections
        if not q.out_features == k.out_features == v.out_features:
            return None
        return projections

    def _fused_parameters(self, projections: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``cat(Wq, Wk, Wv)`` and ``cat(bq, bk, bv)`` (or None), from the cache when it is valid and allowed."""
        weights = [m._parameters.get("weight") for m in projections]
        biases = [m._parameters.get("bias") for m in projections]
        if any(w is None for w in weights):
            return None
        if any(b is None for b in biases):
            if not all(b is None for b in biases):
                return None
            biases = []
        tensors = weights + biases
        if not _may_cache(tensors):
            self._cache = None
            return torch.cat(weights), torch.cat(biases) if biases else None
        cache = self._cache
        try:
            if cache is not None and self._cache_matches(cache[0], tensors):
                return cache[2], cache[3]
            entries = [(weakref.ref(t), t.data_ptr(), t._version) for t in tensors]
        except RuntimeError:  # inference tensors have no version counter: never cached
            return torch.cat(weights), torch.cat(biases) if biases else None
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode too
            weight, bias = torch.cat(weights), torch.cat(biases) if biases else None
        # The detached aliases keep the old storages alive, so a matching data_ptr cannot be a reused address.
        anchors = [t.detach() for t in tensors]
        self._cache = (entries, anchors, weight, bias)
        return weight, bias

    @staticmethod
    def _cache_matches(entries: list[tuple], tensors: list[torch.Tensor]) -> bool:
        """Same Parameter objects, same storages, no in-place change since the cache was built."""
        if len(entries) != len(tensors):
            return False
        for (ref, ptr, version), t in zip(entries, tensors, strict=True):
            if ref() is not t or t.data_ptr() != ptr or t._version != version:
                return False
        return True

    @staticmethod
    def _stock_call(args: tuple, kwargs: dict) -> bool:
        """Whether the call's arguments are ones only the stock forward handles."""
        if not 1 <= len(args) <= 2 or "hidden_states" in kwargs or (len(args) == 2 and "attention_mask" in kwargs):
            return True
        if "past_key_values" in kwargs:  # may be an alias the stock forward renames
            return True
        return any(
            kwargs[name] is not None and kwargs[name] is not False for name in STOCK_ONLY_ARGUMENTS & kwargs.keys()
        )

    def __call__(self, *args, **kwargs):
        core = self.core
        # While a graph is captured (ONNX export, tracing, compile) the stock forward runs: the graph then holds
        # three MatMuls whose weights are initializers (dynamic quantization and constant folding see them), not
        # a Concat of the weights computed at run time.
        stock_call = _capturing_graph() or self._stock_call(args, kwargs)
        projections = None if stock_call else self._projections()
        fused = None if projections is None else self._fused_parameters(projections)
        if fused is None:
            return type(core).forward(core, *args, **kwargs)
        hidden_states = args[0]
        attention_mask = args[1] if len(args) == 2 else kwargs.get("attention_mask")
        consumed = self.consumed_arguments
        interface_kwargs = {k: v for k, v in kwargs.items() if k not in consumed} if kwargs else kwargs

        input_shape = hidden_states.shape[:-1]
        qkv = F.linear(hidden_states, *fused)
        # (..., 3·width) -> (3, batch, heads, seq, head size): the same strided views the stock forward makes
        query, key, value = qkv.view(*input_shape, 3, -1, core.attention_head_size).permute(2, 0, 3, 1, 4).unbind(0)

        stock = sys.modules[type(core).__module__]
        attention_interface = stock.ALL_ATTENTION_FUNCTIONS.get_interface(
            core.config._attn_implementation, stock.eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            core,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not core.training else core.dropout.p,
            scaling=core.scaling,
            **interface_kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        if self.output_name is not None:
            attn_output = core.get_submodule(self.output_name)(attn_output)
        return attn_output, attn_weights
