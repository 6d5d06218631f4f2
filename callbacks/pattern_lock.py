"""``PatternLock``: fine-tune a sparse model with its zeros fixed (Prune Once for All's sparse transfer)."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.sparse_weights import SparseWeightsCallback


class PatternLock(SparseWeightsCallback):
    """Keep the zeros the model starts with: mask = ``W != 0``, taken in ``setup`` (before checkpoint restore;
    a resumed run takes the saved masks). Only the non-zero weights train. Pair with ``DistillationModule``
    and a dense task teacher for Prune Once for All's transfer stage.

    Args:
        include, exclude, output_dir, overwrite, storage_values, push_to_hub, hub_private: See
            ``SparseWeightsCallback``.
    """

    log_prefix = "pattern_lock"

    def __init__(
        self,
        include: list[str] | None = None,
        exclude: list[str] = [],
        output_dir: str | None = None,
        overwrite: bool = False,
        storage_values: str | None = "float32",
        push_to_hub: str | None = None,
        hub_private: bool = False,
    ):
        super().__init__(
            include, exclude, output_dir=output_dir, overwrite=overwrite, storage_values=storage_values,
            push_to_hub=push_to_hub, hub_private=hub_private,
        )  # fmt: skip
        self.locked_sparsity = 0.0

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.masked.lock()
        sparsity = self.masked.global_sparsity()
        self.locked_sparsity = sparsity
        if sparsity == 0:
            rank_zero_warn(
                "PatternLock: the selected weights have no zeros, so nothing is locked. Start from a sparse model "
                "(e.g. the output of GradualMagnitudePruning)."
            )

    def _report(self, trainer: pl.Trainer) -> dict:
        return {**super()._report(trainer), "locked_sparsity": self.locked_sparsity}
