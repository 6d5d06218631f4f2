"""The Kwon et al. baseline on tiny random models."""

from __future__ import annotations

import pytest
import torch

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.mask_hooks import attach_masks
from kp_lightning.pruning import KwonConfig, PruneError, kwon_prune
from kp_lightning.pruning.kwon import greedy_rearrange
from kp_lightning.pruning.kwon_tuning import damped_scales
from kp_lightning.pruning.mask_search import kwon_search
from tests.helpers import ARCHS, tiny_batch, tiny_model
from tests.test_kprune import TASKS, sample_set


@pytest.mark.parametrize("kind", list(TASKS))
@pytest.mark.parametrize("arch", ARCHS)
def test_kwon_meets_the_budget_and_folds_its_scales_into_the_compact_model(arch, kind):
    model = tiny_model(arch, TASKS[kind])
    result = kwon_prune(model, sample_set(labels=True, kind=kind), kind, KwonConfig(0.5), progress=False)
    assert result.flops_pruned <= 0.5 * result.flops_dense * (1 + 1e-9)
    assert result.flops_reduction == pytest.approx(0.5, abs=0.06)
    assert EncoderAdapter(result.model).shape() == result.structure.compacted_shape()


def test_tuned_scales_are_folded_exactly():
    """Masked dense model with the tuned real-valued masks == the compact model the method returns."""
    model = tiny_model("bert", "ForSequenceClassification")
    result = kwon_prune(model, sample_set(labels=True), "classification", KwonConfig(0.5), progress=False)
    masks = result.masks
    assert any(bool(((h != 0) & (h != 1)).any()) for h in masks.head + masks.neuron)  # real-valued scales
    inputs = tiny_batch(seed=5)
    with attach_masks(model, masks):
        masked = model(**inputs).logits
    torch.testing.assert_close(result.model(**inputs).logits, masked, atol=1e-5, rtol=0)


def brute_force(head_imp, neuron_imp, fh, fn, budget):
    best, best_value = None, -1.0
    for k in range(1, len(head_imp) + 1):
        n = max(0, min(len(neuron_imp), int((budget - k * fh) // fn)))
        if k * fh > budget:
            continue
        value = float(
            head_imp.sort(descending=True).values[:k].sum() + neuron_imp.sort(descending=True).values[:n].sum()
        )
        if value > best_value:
            best, best_value = (k, n), value
    return best


@pytest.mark.parametrize("seed", range(4))
def test_kwon_search_picks_the_best_head_neuron_split(seed):
    g = torch.Generator().manual_seed(seed)
    heads, neurons = torch.rand(8, generator=g), torch.rand(50, generator=g) * 0.02
    heads_kept, neurons_kept = kwon_search(heads, neurons, 40.0, 1.0, budget=200.0)
    assert (int(heads_kept.sum()), int(neurons_kept.sum())) == brute_force(heads, neurons, 40.0, 1.0, 200.0)
    assert 40.0 * int(heads_kept.sum()) + int(neurons_kept.sum()) <= 200.0


def test_rearrangement_keeps_the_count_and_prunes_cancelling_units():
    # Units 0 and 1 have the smallest Fisher but push the loss the same way; unit 2 cancels them, so
    # pruning {1, 2} costs almost nothing under the block-diagonal Fisher, pruning {0, 1} costs 8.
    grads = torch.tensor([[1.0, 1.0, -1.1, 3.0], [1.0, 1.0, -1.1, 3.0]]).double()  # [batches, units]
    keep = torch.tensor([False, False, True, True])
    out = greedy_rearrange(keep, grads)
    assert out.tolist() == [True, False, False, True]
    assert torch.equal(greedy_rearrange(torch.ones(4, dtype=torch.bool), grads), torch.ones(4, dtype=torch.bool))


def test_damped_scales_without_damping_solve_the_least_squares_problem():
    a = torch.randn(40, 3, dtype=torch.float64)
    b = a @ torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64) + 0.1
    aug = torch.cat([a, torch.ones(40, 1, dtype=torch.float64)], 1)
    scales = damped_scales(aug.T @ aug, aug.T @ b, 3, damping=0.0)
    torch.testing.assert_close(scales, torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64))
    pulled = damped_scales(aug.T @ aug, aug.T @ b, 3, damping=1e4)
    assert float((pulled - 1).abs().max()) < float((scales - 1).abs().max())  # damping pulls toward 1


def test_kwon_needs_labelled_samples():
    model = tiny_model("bert", "ForSequenceClassification")
    with pytest.raises(PruneError, match="needs labelled samples"):
        kwon_prune(model, sample_set(labels=False), "classification", KwonConfig(0.5), progress=False)


def test_tiny_budgets_that_fit_no_head_are_refused():
    model = tiny_model("bert", "ForSequenceClassification")
    with pytest.raises(PruneError, match="does not fit even one attention head"):
        kwon_prune(model, sample_set(labels=True), "classification", KwonConfig(0.99), progress=False)
