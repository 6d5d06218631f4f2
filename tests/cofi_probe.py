"""A test callback that records, per rank, the gate sample every CoFi training step used."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from callbacks import CoFi


class GateSampleRecorder(pl.Callback):
    """Saves ``rank<k>.pt``: one flat tensor of all mask values per training step."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.samples: list[torch.Tensor] = []

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        cofi = next(cb for cb in trainer.callbacks if isinstance(cb, CoFi))
        masks = cofi.pruner.masks
        values = [*masks.head, *masks.neuron, masks.hidden, masks.attention, masks.ffn]
        self.samples.append(torch.cat([v.detach().flatten().cpu() for v in values]))

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.stack(self.samples), self.out_dir / f"rank{trainer.global_rank}.pt")
