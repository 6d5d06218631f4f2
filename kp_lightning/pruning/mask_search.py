"""Mask search under a FLOPs budget: K-prune's global score-per-FLOP threshold and Kwon et al.'s search."""

from __future__ import annotations

import torch

from kp_lightning.errors import ConfigError


def threshold_keep(scores: torch.Tensor, flops: torch.Tensor, budget: float) -> torch.Tensor:
    """Keep the highest-scoring units whose total FLOPs fit ``budget`` (kprune.md §2.3, KPMS).

    Equivalent to the paper's threshold loop: units are ranked by score (scores are importance per FLOP)
    and the longest prefix of the ranking that fits the budget is kept. Ties keep the lower index first.

    Args:
        scores: One score per unit (all candidate units, any sublayers).
        flops: FLOPs of each unit.
        budget: FLOPs the kept units may use.

    Returns:
        A boolean keep mask over the units.
    """
    order = torch.sort(-scores.double(), stable=True).indices
    cost = torch.cumsum(flops.double()[order], 0)
    count = int((cost <= budget * (1 + 1e-12)).sum())
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[:count]] = True
    return keep


def kwon_search(
    head_importance: torch.Tensor,
    neuron_importance: torch.Tensor,
    head_flops: float,
    neuron_flops: float,
    budget: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kwon et al.'s mask search (kprune.md §3.3): for every number of kept heads ``k ≥ 1`` fill the rest of
    the budget with the most important neurons; keep the ``(k, n)`` with the largest total importance.

    Args:
        head_importance: Fisher importance per head, flattened over layers.
        neuron_importance: Fisher importance per neuron, flattened over layers.
        head_flops: FLOPs of one head.
        neuron_flops: FLOPs of one neuron.
        budget: FLOPs the kept units may use.

    Returns:
        Boolean keep masks ``(heads, neurons)`` with the same shapes as the inputs.
    """
    h_sorted, h_order = torch.sort(head_importance.double(), descending=True, stable=True)
    n_sorted, n_order = torch.sort(neuron_importance.double(), descending=True, stable=True)
    h_cum = torch.cumsum(h_sorted, 0)
    n_cum = torch.cat([n_sorted.new_zeros(1), torch.cumsum(n_sorted, 0)])
    k = torch.arange(1, head_importance.numel() + 1, dtype=torch.float64)
    n = torch.floor((budget - k * head_flops) / neuron_flops).clamp(0, neuron_importance.numel()).long()
    value = h_cum + n_cum[n]
    value[k * head_flops > budget] = -float("inf")
    best = int(torch.argmax(value))
    if value[best] == -float("inf"):
        raise ConfigError("the FLOPs budget does not fit even one attention head; request a smaller reduction")
    heads = torch.zeros_like(head_importance, dtype=torch.bool)
    heads[h_order[: best + 1]] = True
    neurons = torch.zeros_like(neuron_importance, dtype=torch.bool)
    neurons[n_order[: int(n[best])]] = True
    return heads, neurons
