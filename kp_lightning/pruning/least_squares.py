"""Solving normal equations, with a ridge fallback that is reported instead of silently skipping."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kp_lightning.errors import ConfigError

RIDGE_STEPS = (1e-8, 1e-6, 1e-4, 1e-2)


@dataclass
class Solution:
    """Solution of ``(G + ridge·I) X = R``; ``ridge`` is 0 when ``G`` was positive definite."""

    x: torch.Tensor
    ridge: float


def solve_normal_equations(gram: torch.Tensor, rhs: torch.Tensor) -> Solution:
    """Solve ``G X = R`` for symmetric positive semi-definite ``G`` (in float64).

    When ``G`` is singular (fewer sample tokens than unknowns, dead units, duplicate columns) a ridge
    ``ε·mean(diag G)·I`` is added with the smallest ``ε`` in ``RIDGE_STEPS`` that makes it positive definite.

    Raises:
        ValueError: ``G`` or ``R`` is not finite, or no ridge step made ``G`` positive definite.
    """
    g, r = gram.double(), rhs.double()
    if not (torch.isfinite(g).all() and torch.isfinite(r).all()):
        raise ConfigError("the least-squares system has NaN or infinite entries (non-finite activations)")
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        return Solution(torch.cholesky_solve(r, chol), 0.0)
    scale = float(torch.diagonal(g).mean().clamp_min(1e-30))
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    for eps in RIDGE_STEPS:
        chol, info = torch.linalg.cholesky_ex(g + eps * scale * eye)
        if int(info) == 0:
            return Solution(torch.cholesky_solve(r, chol), eps * scale)
    raise ConfigError("the least-squares system stayed singular with every ridge tried")
