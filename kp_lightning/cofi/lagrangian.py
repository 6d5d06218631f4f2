"""CoFi's sparsity control: a linearly ramped target and the Lagrangian λ1(ŝ−t) + λ2(ŝ−t)² (cofi.md §2.6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kp_lightning.errors import ConfigError


@dataclass(frozen=True)
class SparsitySchedule:
    """Target sparsity per optimizer step: 0 before ``start_step``, then linear to ``target`` over ``warmup_steps``.

    Attributes:
        target: Final sparsity, in (0, 1).
        start_step: Steps of distillation before pruning starts (pre-pruning fine-tuning).
        warmup_steps: Steps over which the target ramps from 0 to ``target``.
    """

    target: float
    start_step: int
    warmup_steps: int

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ConfigError(f"the sparsity target must be in (0, 1), got {self.target}")
        if self.start_step < 0 or self.warmup_steps < 0:
            raise ConfigError(f"start and warmup steps must be >= 0, got {self.start_step}, {self.warmup_steps}")

    def pruning(self, step: int) -> bool:
        """Whether gates are active at ``step``."""
        return step >= self.start_step

    def at(self, step: int) -> float:
        """Target sparsity at optimizer step ``step``."""
        if step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return self.target
        return self.target * min(1.0, (step - self.start_step) / self.warmup_steps)

    @property
    def end_of_warmup(self) -> int:
        return self.start_step + self.warmup_steps


class LagrangeMultipliers(nn.Module):
    """``λ1, λ2`` (initialised to 0), trained by gradient ASCENT so the penalty pins ``ŝ`` to the target."""

    def __init__(self):
        super().__init__()
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.zeros(()))

    def penalty(self, expected_sparsity: torch.Tensor, target: float) -> torch.Tensor:
        """``λ1·(ŝ − t) + λ2·(ŝ − t)²`` (signed, as in the reference)."""
        gap = expected_sparsity - target
        return self.lambda_1 * gap + self.lambda_2 * gap * gap
