"""A uniform view of a BERT-style encoder (stock or compact), driven by the layout table."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kp_lightning.errors import KPError

from ..compact_model.layouts import EncoderLayout, HeadLayout, layout_for_model_type, supported_classes
from ..compact_model.modeling_kp import (
    STRUCTURE_RECORD_KEY,
    RemovedMHA,
    RemovedProjection,
    base_model_of,
    get_module,
    optional_module,
    task_of,
)


class UnsupportedModelError(KPError, TypeError):
    """Raised for a model whose architecture is not in the layout table."""


@dataclass(frozen=True)
class EncoderShape:
    """Current sizes of an encoder: what masks for it must match."""

    hidden_size: int
    head_size: int
    heads: tuple[int, ...]
    neurons: tuple[int, ...]
    position_rows: int = 0
    """Relative-position rows each head scores against its queries or keys per forward, over all relative terms
    (DeBERTa's c2p / p2c)."""
    position_projected_rows: int = 0
    """Relative-position rows each head projects per forward, over all projections that read the table."""
    position_projections: int = 0
    """Extra per-head projections (weights and biases) a layer has beyond Q/K/V (DeBERTa's ``pos_*_proj``)."""
    neuron_row_blocks: int = 1
    """Rows each FFN neuron owns in the up projection (2 in a gated FFN: ModernBERT)."""
    attention_bias: bool = True
    """The attention projections have biases."""
    ffn_bias: bool = True
    """The FFN projections have biases."""
    norm_bias: bool = True
    """The LayerNorms have biases."""
    unnormed_attention_layers: tuple[int, ...] = ()
    """Layers whose attention sublayer has no LayerNorm (ModernBERT's layer 0: its pre-norm is the identity)."""

    @property
    def num_layers(self) -> int:
        return len(self.heads)


def unit_rows(units: list[int], total: int, size: int, blocks: int = 1) -> list[int]:
    """Rows that ``units`` (of ``total`` units of ``size`` rows each) own in a projection of ``blocks`` row blocks,
    block by block: ``[b·total·size + u·size + r]`` (a fused QKV keeps ``[q | k | v]``, a gated FFN
    ``[input | gate]``)."""
    return [b * total * size + u * size + r for b in range(blocks) for u in units for r in range(size)]


class LayerView:
    """The prunable parts of one encoder layer.

    A removed sublayer has no Q/K/V (or up projection); its output projection is a
    :class:`RemovedProjection` (a constant bias, or zeros without one) and its LayerNorm is still there.
    """

    def __init__(self, index: int, module: nn.Module, layout: EncoderLayout, head_size: int):
        self.index = index
        self.module = module
        self.layout = layout
        self.head_size = head_size

    def _get(self, path: str) -> nn.Module:
        return get_module(self.module, path)

    @property
    def has_attention(self) -> bool:
        return not isinstance(self._get(self.layout.attention_core), RemovedMHA)

    @property
    def has_ffn(self) -> bool:
        return not isinstance(self._get(self.layout.ffn_down), RemovedProjection)

    @property
    def attention_core(self) -> nn.Module:
        """The module holding Q/K/V (a ``RemovedMHA`` in a removed attention sublayer)."""
        return self._get(self.layout.attention_core)

    @property
    def attention_out(self) -> nn.Module:
        return self._get(self.layout.attention_out)

    @property
    def attention_norm(self) -> nn.Module:
        return self._get(self.layout.attention_norm)

    @property
    def position_projections(self) -> list[nn.Linear]:
        """The layer's per-head relative-position projections that exist (none in a removed attention sublayer)."""
        if not self.has_attention:
            return []
        return [m for p in self.layout.position_projections if (m := optional_module(self.module, p)) is not None]

    @property
    def head_projections(self) -> list[nn.Linear]:
        """The Linear layers whose output rows follow the heads: Q, K, V (or the fused QKV) and the position
        projections."""
        return [m for m, _ in self.head_projection_blocks]

    @property
    def head_projection_blocks(self) -> list[tuple[nn.Linear, int]]:
        """Each head projection with its number of row blocks (3 for a fused QKV, else 1)."""
        if not self.has_attention:
            return []
        return [
            (m, self.layout.head_row_blocks(p))
            for p in self.layout.head_projection_paths
            if (m := optional_module(self.module, p)) is not None
        ]

    def head_rows(self, heads: list[int], projection_blocks: int) -> list[int]:
        """Rows ``heads`` own in a head projection of ``projection_blocks`` row blocks."""
        return unit_rows(heads, self.num_heads, self.head_size, projection_blocks)

    def neuron_rows(self, neurons: list[int]) -> list[int]:
        """Rows ``neurons`` own in the FFN up projection."""
        return unit_rows(neurons, self.num_neurons, 1, self.layout.neuron_row_blocks)

    def sum_input(self, kind: str) -> nn.Module | None:
        """The module whose first input is the residual sum of sublayer ``kind`` (``"attention"`` or ``"ffn"``),
        or None when that sum is the layer's output: post-LN, the sublayer's LayerNorm; pre-LN, the FFN's
        pre-norm for the attention sum, the layer output for the FFN sum."""
        if not self.layout.pre_norm:
            return self.attention_norm if kind == "attention" else self.ffn_norm
        return self.ffn_norm if kind == "attention" else None

    @property
    def ffn_up(self) -> nn.Module | None:
        """The up projection (None in a removed FFN whose core was replaced)."""
        return optional_module(self.module, self.layout.ffn_up)

    @property
    def ffn_down(self) -> nn.Module:
        return self._get(self.layout.ffn_down)

    @property
    def ffn_norm(self) -> nn.Module:
        return self._get(self.layout.ffn_norm)

    @property
    def num_heads(self) -> int:
        return self.attention_out.in_features // self.head_size if self.has_attention else 0

    @property
    def num_neurons(self) -> int:
        return self.ffn_up.out_features // self.layout.neuron_row_blocks if self.has_ffn else 0


class EncoderAdapter:
    """Uniform access to the embeddings, layers, pooler and task head of a supported encoder.

    Args:
        model: A stock transformers model (``BertForSequenceClassification``, ``RobertaModel``, ...) or a
            compact model built by kp_lightning.

    Raises:
        UnsupportedModelError: the architecture or model class is not in the layout table.
    """

    def __init__(self, model: nn.Module):
        config = getattr(model, "config", None)
        layout = layout_for_model_type(getattr(config, "model_type", "")) if config is not None else None
        if layout is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not supported. Supported classes: {', '.join(supported_classes())}. "
                "Another BERT-style encoder is added with one entry in kp_lightning/compact_model/layouts.py."
            )
        try:
            self.task = task_of(model, layout)
        except ValueError:
            raise UnsupportedModelError(
                f"{type(model).__name__} is not supported (its architecture '{layout.model_type}' is, but not this "
                f"task head). Supported classes: {', '.join(supported_classes())}."
            ) from None
        unmet = [r for r in layout.requirements if not r.holds(config, self.task)]
        if unmet:
            r = unmet[0]
            raise UnsupportedModelError(
                f"{type(model).__name__} with {r.attr}={getattr(config, r.attr, r.default)!r} is not supported: "
                f"{r.reason}. Supported: {r.attr} in {list(r.supported) or [r.same_as]}."
            )
        if getattr(config, "add_cross_attention", False) or getattr(config, "is_decoder", False):
            raise UnsupportedModelError(
                f"{type(model).__name__} is configured as a decoder; only encoders are supported."
            )
        self.model = model
        self.layout = layout
        self.config = config
        self.base = base_model_of(model, layout)
        self.head: HeadLayout = layout.heads[self.task]
        self.head_size = getattr(config, layout.hidden_size_attr) // getattr(config, layout.num_heads_attr)
        self.layers = [
            LayerView(i, m, layout, self.head_size) for i, m in enumerate(get_module(self.base, layout.layers))
        ]

    @property
    def is_compact(self) -> bool:
        return getattr(self.config, "kp_structure", None) is not None

    @property
    def word_embeddings(self) -> nn.Embedding:
        return get_module(self.base, self.layout.embedding_tables[0])

    @property
    def embedding_tables(self) -> list[nn.Embedding]:
        """The embedding tables the model has (a config can drop position or token-type tables)."""
        return [m for p in self.layout.embedding_tables if (m := optional_module(self.base, p)) is not None]

    @property
    def relative_embeddings(self) -> nn.Embedding | None:
        """The shared relative-position table in the hidden width (DeBERTa), when the model has one."""
        return optional_module(self.base, self.layout.relative_embeddings)

    @property
    def relative_embedding_norm(self) -> nn.LayerNorm | None:
        """The LayerNorm applied to that table, when the model has one."""
        if self.relative_embeddings is None:
            return None
        return optional_module(self.base, self.layout.relative_embedding_norm)

    def relative_rows(self) -> tuple[int, int]:
        """Rows of the relative-position table and the number of active relative terms (0, 0 without a table)."""
        table = self.relative_embeddings
        if table is None or not self.layout.relative_terms_attr:
            return 0, 0
        active = getattr(self.config, self.layout.relative_terms_attr, None) or ()
        return table.num_embeddings, sum(term in active for term in self.layout.relative_terms)

    @property
    def embedding_norm(self) -> nn.LayerNorm:
        return get_module(self.base, self.layout.embedding_norm)

    @property
    def final_norm(self) -> nn.LayerNorm | None:
        """The LayerNorm after the last layer of a pre-LayerNorm encoder, when the model has one."""
        return optional_module(self.base, self.layout.final_norm)

    @property
    def embedding_projection(self) -> nn.Linear | None:
        """The Linear from the embedding width to the hidden stream, when the model has one (ELECTRA)."""
        path = self.layout.embedding_projection
        return get_module(self.base, path) if path and _has_module(self.base, path) else None

    @property
    def stream_start(self) -> nn.Module:
        """The module whose output is the hidden stream entering layer 0 (the embedding projection, else the
        embedding LayerNorm)."""
        projection = self.embedding_projection
        return projection if projection is not None else self.embedding_norm

    @property
    def hidden_size(self) -> int:
        """Current width of the hidden stream."""
        projection = self.embedding_projection
        return projection.out_features if projection is not None else self.word_embeddings.embedding_dim

    @property
    def pooler(self) -> nn.Linear | None:
        if self.layout.pooler is None or getattr(self.base, "pooler", None) is None:
            return None
        return get_module(self.base, self.layout.pooler)

    def stream_readers(self) -> list[nn.Linear]:
        """Pooler and head Linear layers that read the hidden stream (the MLM transform is separate)."""
        readers = [self.pooler] if self.pooler is not None else []
        paths = self.head.token_readers + self.head.sequence_readers
        return readers + [get_module(self.model, p) for p in paths]

    def encoder_modules(self) -> nn.Module:
        """The module list of encoder layers."""
        return get_module(self.base, self.layout.layers)

    def input_shape(self, batch_size: int, seq_len: int, num_choices: int = 1) -> tuple[int, ...]:
        """Shape of ``input_ids`` for ``batch_size`` examples: ``(batch, seq)``, or ``(batch, choices, seq)``
        for a head that reads choices (multiple choice: ``batch_size · num_choices`` encoder sequences)."""
        return (batch_size, num_choices, seq_len) if self.head.choices else (batch_size, seq_len)

    def shape(self) -> EncoderShape:
        """Current sizes, per layer."""
        kept = [layer for layer in self.layers if layer.has_attention]
        own = len(kept[0].position_projections) if kept else self._configured_projections()
        rows, terms = self.relative_rows()
        projections = own or (self.layout.shared_position_projections if terms else 0)
        return EncoderShape(
            hidden_size=self.hidden_size,
            head_size=self.head_size,
            heads=tuple(layer.num_heads for layer in self.layers),
            neurons=tuple(layer.num_neurons for layer in self.layers),
            position_rows=rows * terms,
            position_projected_rows=rows * projections,
            position_projections=own,
            neuron_row_blocks=self.layout.neuron_row_blocks,
            attention_bias=self.layers[0].attention_out.bias is not None,
            ffn_bias=self.layers[0].ffn_down.bias is not None,
            norm_bias=getattr(self.embedding_norm, "bias", None) is not None,
            unnormed_attention_layers=tuple(
                layer.index for layer in self.layers if not isinstance(layer.attention_norm, nn.LayerNorm)
            ),
        )

    def _configured_projections(self) -> int:
        """Per-head position projections when no layer keeps attention: the original model's, from the
        structure record compaction wrote."""
        record = getattr(self.config, STRUCTURE_RECORD_KEY, None)
        return int(record["shape"].get("position_projections", 0)) if record else 0


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        get_module(root, path)
    except AttributeError:
        return False
    return True


def example_input_shape(model: nn.Module, batch_size: int, seq_len: int, num_choices: int = 1) -> tuple[int, ...]:
    """:meth:`EncoderAdapter.input_shape` of ``model``; ``(batch, seq)`` for a model outside the layout table
    (an int8 or other wrapper taking plain ``input_ids``)."""
    try:
        return EncoderAdapter(model).input_shape(batch_size, seq_len, num_choices)
    except UnsupportedModelError:
        return (batch_size, seq_len)
