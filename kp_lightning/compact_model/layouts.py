"""Where each supported encoder keeps its parts: one table entry per architecture.

This file (with :mod:`layout_fields`, the entries' types) is copied into every compact export, so it imports
nothing but the standard library.
Paths are dotted attribute paths: encoder paths are relative to the base model (``model.bert``), layer
paths relative to one layer, head paths relative to the task model.
"""

from __future__ import annotations

from dataclasses import replace

from .layout_fields import ConfigRequirement, EncoderLayout, HeadLayout

__all__ = ["LAYOUTS", "ConfigRequirement", "EncoderLayout", "HeadLayout", "layout_for_model_type", "supported_classes"]

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
