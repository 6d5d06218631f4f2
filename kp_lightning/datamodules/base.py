"""Shared LightningDataModule machinery: tokenizer, cached tokenization, DDP-safe setup, dataloaders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import lightning.pytorch as pl
import transformers
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from kp_lightning.data.epoch_sampler import EpochShuffleSampler
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.errors import ConfigError
from kp_lightning.modules.model_loading import tokenizer_source
from kp_lightning.pretrained_loading import load_pretrained

CACHE_FORMAT = 1


def default_cache_dir() -> str:
    """``$KP_LIGHTNING_CACHE`` or ``~/.cache/kp_lightning``; tokenized datasets go under ``tokenized/``."""
    return os.environ.get("KP_LIGHTNING_CACHE", str(Path.home() / ".cache" / "kp_lightning"))


def file_fingerprint(path: str | Path) -> str:
    """Cheap identity of a local file for cache keys: resolved path, size and modification time."""
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def source_identity(source: str | list[str]) -> str | list[str]:
    """Cache identity of a data source: fingerprints of local files, or the hub name itself."""
    files = [source] if isinstance(source, str) else list(source)
    if all(Path(f).is_file() for f in files):
        return [file_fingerprint(f) for f in files]
    return source


class EncoderDataModule(pl.LightningDataModule):
    """Base class: subclasses build raw splits and tokenize them; this class caches, loads and serves them.

    Args:
        tokenizer: Hub name or local directory of the tokenizer (``train.py`` links it to the model path).
        max_length: Maximum tokens per sequence (longer inputs are truncated or windowed).
        batch_size: Training batch size per device.
        eval_batch_size: Evaluation batch size per device (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        cache_dir: Where tokenized datasets are cached; ``"auto"`` means ``$KP_LIGHTNING_CACHE`` or
            ``~/.cache/kp_lightning``, ``None`` disables caching (tokenize in memory on every process).
        seed: Seed for anything random in data preparation (splits, evaluation masks) and of the training
            shuffle order (seed + epoch, so resumed runs see the same batches).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = "auto",
        seed: int = 42,
    ):
        super().__init__()
        if tokenizer is None:
            raise ConfigError("No tokenizer given: set data.init_args.tokenizer (train.py links it to the model path).")
        if max_length < 8:
            raise ConfigError(f"max_length must be at least 8, got {max_length}.")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError("batch_size and eval_batch_size must be positive.")
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.cache_dir = default_cache_dir() if cache_dir == "auto" else cache_dir
        self.seed = seed
        self.tokenizer = load_pretrained(transformers.AutoTokenizer, tokenizer_source(tokenizer), "tokenizer")
        self.datasets: datasets.DatasetDict | None = None

    # ---- what subclasses provide -------------------------------------------------------------------
    @property
    def task_spec(self) -> TaskSpec:
        raise NotImplementedError

    def build_datasets(self) -> datasets.DatasetDict:
        """Load the raw data and tokenize it: splits ``train`` and one per ``task_spec.eval_splits``."""
        raise NotImplementedError

    def cache_identity(self) -> dict:
        """Everything that determines the tokenized data (sources, processing options), JSON-serialisable."""
        raise NotImplementedError

    def train_collator(self):
        return transformers.DataCollatorWithPadding(self.tokenizer)

    def eval_collator(self):
        return self.train_collator()

    def eval_split_collator(self, split: str):
        """Collator of one evaluation split (its dataset key, e.g. ``validation_sts``); default ``eval_collator()``."""
        return self.eval_collator()

    # ---- caching --------------------------------------------------------------------------------
    def _cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        vocab = hashlib.sha256(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()).hexdigest()
        identity = {
            "format": CACHE_FORMAT,
            "class": type(self).__name__,
            "tokenizer": [type(self.tokenizer).__name__, vocab, self.tokenizer.model_max_length],
            "max_length": self.max_length,
            "seed": self.seed,
            **self.cache_identity(),
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return Path(self.cache_dir) / "tokenized" / f"{self.task_spec.name}-{key}"

    def prepare_data(self) -> None:
        """Download and tokenize once per node into the cache (runs on one process)."""
        path = self._cache_path()
        if path is None or path.is_dir():
            return
        built = self.build_datasets()
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
        try:
            built.save_to_disk(str(staging))
            staging.rename(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if not path.is_dir():  # another process may have finished the same entry first
                raise

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenized splits on every process (from the cache when enabled)."""
        if self.datasets is not None:
            return
        path = self._cache_path()
        if path is None:
            self.datasets = self.build_datasets()
            return
        if not path.is_dir():
            self.prepare_data()
        self.datasets = datasets.load_from_disk(str(path))

    # ---- loaders --------------------------------------------------------------------------------
    def _split(self, name: str) -> datasets.Dataset:
        if self.datasets is None:
            self.setup()
        if name not in self.datasets:
            raise ConfigError(
                f"The {self.task_spec.name} data has no {name!r} split (it has {list(self.datasets)}); "
                "check the data files you configured."
            )
        return self.datasets[name]

    def _is_distributed(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.world_size > 1

    def train_dataloader(self) -> DataLoader:
        dataset = self._split("train")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed),
            collate_fn=self.train_collator(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._split(split)
        sampler = None
        if self._is_distributed():
            # Every example exactly once across ranks, so metrics match a single-process run.
            trainer = self.trainer
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.eval_split_collator(split),
            num_workers=self.num_workers,
        )

    def _eval_split_keys(self) -> list[str]:
        spec = self.task_spec
        if spec.eval_splits == ["validation"]:
            return ["validation"]
        return [f"validation_{name}" for name in spec.eval_splits]

    def val_dataloader(self):
        loaders = [self._eval_loader(split) for split in self._eval_split_keys()]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self):
        """The labelled evaluation splits (GLUE and SQuAD test labels are not public)."""
        return self.val_dataloader()
