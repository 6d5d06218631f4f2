"""Hard-zero masked weights, weight selection and LR rewinding (plain torch, tiny models)."""

from __future__ import annotations

import pytest
import torch
import transformers

from kp_lightning import EncoderAdapter
from kp_lightning.sparsity import (
    MaskedWeights,
    NoWeightsSelectedError,
    RewindingLinearSchedule,
    SparsityPattern,
    SparsityPatternError,
    encoder_linear_names,
    select_linear_names,
)
from tests.helpers import ARCHS, tiny_batch, tiny_model


def wide_bert(seed: int = 0) -> transformers.BertForSequenceClassification:
    """A tiny BERT whose FFN width (64) is divisible by 4, so block and 2:4 patterns tile every weight."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_selection_is_the_six_encoder_linears_per_layer(arch):
    model = tiny_model(arch, "ForSequenceClassification")
    names = encoder_linear_names(model)
    assert len(names) == (4 if EncoderAdapter(model).layout.qkv else 6) * 3  # a fused QKV is one Linear
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)
    assert select_linear_names(model) == names
    assert select_linear_names(model, exclude=[r"\.0\."]) == [n for n in names if ".0." not in n]


def test_include_patterns_and_nothing_matched():
    model = tiny_model("bert", "ForMaskedLM")
    assert select_linear_names(model, include=["query$", "key$"]) == [
        f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(3) for p in ("query", "key")
    ]
    with pytest.raises(NoWeightsSelectedError, match="no Linear layer matched"):
        select_linear_names(model, include=["no_such_layer"])
    with pytest.raises(NoWeightsSelectedError, match="invalid name pattern"):
        select_linear_names(model, include=["("])


@pytest.mark.parametrize("spec", ["unstructured", "block:1x4", "block:2x2"])
def test_prune_to_gives_exact_sparsity_per_weight(spec):
    model = wide_bert()
    masked = MaskedWeights(model, encoder_linear_names(model), SparsityPattern.parse(spec))
    masked.prune_to(0.75)
    for name, value in masked.sparsity().items():
        assert value == pytest.approx(0.75, abs=1e-9), name
    assert masked.global_sparsity() == pytest.approx(0.75)


def test_two_four_has_exactly_two_zeros_in_every_group_of_four_and_ramps_group_by_group():
    model = wide_bert()
    masked = MaskedWeights(model, encoder_linear_names(model), SparsityPattern.parse("2:4"))
    masked.prune_to(0.3)  # floor(0.3·4) = 1 zero per group on the way to 2:4
    for weight in masked.weights.values():
        assert ((weight.view(weight.shape[0], -1, 4) == 0).sum(-1) == 1).all()
    masked.prune_to(0.5)
    for weight in masked.weights.values():
        groups = weight.view(weight.shape[0], -1, 4)
        assert ((groups == 0).sum(-1) == 2).all()


def test_block_shape_that_does_not_divide_a_weight_is_refused():
    model = tiny_model("bert", "ForSequenceClassification")  # FFN width 37
    with pytest.raises(SparsityPatternError, match="does not divide"):
        MaskedWeights(model, encoder_linear_names(model), SparsityPattern.parse("block:1x4"))
    with pytest.raises(SparsityPatternError, match="global allocation"):
        MaskedWeights(model, encoder_linear_names(model), SparsityPattern.parse("block:1x1"), "global")


def test_global_allocation_uses_one_threshold():
    model = wide_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight.mul_(10)  # large weights survive globally
    masked = MaskedWeights(model, encoder_linear_names(model), allocation="global")
    masked.prune_to(0.8)
    per = masked.sparsity()
    assert masked.global_sparsity() == pytest.approx(0.8, abs=1e-3)
    assert per["bert.encoder.layer.0.attention.self.query"] < 0.2
    assert max(per.values()) > 0.8


def adamw_steps(model, masked: MaskedWeights | None, steps: int = 5) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    batch = tiny_batch()
    for _ in range(steps):
        model.train()
        loss = model(**batch, labels=torch.tensor([0, 1, 0])).loss
        loss.backward()
        if masked is not None:
            masked.mask_gradients()
        optimizer.step()
        optimizer.zero_grad()
        if masked is not None:
            masked.apply()


def test_zeros_survive_adamw_steps_and_would_not_without_the_masks():
    model = wide_bert()
    masked = MaskedWeights(model, encoder_linear_names(model))
    masked.prune_to(0.9)
    zeros = {n: (w == 0).clone() for n, w in masked.weights.items()}
    adamw_steps(model, masked)
    for name, weight in masked.weights.items():
        assert (weight[zeros[name]] == 0).all()
        assert (weight[~zeros[name]] != 0).all()
    adamw_steps(model, None, steps=1)  # momentum from the masked run is still there; nothing re-zeroes now
    assert masked.global_sparsity() < 0.9


def test_lock_keeps_the_existing_zeros_while_the_rest_trains():
    model = wide_bert()
    donor = MaskedWeights(model, encoder_linear_names(model))
    donor.prune_to(0.6)
    before = {n: w.detach().clone() for n, w in donor.weights.items()}
    locked = MaskedWeights(model, encoder_linear_names(model))
    locked.lock()
    adamw_steps(model, locked)
    for name, weight in locked.weights.items():
        assert torch.equal(weight == 0, before[name] == 0)
        assert not torch.equal(weight, before[name])


def test_mask_state_round_trips_and_rejects_unknown_layers():
    model = wide_bert()
    masked = MaskedWeights(model, encoder_linear_names(model))
    masked.prune_to(0.5)
    other = MaskedWeights(wide_bert(seed=1), encoder_linear_names(model))
    other.load_state_dict(masked.state_dict())
    for name in masked.masks:
        assert torch.equal(other.masks[name], masked.masks[name])
    partial = MaskedWeights(model, encoder_linear_names(model)[:2])
    with pytest.raises(SparsityPatternError, match="not selected"):
        partial.load_state_dict(masked.state_dict())


def test_lr_rewinding_matches_the_digest_numbers():
    schedule = RewindingLinearSchedule(warmup_steps=1000, total_steps=100_000, prune_start=0, prune_end=50_000,
                                       interval=1000)  # fmt: skip
    pruning = [schedule(t) for t in range(1000, 50_000, 250)]
    assert min(pruning) >= 1.0 and max(pruning) <= 1.021
    assert schedule(2000) == schedule(3000) > schedule(2999)  # rewinds after every mask update
    assert schedule(60_000) == pytest.approx(0.82, abs=0.01)
    assert schedule(75_000) == pytest.approx(0.51, abs=0.01)
    assert schedule(99_999) == pytest.approx(0.0, abs=1e-4)
    assert schedule(0) < schedule(500) < schedule(999) < 1
