"""Learning-rate rewinding during gradual pruning (Prune Once for All, pofa.md §3.7)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RewindingLinearSchedule:
    """LR multiplier: linear warmup, a saw-tooth that rewinds to the same value after every mask update while
    pruning, then linear decay to 0 over the steps after pruning.

    With ``P = prune_end − prune_start`` and ``N' = total − P``: ``λ(t) = (N' − t + ⌊(t − prune_start)/R⌋·R) /
    (N' − warmup)`` while pruning, ``(total − b − t)/(N' − warmup)`` otherwise (``b = P`` before pruning starts).
    Warmup matches ``linear_warmup_decay``: ``(t + 1)/(warmup + 1)``.

    Attributes:
        warmup_steps: Warmup length W.
        total_steps: Run length N.
        prune_start: First step of the sparsity ramp.
        prune_end: Step at which the ramp reaches the target.
        interval: Steps between mask updates R.
    """

    warmup_steps: int
    total_steps: int
    prune_start: int
    prune_end: int
    interval: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        pruning = self.prune_end - self.prune_start
        remaining = self.total_steps - pruning
        span = max(1, remaining - self.warmup_steps)
        if self.prune_start <= step < self.prune_end:
            rewound = (step - self.prune_start) // self.interval * self.interval
            return max(0.0, (remaining - step + rewound) / span)
        before = pruning if step < self.prune_start else 0
        return max(0.0, (self.total_steps - before - step) / span)
