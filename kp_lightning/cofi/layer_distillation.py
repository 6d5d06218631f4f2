"""Layerwise distillation with dynamic layer mapping (cofi.md §3.3), with the reference's mapping bugs fixed.

Each chosen teacher layer is matched, at every step, to the student layer whose (linearly mapped) hidden
states are closest in mean squared error. ``ordered`` matching goes top-down and requires strictly
increasing student layers for increasing teacher layers; ``unordered`` takes each argmin. Only layers that
still exist (attention OR FFN kept) are candidates, and a teacher layer with no candidate is skipped
rather than mapped out of range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kp_lightning.errors import ConfigError

MAPPINGS = ("ordered", "unordered")


def default_teacher_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced teacher layers, 1-based (12 layers → 3, 6, 9, 12)."""
    return sorted({max(1, math.floor(num_layers * k / count + 0.5)) for k in range(1, count + 1)})


def identity_transform(student_width: int, teacher_width: int, kept_dims: Sequence[int] | None = None) -> nn.Linear:
    """``Linear(student_width → teacher_width)`` mapping student dim ``i`` to teacher dim ``kept_dims[i]``, bias 0."""
    kept = list(kept_dims) if kept_dims is not None else list(range(student_width))
    if len(kept) != student_width or (kept and max(kept) >= teacher_width):
        raise ConfigError(
            f"cannot map a {student_width}-wide student onto a {teacher_width}-wide teacher with dims {kept[:8]}..."
        )
    transform = nn.Linear(student_width, teacher_width)
    with torch.no_grad():
        transform.weight.zero_()
        transform.weight[kept, list(range(student_width))] = 1.0
        transform.bias.zero_()
    return transform


def match_layers(costs: torch.Tensor, existing: Sequence[bool], ordered: bool) -> list[int | None]:
    """Student layer (0-based column of ``costs``) for each teacher row, or ``None`` when nothing qualifies.

    Args:
        costs: ``[teacher layers, student layers]`` costs, teacher layers in increasing order.
        existing: Per student layer, whether it still exists.
        ordered: Top-down matching with strictly decreasing student layers.
    """
    num_teacher, num_student = costs.shape
    mapping: list[int | None] = [None] * num_teacher
    upper = num_student
    for a in reversed(range(num_teacher)):
        limit = upper if ordered else num_student
        candidates = [j for j in range(limit) if existing[j]]
        if not candidates:
            continue
        best = min(candidates, key=lambda j: float(costs[a, j]))
        mapping[a] = best
        if ordered:
            upper = best
    return mapping


def layer_distillation_loss(
    student_states: Sequence[torch.Tensor],
    teacher_states: Sequence[torch.Tensor],
    teacher_layers: Sequence[int],
    transform: nn.Module,
    token_mask: torch.Tensor,
    existing: Sequence[bool],
    ordered: bool = True,
) -> tuple[torch.Tensor, list[int | None]]:
    """``Σ_a MSE(W·H_s^{m(a)}, H_t^a)`` over non-padding tokens, with the dynamic mapping ``m``.

    Args:
        student_states: ``hidden_states`` of the student (index 0 = embeddings).
        teacher_states: ``hidden_states`` of the teacher.
        teacher_layers: 1-based teacher layers to distil.
        transform: Learned map from student to teacher width.
        token_mask: ``[batch, seq]`` attention mask (1 = real token).
        existing: Per student layer (0-based), whether it exists.
        ordered: Ordered (top-down) or unordered mapping.

    Returns:
        The loss (gradient only through the selected pairs) and the 1-based student layer per teacher layer.
    """
    keep = token_mask.bool()
    mapped = torch.stack([transform(h[keep]) for h in student_states[1:]])  # [L_s, tokens, d_t]
    targets = [teacher_states[a][keep].detach().to(mapped.dtype) for a in teacher_layers]
    with torch.no_grad():
        costs = torch.stack([((mapped - t) ** 2).mean(dim=(1, 2)) for t in targets])
    mapping = match_layers(costs, existing, ordered)
    loss = mapped.new_zeros(())
    for target, j in zip(targets, mapping, strict=True):
        if j is not None:
            loss = loss + ((mapped[j] - target) ** 2).mean()
    return loss, [None if j is None else j + 1 for j in mapping]
