"""Prune Once for All building blocks: the cubic schedule and magnitude masks per pattern."""

from __future__ import annotations

import pytest
import torch

from kp_lightning.sparsity import (
    CubicSparsitySchedule,
    SparsityPattern,
    SparsityPatternError,
    global_magnitude_masks,
    magnitude_mask,
)


def test_cubic_schedule_matches_the_formula_and_the_digest_table():
    schedule = CubicSparsitySchedule(0.0, 0.9, begin_step=0, ramp_end_step=50_000, end_step=80_000, frequency=1000)
    table = {0: 0.0, 1000: 0.053, 5000: 0.244, 10_000: 0.439, 20_000: 0.706, 30_000: 0.842, 40_000: 0.893}
    for step, value in table.items():
        assert schedule.sparsity(step) == pytest.approx(value, abs=5e-4)
        assert schedule.sparsity(step) == pytest.approx(0.9 * (1 - (1 - step / 50_000) ** 3))
    assert schedule.sparsity(50_000) == schedule.sparsity(99_999) == pytest.approx(0.9)
    assert [schedule.update_due(t) for t in (0, 999, 1000, 80_000, 81_000)] == [True, False, True, True, False]
    offset = CubicSparsitySchedule(0.2, 0.8, begin_step=10, ramp_end_step=20, frequency=5)
    assert offset.sparsity(5) == pytest.approx(0.2) and offset.sparsity(15) == pytest.approx(0.8 - 0.6 / 8)
    assert not offset.update_due(5) and offset.update_due(15) and offset.update_due(10_000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0}, r"final_sparsity must be in \[0, 1\)"),
        ({"initial_sparsity": -0.1}, r"initial_sparsity must be in \[0, 1\)"),
        ({"ramp_end_step": 5, "begin_step": 10}, "before begin_step"),
        ({"end_step": 50}, "target would never be reached"),
        ({"frequency": 0}, "frequency >= 1"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    args = {"initial_sparsity": 0.0, "final_sparsity": 0.9, "begin_step": 0, "ramp_end_step": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        CubicSparsitySchedule(**args)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.85, 0.9])
def test_unstructured_and_block_masks_are_exact_per_tensor(sparsity):
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mask = magnitude_mask(weight, sparsity)
    assert int((~mask).sum()) == int(sparsity * weight.numel())
    dropped = weight[~mask].abs()
    assert dropped.numel() == 0 or float(dropped.max()) <= float(weight[mask].abs().min())
    block = magnitude_mask(weight, sparsity, SparsityPattern.parse("block:1x4"))
    groups = block.view(16, 8, 4)
    assert bool((groups.all(-1) | (~groups).all(-1)).all())  # whole 1x4 blocks along the input dim
    assert int((~groups.all(-1)).sum()) == int(sparsity * 16 * 8)


def test_two_four_keeps_the_two_largest_of_every_four_inputs():
    weight = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    mask = magnitude_mask(weight, 0.9, SparsityPattern.parse("2:4"))  # N:M fixes its own sparsity
    groups, values = mask.view(6, 3, 4), weight.abs().view(6, 3, 4)
    assert bool((groups.sum(-1) == 2).all())
    kept_min = values.masked_fill(~groups, float("inf")).min(-1).values
    dropped_max = values.masked_fill(groups, -1.0).max(-1).values
    assert bool((kept_min >= dropped_max).all())
    assert SparsityPattern.parse("2:4").fixed_sparsity == 0.5


def test_global_allocation_uses_one_threshold():
    g = torch.Generator().manual_seed(2)
    weights = {"small": torch.randn(8, 8, generator=g) * 0.1, "large": torch.randn(8, 8, generator=g)}
    masks = global_magnitude_masks(weights, 0.5)
    assert sum(int((~m).sum()) for m in masks.values()) == 64
    assert int((~masks["small"]).sum()) > int((~masks["large"]).sum())  # non-uniform per tensor


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("4:4", None, "0 < N < M"),
        ("5:4", None, "0 < N < M"),
        ("block:1x5", (8, 12), "does not divide"),
        ("2:8", (8, 12), "do not divide 12"),
        ("diagonal", None, "unknown sparsity pattern"),
    ],
)
def test_bad_patterns_are_refused(spec, shape, message):
    with pytest.raises(SparsityPatternError, match=message):
        magnitude_mask(torch.ones(shape or (8, 8)), 0.5, SparsityPattern.parse(spec))


def test_sparsity_outside_range_is_refused():
    with pytest.raises(SparsityPatternError, match=r"\[0, 1\)"):
        magnitude_mask(torch.ones(4, 4), 1.0)
