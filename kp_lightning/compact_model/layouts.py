"""Where each supported encoder keeps its parts: one table entry per architecture.

This file is copied into every compact export, so it imports nothing but the standard library.
Paths are dotted attribute paths: encoder paths are relative to the base model (``model.bert``), layer
paths relative to one layer, head paths relative to the task model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


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


_BERT_MLM = HeadLayout(
    lm_transform="cls.predictions.transform.dense",
    lm_norm="cls.predictions.transform.LayerNorm",
    lm_decoder="cls.predictions.decoder",
)

LAYOUTS: dict[str, EncoderLayout] = {
    "bert": EncoderLayout(
        model_type="bert",
        class_prefix="Bert",
        config_class="BertConfig",
        base_prefix="bert",
        embedding_tables=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
        ),
        embedding_norm="embeddings.LayerNorm",
        layers="encoder.layer",
        attention_core="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attention_out="attention.output.dense",
        attention_norm="attention.output.LayerNorm",
        ffn_up="intermediate.dense",
        ffn_down="output.dense",
        ffn_norm="output.LayerNorm",
        hidden_size_attr="hidden_size",
        num_heads_attr="num_attention_heads",
        intermediate_size_attr="intermediate_size",
        num_layers_attr="num_hidden_layers",
        pooler="pooler.dense",
        heads={
            "Model": HeadLayout(),
            "ForSequenceClassification": HeadLayout(),
            "ForQuestionAnswering": HeadLayout(token_readers=("qa_outputs",)),
            "ForTokenClassification": HeadLayout(token_readers=("classifier",)),
            "ForMultipleChoice": HeadLayout(choices=True),
            "ForMaskedLM": _BERT_MLM,
            "ForPreTraining": _BERT_MLM,
        },
    ),
    "roberta": EncoderLayout(
        model_type="roberta",
        class_prefix="Roberta",
        config_class="RobertaConfig",
        base_prefix="roberta",
        embedding_tables=(
            "embeddings.word_embeddings",
            "embeddings.position_embeddings",
            "embeddings.token_type_embeddings",
        ),
        embedding_norm="embeddings.LayerNorm",
        layers="encoder.layer",
        attention_core="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attention_out="attention.output.dense",
        attention_norm="attention.output.LayerNorm",
        ffn_up="intermediate.dense",
        ffn_down="output.dense",
        ffn_norm="output.LayerNorm",
        hidden_size_attr="hidden_size",
        num_heads_attr="num_attention_heads",
        intermediate_size_attr="intermediate_size",
        num_layers_attr="num_hidden_layers",
        pooler="pooler.dense",
        heads={
            "Model": HeadLayout(),
            "ForSequenceClassification": HeadLayout(sequence_readers=("classifier.dense",)),
            "ForQuestionAnswering": HeadLayout(token_readers=("qa_outputs",)),
            "ForTokenClassification": HeadLayout(token_readers=("classifier",)),
            "ForMultipleChoice": HeadLayout(choices=True),
            "ForMaskedLM": HeadLayout(
                lm_transform="lm_head.dense", lm_norm="lm_head.layer_norm", lm_decoder="lm_head.decoder"
            ),
        },
    ),
    "distilbert": EncoderLayout(
        model_type="distilbert",
        class_prefix="DistilBert",
        config_class="DistilBertConfig",
        base_prefix="distilbert",
        embedding_tables=("embeddings.word_embeddings", "embeddings.position_embeddings"),
        embedding_norm="embeddings.LayerNorm",
        layers="transformer.layer",
        attention_core="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attention_out="attention.out_lin",
        attention_norm="sa_layer_norm",
        ffn_up="ffn.lin1",
        ffn_down="ffn.lin2",
        ffn_norm="output_layer_norm",
        hidden_size_attr="dim",
        num_heads_attr="n_heads",
        intermediate_size_attr="hidden_dim",
        num_layers_attr="n_layers",
        pooler=None,
        heads={
            "Model": HeadLayout(),
            "ForSequenceClassification": HeadLayout(sequence_readers=("pre_classifier",)),
            "ForQuestionAnswering": HeadLayout(token_readers=("qa_outputs",)),
            "ForTokenClassification": HeadLayout(token_readers=("classifier",)),
            "ForMultipleChoice": HeadLayout(sequence_readers=("pre_classifier",), choices=True),
            "ForMaskedLM": HeadLayout(
                lm_transform="vocab_transform", lm_norm="vocab_layer_norm", lm_decoder="vocab_projector"
            ),
        },
    ),
}

LAYOUTS["xlm-roberta"] = replace(
    LAYOUTS["roberta"], model_type="xlm-roberta", class_prefix="XLMRoberta", config_class="XLMRobertaConfig"
)
LAYOUTS["camembert"] = replace(
    LAYOUTS["roberta"], model_type="camembert", class_prefix="Camembert", config_class="CamembertConfig"
)
LAYOUTS["electra"] = replace(
    LAYOUTS["bert"],
    model_type="electra",
    class_prefix="Electra",
    config_class="ElectraConfig",
    base_prefix="electra",
    pooler=None,
    embedding_projection="embeddings_project",
    heads={
        "Model": HeadLayout(),
        "ForSequenceClassification": HeadLayout(sequence_readers=("classifier.dense",)),
        "ForQuestionAnswering": HeadLayout(token_readers=("qa_outputs",)),
        "ForTokenClassification": HeadLayout(token_readers=("classifier",)),
        "ForMultipleChoice": HeadLayout(sequence_readers=("sequence_summary.summary",), choices=True),
        "ForMaskedLM": HeadLayout(
            lm_transform="generator_predictions.dense",
            lm_norm="generator_predictions.LayerNorm",
            lm_decoder="generator_lm_head",
        ),
        "ForPreTraining": HeadLayout(token_readers=("discriminator_predictions.dense",)),
    },
)

LAYOUTS["mpnet"] = replace(
    LAYOUTS["bert"],
    model_type="mpnet",
    class_prefix="MPNet",
    config_class="MPNetConfig",
    base_prefix="mpnet",
    embedding_tables=("embeddings.word_embeddings", "embeddings.position_embeddings"),
    attention_core="attention.attn",
    query="attention.attn.q",
    key="attention.attn.k",
    value="attention.attn.v",
    attention_out="attention.attn.o",
    attention_norm="attention.LayerNorm",
    head_bias_input="position_bias",
    core_width_attr="all_head_size",
    layer_output_tuple=True,
    heads=LAYOUTS["roberta"].heads,  # MPNet's task heads are RoBERTa's, module for module
)


LAYOUTS["deberta-v2"] = replace(
    LAYOUTS["bert"],
    model_type="deberta-v2",
    class_prefix="DebertaV2",
    config_class="DebertaV2Config",
    base_prefix="deberta",
    query="attention.self.query_proj",
    key="attention.self.key_proj",
    value="attention.self.value_proj",
    pooler=None,
    core_width_attr="all_head_size",
    core_heads_attr="num_attention_heads",
    position_projections=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    shared_position_projections=2,
    relative_embeddings="encoder.rel_embeddings",
    relative_embedding_norm="encoder.LayerNorm",
    relative_terms=("c2p", "p2c"),
    relative_terms_attr="pos_att_type",
    layer_output_tuple=True,
    heads={
        "Model": HeadLayout(),
        "ForSequenceClassification": HeadLayout(sequence_readers=("pooler.dense",)),
        "ForQuestionAnswering": HeadLayout(token_readers=("qa_outputs",)),
        "ForTokenClassification": HeadLayout(token_readers=("classifier",)),
        "ForMultipleChoice": HeadLayout(sequence_readers=("pooler.dense",), choices=True),
        "ForMaskedLM": _BERT_MLM,  # the legacy head (config.legacy, the default); see the requirement
    },
    requirements=(
        ConfigRequirement(
            "conv_kernel_size",
            supported=(0,),
            default=0,
            reason="the convolution after layer 0 (deberta-v2-xlarge/xxlarge) is a hidden-stream part the layout "
            "does not describe yet",
        ),
        ConfigRequirement(
            "embedding_size",
            same_as="hidden_size",
            reason="an embedding projection before the embedding LayerNorm is not described yet",
        ),
        ConfigRequirement(
            "norm_rel_ebd",
            supported=("layer_norm",),
            default="none",
            only_if="relative_attention",
            reason="relative embeddings without their LayerNorm (norm_rel_ebd='none') reach the attention "
            "projections unnormalised, which hidden-dimension masks cannot follow; DeBERTa-v3 uses 'layer_norm'",
        ),
        ConfigRequirement(
            "legacy",
            supported=(True,),
            default=True,
            tasks=("ForMaskedLM",),
            reason="the non-legacy MLM head multiplies with the word embeddings inside its forward; only the legacy "
            "head (a decoder Linear, the default) is described",
        ),
    ),
)


_MODERNBERT_HEAD = "head.dense"  # ModernBertPredictionHead: dense -> activation -> norm, before every task head

LAYOUTS["modernbert"] = EncoderLayout(
    model_type="modernbert",
    class_prefix="ModernBert",
    config_class="ModernBertConfig",
    base_prefix="model",
    embedding_tables=("embeddings.tok_embeddings",),
    embedding_norm="embeddings.norm",
    layers="layers",
    attention_core="attn",
    query=None,
    key=None,
    value=None,
    qkv="attn.Wqkv",
    attention_out="attn.Wo",
    attention_norm="attn_norm",
    ffn_core="mlp",
    ffn_up="mlp.Wi",
    ffn_down="mlp.Wo",
    ffn_norm="mlp_norm",
    gated_ffn=True,
    pre_norm=True,
    final_norm="final_norm",
    hidden_size_attr="hidden_size",
    num_heads_attr="num_attention_heads",
    intermediate_size_attr="intermediate_size",
    num_layers_attr="num_hidden_layers",
    pooler=None,
    heads={
        "Model": HeadLayout(),
        "ForSequenceClassification": HeadLayout(sequence_readers=(_MODERNBERT_HEAD,)),
        "ForQuestionAnswering": HeadLayout(token_readers=(_MODERNBERT_HEAD,), token_outputs=("classifier",)),
        "ForTokenClassification": HeadLayout(token_readers=(_MODERNBERT_HEAD,), token_outputs=("classifier",)),
        "ForMultipleChoice": HeadLayout(sequence_readers=(_MODERNBERT_HEAD,), choices=True),
        "ForMaskedLM": HeadLayout(lm_transform=_MODERNBERT_HEAD, lm_norm="head.norm", lm_decoder="decoder"),
    },
    requirements=(
        ConfigRequirement(
            "sparse_prediction",
            supported=(False,),
            default=False,
            tasks=("ForMaskedLM",),
            reason="with labels, the sparse-prediction MLM head returns logits at the masked tokens only, and "
            "distillation compares every token",
        ),
    ),
)


def layout_for_model_type(model_type: str) -> EncoderLayout | None:
    """Layout of a stock (``bert``) or compact (``kp_bert``) model type, or None if unknown."""
    return LAYOUTS.get(model_type.removeprefix("kp_"))


def supported_classes() -> list[str]:
    """Every supported model class name, for error messages and docs."""
    return [layout.class_prefix + task for layout in LAYOUTS.values() for task in layout.heads]
