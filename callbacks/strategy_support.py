"""Which Lightning strategies the callbacks support: every method runs on one device, DDP and FSDP2
(``ModelParallelStrategy``); Lightning's FSDP1 ``FSDPStrategy`` is refused with a way forward."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies import FSDPStrategy

from kp_lightning.errors import ConfigError


def refuse_fsdp1(trainer: pl.Trainer, name: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` under Lightning's FSDP1 ``FSDPStrategy`` (it flattens the weights that masks, hooks and
    pruning refer to); ``name`` runs under FSDP2 and DDP."""
    if isinstance(trainer.strategy, FSDPStrategy):
        raise error(
            f"{name} does not run under FSDPStrategy (FSDP1)",
            fix="use FSDP2 instead: -c configs/trainer/fsdp2.yaml (ModelParallelStrategy), or DDP",
        )
