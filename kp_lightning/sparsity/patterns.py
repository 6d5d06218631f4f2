"""Magnitude masks for a weight ``[out, in]``: unstructured, blocks along the input dimension, and N:M."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from kp_lightning.errors import KPError


class SparsityPatternError(KPError, ValueError):
    """A pattern that cannot be applied (bad spec, or it does not divide a weight)."""


@dataclass(frozen=True)
class SparsityPattern:
    """How zeros are grouped.

    Attributes:
        kind: ``"unstructured"``, ``"block"`` (``rows × cols`` blocks scored by mean ``|w|``) or ``"n:m"``
            (``n`` non-zeros in every group of ``m`` consecutive input weights, e.g. 2:4).
        rows, cols: Block shape (``block``), e.g. 1×4 along the input dimension.
        n, m: Kept and group size (``n:m``).
    """

    kind: str = "unstructured"
    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0

    @classmethod
    def parse(cls, spec: str) -> SparsityPattern:
        """``"unstructured"``, ``"block:1x4"`` or ``"2:4"``."""
        spec = spec.strip().lower()
        if spec == "unstructured":
            return cls()
        if match := re.fullmatch(r"block:(\d+)x(\d+)", spec):
            rows, cols = int(match[1]), int(match[2])
            if rows < 1 or cols < 1:
                raise SparsityPatternError(f"block shape must be positive, got {spec!r}")
            return cls("block", rows=rows, cols=cols)
        if match := re.fullmatch(r"(\d+):(\d+)", spec):
            n, m = int(match[1]), int(match[2])
            if not 0 < n < m:
                raise SparsityPatternError(f"N:M needs 0 < N < M (N kept out of every M), got {spec!r}")
            return cls("n:m", n=n, m=m)
        raise SparsityPatternError(f"unknown sparsity pattern {spec!r}: use 'unstructured', 'block:RxC' or 'N:M'")

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity an N:M pattern imposes (``None`` for patterns that follow the schedule)."""
        return 1 - self.n / self.m if self.kind == "n:m" else None

    def check(self, name: str, shape: torch.Size) -> None:
        """Raise if the pattern does not tile a 2-D weight of ``shape``."""
        if len(shape) != 2:
            raise SparsityPatternError(f"{name}: patterns apply to 2-D weights, got shape {tuple(shape)}")
        out_features, in_features = shape
        if self.kind == "block" and (out_features % self.rows or in_features % self.cols):
            raise SparsityPatternError(
                f"{name}: block {self.rows}x{self.cols} does not divide the weight {out_features}x{in_features}"
            )
        if self.kind == "n:m" and in_features % self.m:
            raise SparsityPatternError(f"{name}: groups of {self.m} do not divide {in_features} input features")


def _zero_smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        keep[torch.topk(scores.flatten(), count, largest=False).indices] = False
    return keep.view_as(scores)


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: SparsityPattern = SparsityPattern()) -> torch.Tensor:
    """Boolean keep-mask of ``weight`` with exactly ``floor(sparsity·units)`` units zeroed (N:M: its own ratio).

    Args:
        weight: A ``[out, in]`` weight.
        sparsity: Fraction to zero, in [0, 1) (ignored by N:M).
        pattern: Grouping of the zeros.
    """
    if not 0 <= sparsity < 1:
        raise SparsityPatternError(f"sparsity must be in [0, 1), got {sparsity}")
    pattern.check("weight", weight.shape)
    scores = weight.detach().abs().float()
    if pattern.kind == "unstructured":
        return _zero_smallest(scores, math.floor(sparsity * scores.numel()))
    out_features, in_features = scores.shape
    if pattern.kind == "block":
        r, c = pattern.rows, pattern.cols
        blocks = scores.view(out_features // r, r, in_features // c, c).mean(dim=(1, 3))
        keep = _zero_smallest(blocks, math.floor(sparsity * blocks.numel()))
        return keep.repeat_interleave(r, 0).repeat_interleave(c, 1)
    groups = scores.view(out_features, in_features // pattern.m, pattern.m)
    kept = torch.topk(groups, pattern.n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, kept, True)
    return keep.view(out_features, in_features)


@torch.no_grad()
def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Unstructured keep-masks with ONE magnitude threshold over all ``weights`` (non-uniform per tensor)."""
    if not 0 <= sparsity < 1:
        raise SparsityPatternError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = torch.cat([w.detach().abs().float().flatten() for w in weights.values()])
    keep = _zero_smallest(flat, math.floor(sparsity * flat.numel()))
    masks, offset = {}, 0
    for name, weight in weights.items():
        masks[name] = keep[offset : offset + weight.numel()].view_as(weight)
        offset += weight.numel()
    return masks
