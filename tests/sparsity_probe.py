"""A test callback that saves, per rank, the masks and masked weights of the sparse-training callback."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch

from callbacks.sparse_weights import SparseWeightsCallback


class MaskRecorder(pl.Callback):
    """Saves ``rank<k>.pt``: ``{"masks": ..., "weights": ...}`` at the end of training."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer, pl_module) -> None:
        sparse = next(cb for cb in trainer.callbacks if isinstance(cb, SparseWeightsCallback))
        weights = {name: w.detach().cpu() for name, w in sparse.masked.weights.items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"masks": sparse.masked.state_dict(), "weights": weights},
                   self.out_dir / f"rank{trainer.global_rank}.pt")  # fmt: skip
