"""DeBERTa's disentangled attention: the relative-position table is a hidden-stream source, per-head position
projections follow the kept heads, the c2p / p2c terms are counted, and settings the layout does not describe
are refused (the v3 settings run through every per-architecture test as ``deberta-v2``); MPNet's shared position
bias is cut by original head index, which only the structure record gives."""

import pytest
import torch

from kp_lightning import EncoderAdapter, UnsupportedModelError, attach_masks, compact, export_compact, load_compressed
from kp_lightning.cofi import full_size, structure_size
from kp_lightning.compact_model.modeling_kp import STRUCTURE_RECORD_KEY
from kp_lightning.core.flops import encoder_flops, measured_flops, model_flops
from kp_lightning.core.report import parameter_counts
from kp_lightning.pruning import KPruneConfig, PruneError, kprune
from tests.helpers import DEBERTA_V2_SEPARATE_POSITION_KEYS, edge_case_masks, main_output, tiny_batch, tiny_model
from tests.test_kprune import sample_set

ATOL = 1e-5


@pytest.mark.parametrize("task", ["ForSequenceClassification", "ForMaskedLM"])
def test_separate_position_projections_follow_the_kept_heads_in_every_path(task, tmp_path):
    model = tiny_model("deberta-v2", task, **DEBERTA_V2_SEPARATE_POSITION_KEYS)
    masks = edge_case_masks(model)
    batch = tiny_batch()
    with torch.no_grad(), attach_masks(model, masks):
        masked = main_output(model(**batch))
    small = compact(model, masks).eval()
    structure = masks.to_structure(EncoderAdapter(model).shape())
    for view, heads in zip(EncoderAdapter(small).layers, structure.heads, strict=True):
        sizes = [(p.out_features, p.in_features) for p in view.position_projections]
        assert sizes == ([(8 * len(heads), len(structure.hidden))] * 2 if heads else [])
    assert small.deberta.encoder.rel_embeddings.embedding_dim == len(structure.hidden)
    with torch.no_grad():
        torch.testing.assert_close(main_output(small(**batch)), masked, atol=ATOL, rtol=0)
        reloaded = load_compressed(export_compact(small, tmp_path / "export")).eval()
        torch.testing.assert_close(main_output(reloaded(**batch)), masked, atol=ATOL, rtol=0)
    # The CoFi size model counts the position projections as part of each head.
    assert EncoderAdapter(model).shape().position_projections == 2
    assert full_size(EncoderAdapter(model).shape()) == parameter_counts(model)["encoder"]
    assert structure_size(structure) == parameter_counts(small)["encoder"]


@pytest.mark.parametrize("terms", ["p2c|c2p", "c2p", "p2c"])
@pytest.mark.parametrize("shared", [True, False])
def test_relative_terms_are_counted_in_the_analytic_flops(terms, shared):
    settings = {**DEBERTA_V2_SEPARATE_POSITION_KEYS, "pos_att_type": terms, "share_att_key": shared}
    model = tiny_model("deberta-v2", "ForSequenceClassification", **settings)
    shape = EncoderAdapter(model).shape()
    assert shape.position_rows == 32 * len(terms.split("|"))  # 2 × 16 buckets per term
    assert shape.position_projected_rows == 32 * (2 if shared else len(terms.split("|")))
    small = compact(model, edge_case_masks(model))
    for m in (model, small):
        assert measured_flops(m, 48)["encoder"] == pytest.approx(model_flops(m, 48)["encoder"], rel=0.02)


def test_a_deployment_batch_shares_the_relative_projection_in_flops_and_in_the_budget():
    model = tiny_model("deberta-v2", "ForSequenceClassification")
    for batch in (1, 4):  # the projection runs once per forward: per sequence it costs 1/batch
        assert measured_flops(model, 48, batch_size=batch)["encoder"] == pytest.approx(
            model_flops(model, 48, batch_size=batch)["encoder"], rel=0.02
        )
    shape = EncoderAdapter(model).shape()
    assert encoder_flops(shape, 48, batch_size=4) < encoder_flops(shape, 48)
    bert = EncoderAdapter(tiny_model("bert", "ForSequenceClassification")).shape()
    assert encoder_flops(bert, 48, batch_size=4) == encoder_flops(bert, 48)  # nothing shared without the table
    samples = sample_set()
    result = kprune(model, samples, "classification", KPruneConfig(0.5, flops_batch_size=8), progress=False)
    assert result.flops_batch_size == 8
    assert result.flops_dense == pytest.approx(encoder_flops(shape, samples.mean_length, batch_size=8))
    assert result.flops_pruned <= 0.5 * result.flops_dense * (1 + 1e-9)
    with pytest.raises(PruneError, match="flops_batch_size must be a positive integer"):
        KPruneConfig(0.5, flops_batch_size=0).validate()


def test_without_relative_attention_there_is_no_position_table_to_follow():
    model = tiny_model("deberta-v2", "ForSequenceClassification", relative_attention=False, norm_rel_ebd="none")
    adapter = EncoderAdapter(model)
    assert adapter.relative_embeddings is None and adapter.shape().position_rows == 0
    masks = edge_case_masks(model)
    batch = tiny_batch()
    with torch.no_grad(), attach_masks(model, masks):
        masked = model(**batch).logits
    torch.testing.assert_close(compact(model, masks).eval()(**batch).logits, masked, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("task", "settings", "message"),
    [
        ("ForSequenceClassification", {"conv_kernel_size": 3}, "conv_kernel_size=3 is not supported: the convolution"),
        ("ForSequenceClassification", {"embedding_size": 24}, "embedding_size=24 is not supported"),
        ("ForSequenceClassification", {"norm_rel_ebd": "none"}, "norm_rel_ebd='none' is not supported"),
        ("ForMaskedLM", {"legacy": False}, "legacy=False is not supported: the non-legacy MLM head"),
    ],
)
def test_settings_the_layout_does_not_describe_are_refused_with_the_reason(task, settings, message):
    model = tiny_model("deberta-v2", task, **settings)
    with pytest.raises(UnsupportedModelError, match=message):
        EncoderAdapter(model)


def test_a_setting_that_only_matters_for_another_head_is_accepted():
    model = tiny_model("deberta-v2", "ForSequenceClassification", legacy=False)
    assert EncoderAdapter(model).task == "ForSequenceClassification"


def test_a_shared_head_bias_without_the_structure_record_is_refused():
    """MPNet's compact cores cut the shared position bias to their original head indices, which only the
    structure record holds: a compact config without it (not written by kp_lightning) is refused, not guessed."""
    model = tiny_model("mpnet", "Model")
    masks = edge_case_masks(model)
    config = compact(model, masks).config
    setattr(config, STRUCTURE_RECORD_KEY, None)
    with pytest.raises(ValueError, match="no 'kp_structure_record' saying which"):
        type(compact(model, masks))(config)
