"""Tiny models, batches and mask builders shared by tests."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import transformers

from kp_lightning import EncoderAdapter, StructuralMasks

ONNX_EXTRA = ("onnx", "onnxruntime", "onnxscript")


def _findable(name: str) -> bool:
    """Whether ``import name`` can find the module (a ``None`` in ``sys.modules`` hides it), without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


MISSING_ONNX = [name for name in ONNX_EXTRA if not _findable(name)]
# Every test that builds, saves, loads or runs an ONNX / int8 model (or a QuantizationAwareTraining callback).
needs_onnx = pytest.mark.skipif(
    bool(MISSING_ONNX),
    reason=f"needs the [onnx] extra: pip install -e '.[onnx]' (missing: {', '.join(MISSING_ONNX) or 'none'})",
)

ARCHS = ("bert", "roberta", "distilbert", "xlm-roberta", "camembert", "electra", "mpnet", "deberta-v2", "modernbert")
TASKS = ("ForSequenceClassification", "ForQuestionAnswering", "ForTokenClassification", "ForMaskedLM", "Model")
PREFIX = {
    "bert": "Bert",
    "roberta": "Roberta",
    "distilbert": "DistilBert",
    "xlm-roberta": "XLMRoberta",
    "camembert": "Camembert",
    "electra": "Electra",
    "mpnet": "MPNet",
    "deberta-v2": "DebertaV2",
    "modernbert": "ModernBert",
}


EAGER_ONLY = {"mpnet", "deberta-v2"}  # architectures transformers implements with eager attention only
# Compact cores keep the stock forward (no fused Q/K/V path for their attention math; ModernBERT's is fused).
STOCK_ATTENTION = {"mpnet", "deberta-v2", "modernbert"}


DEBERTA_V3 = {
    "relative_attention": True,
    "position_buckets": 16,
    "max_relative_positions": 64,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "position_biased_input": False,
    "type_vocab_size": 0,
}
DEBERTA_V2_SEPARATE_POSITION_KEYS = {
    **DEBERTA_V3,
    "share_att_key": False,
    "position_biased_input": True,
    "type_vocab_size": 2,
}  # DeBERTa-v2's other settings: pos_key_proj / pos_query_proj per layer, absolute and token-type tables


MODERNBERT = {
    "global_attn_every_n_layers": 3,
    "local_attention": 8,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "cls_token_id": 1,
    "sep_token_id": 2,
}


def tiny_config(arch: str, attn_implementation: str = "eager", layers: int = 3, **overrides):
    """A 3-layer, 4-head, hidden-32 encoder of the given architecture (skips the test for an attention
    implementation the architecture does not have); ``overrides`` are further config settings."""
    if attn_implementation != "eager" and arch in EAGER_ONLY:
        pytest.skip(f"transformers implements {arch} with eager attention only")
    common = {"vocab_size": 99, "max_position_embeddings": 130, "attn_implementation": attn_implementation}
    common.update(overrides)
    if arch == "distilbert":
        return transformers.DistilBertConfig(dim=32, n_layers=layers, n_heads=4, hidden_dim=37, **common)
    if arch == "electra":  # embedding_size != hidden_size: the embeddings go through embeddings_project
        common["embedding_size"] = 24
    if arch == "deberta-v2":  # DeBERTa-v3's settings: shared Q/K for positions, log buckets, no absolute positions
        common = {**DEBERTA_V3, **common}
    if arch == "modernbert":  # layers 1 and 2 attend within 4 tokens either side; special ids inside the vocab
        common = {**MODERNBERT, **common}
    cls = getattr(transformers, PREFIX[arch] + "Config")
    return cls(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=37, **common)


def tiny_model(arch: str, task: str, attn_implementation: str = "eager", seed: int = 0, layers: int = 3, **overrides):
    """Random tiny model in eval mode, with non-trivial LayerNorm parameters (``overrides``: config settings)."""
    torch.manual_seed(seed)
    config = tiny_config(arch, attn_implementation, layers, **overrides)
    model = getattr(transformers, PREFIX[arch] + task)(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                if module.bias is not None:  # ModernBERT's LayerNorms have none
                    module.bias.normal_(0, 0.1)
    return model


def tiny_batch(seed: int = 1, batch: int = 3, seq: int = 11):
    """Token ids with padding in one row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def main_output(out) -> torch.Tensor:
    """The first tensor output (logits, start_logits or last_hidden_state)."""
    for key in ("logits", "prediction_logits", "start_logits", "last_hidden_state"):
        if key in out:
            return out[key]
    raise KeyError(list(out.keys()))


def edge_case_masks(model, seed: int = 0, soft: bool = True, prune_hidden: bool = True) -> StructuralMasks:
    """Random masks with every edge case: a layer with 0 heads, one with 0 neurons, soft values, hidden pruning."""
    g = torch.Generator().manual_seed(seed)
    shape = EncoderAdapter(model).shape()
    masks = StructuralMasks.ones(shape)
    for layer in range(shape.num_layers):
        keep = (torch.rand(shape.heads[layer], generator=g) > 0.4).float()
        keep[:1] = 1
        masks.head[layer] = keep * (0.5 + torch.rand(shape.heads[layer], generator=g) if soft else 1)
        keep = (torch.rand(shape.neurons[layer], generator=g) > 0.5).float()
        keep[:1] = 1
        masks.neuron[layer] = keep * (0.5 + torch.rand(shape.neurons[layer], generator=g) if soft else 1)
    masks.head[1] = torch.zeros(shape.heads[1])
    masks.neuron[2] = torch.zeros(shape.neurons[2])
    if soft:
        masks.attention[0] = 0.8
        masks.ffn[1] = 1.2
    if prune_hidden:
        keep = (torch.rand(shape.hidden_size, generator=g) > 0.3).float()
        keep[:1] = 1
        masks.hidden = keep * (0.5 + torch.rand(shape.hidden_size, generator=g) if soft else 1)
    return masks


def all_removed_masks(model, kind: str) -> StructuralMasks:
    """Masks removing every attention (``kind='attention'``) or every FFN sublayer."""
    shape = EncoderAdapter(model).shape()
    masks = StructuralMasks.ones(shape)
    if kind == "attention":
        masks.head = [torch.zeros(h) for h in shape.heads]
    else:
        masks.ffn = torch.zeros(shape.num_layers)
    return masks
