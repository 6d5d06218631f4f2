"""Hard-concrete (L0) gates: sampling, probability of being non-zero, deterministic eval masks (cofi.md §2)."""

from __future__ import annotations

import math

import torch

LIMIT_LOW = -0.1  # γ: lower end of the stretched interval
LIMIT_HIGH = 1.1  # ζ: upper end of the stretched interval
EPSILON = 1e-6
TEMPERATURE = 2.0 / 3.0  # β
DETERMINISTIC_SHARPNESS = 0.8  # FLOP's constant: soft value = sigmoid(log α / β · 0.8)
LOG_ALPHA_MIN = math.log(0.01)
LOG_ALPHA_MAX = math.log(100.0)


def uniform_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Noise ``u ~ U(ε, 1-ε)`` drawn on the CPU from ``generator`` (identical on every rank for the same seed)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    return u.clamp(EPSILON, 1 - EPSILON)


def sample_gates(log_alpha: torch.Tensor, noise: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """A differentiable hard-concrete sample ``clamp(sigmoid((log u - log(1-u) + log α)/β)·(ζ-γ)+γ, 0, 1)``."""
    noise = noise.to(log_alpha.device, log_alpha.dtype)
    s = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + log_alpha) / temperature)
    return (s * (LIMIT_HIGH - LIMIT_LOW) + LIMIT_LOW).clamp(0.0, 1.0)


def prob_nonzero(log_alpha: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """``P(z > 0) = 1 - CDF(0) = sigmoid(log α - β·log(-γ/ζ))``, clamped to ``[ε, 1-ε]`` like the reference."""
    cdf_zero = torch.sigmoid(temperature * math.log(-LIMIT_LOW / LIMIT_HIGH) - log_alpha)
    return 1 - cdf_zero.clamp(EPSILON, 1 - EPSILON)


@torch.no_grad()
def deterministic_gates(log_alpha: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Eval-time gate values of one group (FLOP / CoFi rule).

    ``round(size - Σ P(z>0))`` gates with the smallest soft value ``sigmoid(log α/β·0.8)`` are set to 0; the
    others keep their (fractional) soft value, which compaction folds into the weights. A scalar gate group is
    therefore dropped iff ``P(z>0) < 0.5``. ``round`` is Python's (halves to even), as in the reference.
    """
    flat = log_alpha.detach().float().flatten()
    expected_zeros = flat.numel() - float(prob_nonzero(flat, temperature).sum())
    num_zeros = max(0, min(flat.numel(), round(expected_zeros)))
    soft = torch.sigmoid(flat / temperature * DETERMINISTIC_SHARPNESS)
    if num_zeros > 0:
        soft[torch.topk(soft, num_zeros, largest=False).indices] = 0.0
    return soft.view_as(log_alpha).to(log_alpha.dtype)
