"""Gradual magnitude pruning schedule (Zhu & Gupta 2017, as used by Prune Once for All; pofa.md §3.2)."""

from __future__ import annotations

from dataclasses import dataclass

from kp_lightning.errors import ConfigError


@dataclass(frozen=True)
class CubicSparsitySchedule:
    """Sparsity per optimizer step and the steps at which masks are recomputed.

    ``s(t) = s_f + (s_i − s_f)·(1 − clip((t − begin)/(ramp_end − begin), 0, 1))³``; masks are updated at
    ``begin ≤ t ≤ end`` (``end = -1``: no end) every ``frequency`` steps from ``begin``, and frozen afterwards.

    Attributes:
        initial_sparsity: ``s_i`` in [0, 1).
        final_sparsity: ``s_f`` in [0, 1).
        begin_step: First mask update (and start of the ramp).
        ramp_end_step: Step at which the target is reached.
        end_step: Last mask update (``-1``: until the end of training).
        frequency: Steps between mask updates.
    """

    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    ramp_end_step: int
    end_step: int = -1
    frequency: int = 1

    def __post_init__(self) -> None:
        for name in ("initial_sparsity", "final_sparsity"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.begin_step < 0 or self.frequency < 1:
            raise ConfigError(f"begin_step must be >= 0 and frequency >= 1, got {self.begin_step}, {self.frequency}")
        if self.ramp_end_step < self.begin_step:
            raise ConfigError(f"ramp_end_step ({self.ramp_end_step}) is before begin_step ({self.begin_step})")
        if self.end_step != -1 and self.end_step < self.ramp_end_step:
            raise ConfigError(
                f"end_step ({self.end_step}) is before ramp_end_step ({self.ramp_end_step}): the target would "
                "never be reached; use -1 or a later step"
            )

    def sparsity(self, step: int) -> float:
        """Target sparsity at ``step``."""
        if self.ramp_end_step == self.begin_step:
            progress = 1.0 if step >= self.begin_step else 0.0
        else:
            progress = min(1.0, max(0.0, (step - self.begin_step) / (self.ramp_end_step - self.begin_step)))
        remaining = (1.0 - progress) ** 3
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * remaining

    def update_due(self, step: int) -> bool:
        """Whether masks are recomputed at ``step``."""
        if step < self.begin_step or (self.end_step != -1 and step > self.end_step):
            return False
        return (step - self.begin_step) % self.frequency == 0
