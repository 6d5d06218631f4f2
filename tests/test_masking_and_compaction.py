"""Exactness: masked model == compacted model, for every architecture, head and edge case."""

import copy

import pytest
import torch

from kp_lightning import EncoderAdapter, StructuralMasks, attach_masks, compact, original_structure
from tests.helpers import ARCHS, TASKS, all_removed_masks, edge_case_masks, main_output, tiny_batch, tiny_model

ATOL = 1e-5


def masked_and_compact(model, masks, batch):
    with attach_masks(model, masks):
        masked = main_output(model(**batch))
    small = compact(model, masks).eval()
    out = main_output(small(**batch))
    if masked.shape != out.shape:  # bare models return the hidden stream: compare kept dims
        masked = masked[..., masks.hidden != 0]
    return masked, out, small


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("soft", [False, True])
def test_masked_equals_compacted_with_edge_cases(arch, task, soft):
    model = tiny_model(arch, task)
    masks = edge_case_masks(model, soft=soft)
    masked, out, small = masked_and_compact(model, masks, tiny_batch())
    torch.testing.assert_close(out, masked, atol=ATOL, rtol=0)
    shape = EncoderAdapter(small).shape()
    assert shape.heads[1] == 0 and shape.neurons[2] == 0
    assert shape.hidden_size == int((masks.hidden != 0).sum())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["attention", "ffn"])
def test_all_sublayers_of_one_kind_removed(arch, kind):
    model = tiny_model(arch, "ForSequenceClassification")
    masks = all_removed_masks(model, kind)
    masked, out, small = masked_and_compact(model, masks, tiny_batch())
    torch.testing.assert_close(out, masked, atol=ATOL, rtol=0)
    adapter = EncoderAdapter(small)
    present = [view.has_attention if kind == "attention" else view.has_ffn for view in adapter.layers]
    assert present == [False, False, False]


@pytest.mark.parametrize("arch", ARCHS)
def test_sdpa_and_eager_masked_outputs_agree(arch):
    eager = tiny_model(arch, "ForSequenceClassification", attn_implementation="eager")
    sdpa = tiny_model(arch, "ForSequenceClassification", attn_implementation="sdpa")
    masks = edge_case_masks(eager)
    batch = tiny_batch()
    with attach_masks(eager, masks):
        a = eager(**batch).logits
    with attach_masks(sdpa, masks):
        b = sdpa(**batch).logits
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    small = compact(sdpa, masks).eval()
    torch.testing.assert_close(small(**batch).logits, a, atol=ATOL, rtol=0)


def test_pruned_head_weights_no_longer_matter():
    model = tiny_model("bert", "ForSequenceClassification")
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    masks.head[0] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    batch = tiny_batch()
    with attach_masks(model, masks):
        before = model(**batch).logits
        with torch.no_grad():
            model.bert.encoder.layer[0].attention.self.value.weight[8:16] += 5.0
        after = model(**batch).logits
        torch.testing.assert_close(before, after, atol=0, rtol=0)
        with torch.no_grad():
            model.bert.encoder.layer[0].attention.self.value.weight[0:8] += 5.0
        assert not torch.allclose(model(**batch).logits, before)


def test_detach_restores_the_original_model():
    model = tiny_model("roberta", "ForMaskedLM")
    batch = tiny_batch()
    reference = model(**batch).logits
    handle = attach_masks(model, edge_case_masks(model))
    assert handle.attached
    assert not torch.allclose(model(**batch).logits, reference)
    handle.detach()
    assert not handle.attached
    torch.testing.assert_close(model(**batch).logits, reference, atol=0, rtol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_all_ones_masks_change_nothing():
    model = tiny_model("distilbert", "ForQuestionAnswering")
    batch = tiny_batch()
    reference = model(**batch).start_logits
    with attach_masks(model, StructuralMasks.ones(EncoderAdapter(model).shape())):
        torch.testing.assert_close(model(**batch).start_logits, reference, atol=0, rtol=0)


def test_soft_masks_receive_gradients_and_hooks_read_updates():
    model = tiny_model("bert", "ForSequenceClassification")
    masks = StructuralMasks.ones(EncoderAdapter(model).shape())
    gates = [torch.full((4,), 0.9, requires_grad=True) for _ in range(3)]
    masks.head = gates
    masks.hidden = torch.full((32,), 0.95, requires_grad=True)
    batch = tiny_batch()
    with attach_masks(model, masks):
        model(**batch).logits.sum().backward()
        assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)
        assert masks.hidden.grad.abs().sum() > 0
        first = model(**batch).logits.detach()
        masks.head = [torch.zeros(4) for _ in range(3)]  # a method replaces masks between steps
        assert not torch.allclose(model(**batch).logits, first)


def test_compaction_leaves_the_source_model_alone():
    model = tiny_model("bert", "ForMaskedLM")
    state = copy.deepcopy(model.state_dict())
    compact(model, edge_case_masks(model))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert type(model).__name__ == "BertForMaskedLM"


def test_tied_decoder_stays_tied_after_compaction():
    model = tiny_model("bert", "ForMaskedLM")
    small = compact(model, edge_case_masks(model))
    assert small.cls.predictions.decoder.weight is small.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize("arch", ARCHS)
def test_compacting_a_compact_model_composes(arch):
    model = tiny_model(arch, "ForSequenceClassification")
    first = edge_case_masks(model, seed=0, soft=False)
    small = compact(model, first).eval()
    second = edge_case_masks(small, seed=3, soft=False)
    second.head[1] = torch.zeros(0)
    smaller = compact(small, second).eval()
    batch = tiny_batch()
    with attach_masks(small, second):
        expected = small(**batch).logits
    torch.testing.assert_close(smaller(**batch).logits, expected, atol=ATOL, rtol=0)
    # The record kept in the config maps the twice-pruned model back to the original's units.
    record = original_structure(smaller)
    direct = compact(model, record).eval()
    torch.testing.assert_close(direct(**batch).logits, expected, atol=ATOL, rtol=0)


def test_train_mode_is_preserved():
    model = tiny_model("bert", "ForSequenceClassification").train()
    assert compact(model, edge_case_masks(model)).training


@pytest.mark.parametrize("embedding_size", [24, 32])  # with and without ELECTRA's embeddings_project
@pytest.mark.parametrize("task", ["ForMaskedLM", "ForPreTraining", "ForMultipleChoice", "Model"])
def test_electra_both_embedding_size_cases(embedding_size, task, tmp_path):
    import transformers

    from tests.helpers import tiny_config

    config = tiny_config("electra")
    config.embedding_size = embedding_size
    torch.manual_seed(0)
    model = getattr(transformers, "Electra" + task)(config).eval()
    adapter = EncoderAdapter(model)
    assert (adapter.embedding_projection is not None) == (embedding_size != 32)
    masks = edge_case_masks(model)
    batch = tiny_batch()
    if task == "ForMultipleChoice":
        batch = {k: v.unsqueeze(1).expand(-1, 2, -1).contiguous() for k, v in batch.items()}
    masked, out, small = masked_and_compact(model, masks, batch)
    torch.testing.assert_close(out, masked, atol=ATOL, rtol=0)
    small.save_pretrained(tmp_path / "small")
    reloaded = type(small).from_pretrained(tmp_path / "small").eval()
    torch.testing.assert_close(main_output(reloaded(**batch)), out, atol=ATOL, rtol=0)
