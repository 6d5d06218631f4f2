"""Test helpers for comparing an N-process run (FSDP2, DDP, several nodes) with a 1-process run step for step:
a data module whose ranks split each global batch into contiguous shards, and a callback recording the
validation metrics and the final full weights."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
import transformers
from torch.utils.data import DataLoader, DistributedSampler

from kp_lightning.core.sharding import full_state_dict, is_sharded
from kp_lightning.datamodules import GlueDataModule


class GlobalBatchShardSampler(DistributedSampler):
    """The seed+epoch permutation of the data, cut into global batches of ``world · batch_size``; rank ``r``
    reads the ``r``-th contiguous slice of each. One process with batch ``world · batch_size`` therefore sees
    exactly the union of what the ranks see at every step (a ``DistributedSampler``, so Lightning keeps it)."""

    def __init__(self, dataset, batch_size: int, num_replicas: int, rank: int, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size

    def __iter__(self):
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        step = self.batch_size * self.num_replicas
        mine = []
        for start in range(0, len(order) - step + 1, step):
            begin = start + self.rank * self.batch_size
            mine.extend(order[begin : begin + self.batch_size].tolist())
        return iter(mine)

    def __len__(self) -> int:
        return len(self.dataset) // (self.batch_size * self.num_replicas) * self.batch_size


class GlobalBatchGlue(GlueDataModule):
    """``GlueDataModule`` whose training batches follow :class:`GlobalBatchShardSampler`."""

    def train_dataloader(self) -> DataLoader:
        dataset = self._split("train")
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = GlobalBatchShardSampler(dataset, self.batch_size, world, rank, self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=self.train_collator())


class FixedLengthGlobalBatchGlue(GlobalBatchGlue):
    """:class:`GlobalBatchGlue` padding every batch to ``max_length``: statistics over all positions (QAT's
    activation ranges see padded positions too) then do not depend on how the global batch is split."""

    def train_collator(self):
        return transformers.DataCollatorWithPadding(self.tokenizer, padding="max_length", max_length=self.max_length)


class RunRecorder(pl.Callback):
    """Writes ``<out_dir>/metrics.json`` (the logged ``val/*`` values after every validation) and
    ``<out_dir>/weights.pt`` (the full model weights at the end of fit) on rank 0; gathers shards if needed.
    With ``QuantizationAwareTraining`` every rank writes its observer ranges to ``<out_dir>/ranges_rank<r>.pt``."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.metrics: list[dict] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.metrics.append(values)

    def _save(self, trainer, pl_module) -> None:
        model = pl_module.model
        quantizer = getattr(pl_module, "fake_quant", None)
        if quantizer is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ranges = {k: v.detach().cpu() for k, v in quantizer.state_dict().items()}
            torch.save(ranges, self.out_dir / f"ranges_rank{trainer.global_rank}.pt")
        if is_sharded(model):
            state = full_state_dict(model)  # collective
        else:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.out_dir / "weights.pt")
            (self.out_dir / "metrics.json").write_text(json.dumps(self.metrics))
            (self.out_dir / "info.json").write_text(json.dumps({"sharded": is_sharded(model),
                                                               "world_size": trainer.world_size}))  # fmt: skip

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module)
