"""ModernBERT: pre-LayerNorm blocks, a fused QKV and a gated FFN described by the row blocks each unit owns, with
and without biases, local attention layers (the default settings run through every per-architecture test as
``modernbert``)."""

import pytest
import torch

from kp_lightning import EncoderAdapter, UnsupportedModelError, attach_masks, compact, export_compact, load_compressed
from kp_lightning.cofi import full_size, structure_size
from kp_lightning.core.flops import measured_flops, model_flops
from kp_lightning.core.report import parameter_counts
from tests.helpers import edge_case_masks, main_output, tiny_batch, tiny_model

ATOL = 1e-5
BIASED = {"attention_bias": True, "mlp_bias": True, "norm_bias": True, "classifier_bias": True}


@pytest.mark.parametrize("settings", [{}, BIASED, {"classifier_pooling": "mean"}], ids=["no-bias", "bias", "mean"])
def test_masked_compact_and_reloaded_agree_with_and_without_biases(settings, tmp_path):
    model = tiny_model("modernbert", "ForSequenceClassification", **settings)
    with torch.no_grad():  # the stock init zeroes biases; random ones make the check see them
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.2)
    masks = edge_case_masks(model)
    batch = tiny_batch()
    with torch.no_grad(), attach_masks(model, masks):
        masked = main_output(model(**batch))
    small = compact(model, masks).eval()
    structure = masks.to_structure(EncoderAdapter(model).shape())
    with torch.no_grad():
        torch.testing.assert_close(main_output(small(**batch)), masked, atol=ATOL, rtol=0)
        reloaded = load_compressed(export_compact(small, tmp_path / "export")).eval()
        torch.testing.assert_close(main_output(reloaded(**batch)), masked, atol=ATOL, rtol=0)
    # CoFi's size model counts the gated rows, the biases and the layer-0 identity pre-norm exactly.
    shape = EncoderAdapter(model).shape()
    assert shape.neuron_row_blocks == 2 and shape.unnormed_attention_layers == (0,)
    assert shape.attention_bias == shape.ffn_bias == shape.norm_bias == bool(settings.get("attention_bias"))
    assert full_size(shape) == parameter_counts(model)["encoder"]
    assert structure_size(structure) == parameter_counts(small)["encoder"]


@torch.no_grad()
def test_a_kept_unit_keeps_its_rows_in_every_row_block():
    model = tiny_model("modernbert", "Model")
    masks = edge_case_masks(model, soft=False, prune_hidden=False)
    structure = masks.to_structure(EncoderAdapter(model).shape())
    small = compact(model, masks)
    layer, heads, neurons = 2, structure.heads[2], structure.neurons[0]
    dense_qkv = model.layers[layer].attn.Wqkv.weight.view(3, 4, 8, 32)  # [q | k | v] × heads × head size
    torch.testing.assert_close(small.layers[layer].attn.Wqkv.weight, dense_qkv[:, heads].reshape(-1, 32))
    dense_wi = model.layers[0].mlp.Wi.weight.view(2, 37, 32)  # [input | gate] × neurons
    torch.testing.assert_close(small.layers[0].mlp.Wi.weight, dense_wi[:, neurons].reshape(-1, 32))


@torch.no_grad()
def test_local_layers_attend_within_their_window_and_are_counted_as_run():
    model = tiny_model("modernbert", "Model")
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    batch = tiny_batch(seq=24)
    wide = tiny_model("modernbert", "Model", local_attention=64)  # same weights, the window covers every token
    assert (main_output(model(**batch)) - main_output(wide(**batch))).abs().max() > 1e-4  # layers 1-2 see less
    # eager and sdpa compute every score of a local layer and mask those outside the window: counted as n²
    small = compact(model, edge_case_masks(model))
    for m in (model, small):
        assert measured_flops(m, 48)["encoder"] == pytest.approx(model_flops(m, 48)["encoder"], rel=0.02)


def test_a_sparse_prediction_mlm_head_is_refused_with_the_reason():
    model = tiny_model("modernbert", "ForMaskedLM", sparse_prediction=True)
    with pytest.raises(UnsupportedModelError, match="sparse_prediction=True is not supported: with labels"):
        EncoderAdapter(model)
    EncoderAdapter(tiny_model("modernbert", "ForSequenceClassification", sparse_prediction=True))  # MLM only
