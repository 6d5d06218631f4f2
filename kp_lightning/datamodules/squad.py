"""Extractive question answering data module (SQuAD v1.1 / v2.0) with sliding windows."""

from __future__ import annotations

from pathlib import Path

import datasets

from kp_lightning.data.squad import (
    DEFAULT_HUB_NAMES,
    SquadEvalCollator,
    SquadTrainCollator,
    load_squad,
    prepare_eval_windows,
    prepare_train_features,
    split_by_article,
)
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.datamodules.base import EncoderDataModule, source_identity
from kp_lightning.errors import ConfigError, MissingFileError


class SquadDataModule(EncoderDataModule):
    """SQuAD from the hub or local JSON/zip files; long contexts become overlapping windows.

    Training uses one feature per window (answer outside the window → the CLS position). Evaluation
    batches hold whole examples with all their windows, so start/end logits are post-processed into
    answer text per example and scored with EM/F1, also under DDP (every example on exactly one rank).

    Args:
        train_source: Local ``.json``/``.zip`` file or hub name (default: the hub's SQuAD for the version).
        validation_source: Same for evaluation.
        version_2: SQuAD v2.0 (unanswerable questions allowed).
        eval_fraction: Split ``validation_source`` by article into train and evaluation parts (for when
            only one file is available, e.g. the official dev set); ``train_source`` must then be unset.
        doc_stride: Tokens shared by consecutive windows.
        **kwargs: Shared options of ``EncoderDataModule`` (``max_length`` is the window length).
    """

    def __init__(
        self,
        train_source: str | None = None,
        validation_source: str | None = None,
        version_2: bool = False,
        eval_fraction: float | None = None,
        doc_stride: int = 128,
        max_length: int = 384,
        **kwargs,
    ):
        if eval_fraction is not None:
            if train_source is not None:
                raise ConfigError("eval_fraction splits validation_source into train/eval; do not set train_source.")
            if validation_source is None:
                raise ConfigError("eval_fraction needs validation_source: the file to split by article.")
            if not 0 < eval_fraction < 1:
                raise ConfigError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
        for source in (train_source, validation_source):
            if source and source.endswith((".json", ".zip")) and not Path(source).is_file():
                raise MissingFileError(f"SQuAD file not found: {source}")
        if doc_stride >= max_length:
            raise ConfigError(f"doc_stride ({doc_stride}) must be smaller than max_length ({max_length}).")
        super().__init__(max_length=max_length, **kwargs)
        if not self.tokenizer.is_fast:
            raise ConfigError(f"Tokenizer {self.tokenizer_name} is not a fast tokenizer; QA needs offset mappings.")
        hub = DEFAULT_HUB_NAMES[version_2]
        self.train_source = train_source or hub
        self.validation_source = validation_source or hub
        self.version_2 = version_2
        self.eval_fraction = eval_fraction
        self.doc_stride = doc_stride
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return TaskSpec(
            name="squad_v2" if self.version_2 else "squad",
            kind="question_answering",
            metrics=["f1", "exact_match"],
            allow_impossible=self.version_2,
        )

    def cache_identity(self) -> dict:
        return {
            "train": None if self.eval_fraction else source_identity(self.train_source),
            "validation": source_identity(self.validation_source),
            "eval_fraction": self.eval_fraction,
            "doc_stride": self.doc_stride,
        }

    def raw_splits(self) -> dict[str, datasets.Dataset]:
        """Untokenized train and validation examples (after the by-article split, if any)."""
        if self.eval_fraction is not None:
            full = load_squad(self.validation_source, "validation", self.version_2)
            train, validation = split_by_article(full, self.eval_fraction, seed=self.seed)
            return {"train": train, "validation": validation}
        return {
            "train": load_squad(self.train_source, "train", self.version_2),
            "validation": load_squad(self.validation_source, "validation", self.version_2),
        }

    def build_datasets(self) -> datasets.DatasetDict:
        raw = self.raw_splits()
        options = {"tokenizer": self.tokenizer, "max_length": self.max_length, "doc_stride": self.doc_stride}
        train = raw["train"].map(
            prepare_train_features,
            batched=True,
            remove_columns=raw["train"].column_names,
            fn_kwargs=options,
            desc="Windowing SQuAD train",
        )
        validation = raw["validation"].map(
            prepare_eval_windows, remove_columns=["title", "question"], fn_kwargs=options, desc="Windowing SQuAD eval"
        )
        return datasets.DatasetDict({"train": train, "validation": validation})

    def train_collator(self):
        return SquadTrainCollator(self.tokenizer)

    def eval_collator(self):
        return SquadEvalCollator(self.tokenizer)
