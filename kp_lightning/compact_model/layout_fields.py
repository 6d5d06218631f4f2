"""What a layout entry says: a task head, a config setting it holds for, and an encoder's parts.

Copied into every compact export with :mod:`layouts`, so it imports nothing but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HeadLayout:
    """Task head of one model class.

    Attributes:
        token_readers: Linear layers that read the hidden stream at every token (input columns follow the
            kept hidden dimensions).
        sequence_readers: Linear layers that read the hidden stream at one position per sequence.
        lm_transform: Linear of an MLM transform whose output lives in the (tied) embedding space.
        lm_norm: LayerNorm of that transform.
        lm_decoder: Vocabulary projection reading the transform output, usually tied to the word embeddings.
        choices: The model takes ``(batch, choices, seq)`` inputs and runs the encoder on them flattened to
            ``(batch·choices, seq)`` (multiple choice); FLOPs and latency count per flattened sequence.
        token_outputs: Further Linear layers applied at every token that read a token reader's output, not the
            hidden stream (ModernBERT's ``classifier`` after ``head.dense`` in QA and token classification): FLOPs.
    """

    token_readers: tuple[str, ...] = ()
    sequence_readers: tuple[str, ...] = ()
    lm_transform: str | None = None
    lm_norm: str | None = None
    lm_decoder: str | None = None
    choices: bool = False
    token_outputs: tuple[str, ...] = ()

    @property
    def token_level(self) -> tuple[str, ...]:
        """Head Linear layers applied at every token (the rest run once per sequence)."""
        extra = tuple(p for p in (self.lm_transform, self.lm_decoder) if p)
        return self.token_readers + self.token_outputs + extra


@dataclass(frozen=True)
class ConfigRequirement:
    """A config setting the layout's module description holds for; a model outside it is refused.

    Attributes:
        attr: Config attribute.
        supported: Values the layout supports.
        default: Value assumed when the config lacks the attribute (None: a missing or None value is supported).
        same_as: Another config attribute whose value is also supported (``embedding_size`` = ``hidden_size``).
        tasks: Task heads the requirement applies to (all when empty).
        only_if: A config attribute that must be truthy for the requirement to apply.
        reason: What the other values change, for the error message.
    """

    attr: str
    supported: tuple = ()
    default: object = None
    same_as: str | None = None
    tasks: tuple[str, ...] = ()
    only_if: str | None = None
    reason: str = ""

    def holds(self, config, task: str) -> bool:
        if (self.tasks and task not in self.tasks) or (self.only_if and not getattr(config, self.only_if, False)):
            return True
        value = getattr(config, self.attr, self.default)
        if value is None:
            return True
        if isinstance(value, (list, tuple)):  # a list-valued setting: every listed value must be supported
            return all(v in self.supported for v in value)
        return value in self.supported or (self.same_as is not None and value == getattr(config, self.same_as))


@dataclass(frozen=True)
class EncoderLayout:
    """Module paths and config names of a BERT-style encoder (post-LayerNorm unless ``pre_norm``).

    What a unit owns: head ``h`` of ``H`` (size ``d_h``) owns rows ``b·H·d_h + h·d_h … + d_h`` of each head
    projection for every row block ``b`` (one block in separate Q/K/V layers, three in a fused ``qkv``) and the
    matching input columns of the attention output; FFN neuron ``j`` of ``I`` owns rows ``b·I + j`` of the up
    projection (two blocks when ``gated_ffn``) and input column ``j`` of the down projection; hidden dim ``k``
    owns column ``k`` of every layer that reads the stream and row ``k`` of every layer that writes it.
    """

    model_type: str
    class_prefix: str
    config_class: str
    base_prefix: str
    embedding_tables: tuple[str, ...]
    embedding_norm: str
    layers: str
    attention_core: str
    query: str | None
    key: str | None
    value: str | None
    attention_out: str
    attention_norm: str
    ffn_up: str
    ffn_down: str
    ffn_norm: str
    hidden_size_attr: str
    num_heads_attr: str
    intermediate_size_attr: str
    num_layers_attr: str
    pooler: str | None
    heads: dict[str, HeadLayout] = field(default_factory=dict)
    embedding_projection: str | None = None
    """Linear from the embedding width to the hidden width (ELECTRA when ``embedding_size != hidden_size``;
    absent from models that do not need it). When the model has it, the hidden stream starts at its output:
    hidden dimensions are its output rows, and the embedding tables, their LayerNorm and an MLM head's
    embedding-space output keep their width."""
    head_bias_input: str | None = None
    """Forward argument of the attention core holding an additive per-head score bias that the encoder computes
    once for all layers (MPNet's ``position_bias``, ``(batch, heads, query, key)``, from one shared
    ``relative_attention_bias`` table). A compact core takes its kept heads' slices of that argument (their
    original indices come from the config's structure record)."""
    layer_output_tuple: bool = False
    """The encoder layers return a tuple whose first item is the hidden stream (MPNet), not the tensor itself."""
    core_width_attr: str | None = None
    """Attribute of the attention core holding ``heads × head_size`` that its stock forward reads (MPNet's
    ``all_head_size``); a compact core gets its own width."""
    core_heads_attr: str | None = None
    """Attribute of the attention core holding its number of heads that its stock forward reads (DeBERTa's
    ``num_attention_heads``); a compact core gets its own count."""
    position_projections: tuple[str, ...] = ()
    """Per-layer Linear layers that project relative-position embeddings per head (DeBERTa's ``pos_key_proj`` /
    ``pos_query_proj``, present when ``share_att_key`` is false): rows follow the heads like Q/K/V, input
    columns the hidden dims. Paths relative to one layer; absent ones are skipped."""
    shared_position_projections: int = 0
    """How many of a layer's Q/K projections also project the relative table when the layer has no position
    projections of its own (DeBERTa with ``share_att_key``: both, whatever the terms)."""
    relative_embeddings: str | None = None
    """Table of relative-position embeddings in the hidden width, shared by all layers and read through each
    layer's Q/K (or position) projections (DeBERTa's ``encoder.rel_embeddings``): a second source of hidden-stream
    values, so its columns follow the kept hidden dims. Encoder path; absent when the model has none."""
    relative_embedding_norm: str | None = None
    """LayerNorm applied to that table before use (DeBERTa's ``encoder.LayerNorm``); normalised over kept dims."""
    relative_terms: tuple[str, ...] = ()
    """Score terms that read the relative table, as named in config ``relative_terms_attr`` (DeBERTa's ``c2p``,
    ``p2c``): each scores every projected table row against the queries or keys of every head (FLOPs)."""
    relative_terms_attr: str | None = None
    """Config attribute listing the active relative terms (DeBERTa's ``pos_att_type``)."""
    requirements: tuple[ConfigRequirement, ...] = ()
    """Config settings the description above holds for (others are refused with the reason)."""
    qkv: str | None = None
    """One Linear holding Q, K and V as three row blocks ``[q | k | v]`` (ModernBERT's ``Wqkv``), instead of
    ``query`` / ``key`` / ``value``."""
    gated_ffn: bool = False
    """The up projection holds two row blocks ``[input | gate]`` (ModernBERT's ``Wi``): neuron ``j`` owns rows
    ``j`` and ``I + j``."""
    ffn_core: str | None = None
    """Module holding the FFN's up and down projections whose forward a removed FFN replaces (ModernBERT's
    ``mlp``); without it the up projection is replaced by a zero-width stand-in."""
    pre_norm: bool = False
    """Pre-LayerNorm blocks: ``attention_norm`` / ``ffn_norm`` normalise each sublayer's input (the identity in
    layers that have none: ModernBERT's layer 0), the residual sum ``x + f(LN(x))`` is not normalised, and
    ``final_norm`` follows the last layer. A removed sublayer is then ``x + b``."""
    final_norm: str | None = None
    """LayerNorm after the last layer of a pre-LayerNorm encoder (encoder path)."""

    @property
    def head_projection_paths(self) -> tuple[str, ...]:
        """Per-layer Linear layers whose output rows follow the heads: Q, K, V (or the fused QKV) and any position
        projections."""
        own = (self.qkv,) if self.qkv else (self.query, self.key, self.value)
        return (*own, *self.position_projections)

    def head_row_blocks(self, path: str) -> int:
        """Row blocks of the head projection at ``path``: 3 for a fused QKV, else 1."""
        return 3 if path == self.qkv else 1

    @property
    def neuron_row_blocks(self) -> int:
        """Row blocks of the FFN up projection: 2 when gated, else 1."""
        return 2 if self.gated_ffn else 1

    @property
    def compact_model_type(self) -> str:
        """``model_type`` written into the config of a compact export."""
        return "kp_" + self.model_type
