"""Which Lightning strategies a callback supports: one refusal, with a way forward, for sharded training."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from kp_lightning.errors import ConfigError


def refuse_sharded_training(trainer: pl.Trainer, name: str, reason: str) -> None:
    """Raise ``ConfigError`` under FSDP1 (``FSDPStrategy``) or FSDP2 (``ModelParallelStrategy``): ``name`` does not
    support sharded weights yet (``reason``). Fine-tuning, distillation, KPrune, GradualMagnitudePruning,
    PatternLock and QuantizationAwareTraining run under FSDP2."""
    if isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        kind = "FSDP1 (FSDPStrategy)" if isinstance(trainer.strategy, FSDPStrategy) else "FSDP2 (ModelParallelStrategy)"
        raise ConfigError(
            f"{name} does not run under {kind} yet: {reason}",
            fix=f"run {name} on one device or under DDP (strategy: ddp, also over several nodes); fine-tuning, "
            "distillation, KPrune, GradualMagnitudePruning, PatternLock and QuantizationAwareTraining do run "
            "under FSDP2 (-c configs/trainer/fsdp2.yaml)",
        )


def refuse_fsdp1(trainer: pl.Trainer, name: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` under Lightning's FSDP1 ``FSDPStrategy`` (it flattens the weights that masks, hooks and
    pruning refer to); ``name`` runs under FSDP2 and DDP."""
    if isinstance(trainer.strategy, FSDPStrategy):
        raise error(
            f"{name} does not run under FSDPStrategy (FSDP1)",
            fix="use FSDP2 instead: -c configs/trainer/fsdp2.yaml (ModelParallelStrategy), or DDP",
        )
