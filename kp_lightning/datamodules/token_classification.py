"""Token classification (NER) data module: CoNLL-style files, JSON/Parquet/CSV tables, or a hub dataset."""

from __future__ import annotations

import datasets
import transformers

from kp_lightning.data.entity_metrics import ENTITY_METRICS
from kp_lightning.data.tables import check_data_sources, train_validation_sources
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.data.token_classification import (
    begin_to_inside,
    load_tagged_splits,
    needs_prefix_space,
    tokenize_and_align,
)
from kp_lightning.datamodules.base import EncoderDataModule, file_fingerprint
from kp_lightning.errors import ConfigError
from kp_lightning.modules.model_loading import tokenizer_source
from kp_lightning.pretrained_loading import load_pretrained


class TokenClassificationDataModule(EncoderDataModule):
    """Named-entity recognition (or any word tagging) with entity-level metrics.

    Sources: ``train_file`` and ``validation_file`` (CoNLL-style text: ``token … label`` per line, the label in
    the last column, a blank line between sentences, ``-DOCSTART-`` lines skipped; or ``.json``/``.jsonl``/
    ``.parquet``/``.csv`` with a token-list and a tag-list column), or ``hub_name`` (its ``train`` and
    ``validation`` splits). Tags may be strings or ids; ``ClassLabel`` names are used when the data has them.

    Labels go on the first sub-token of each word (the others get ``-100``); ``label_all_tokens`` also labels
    the other sub-tokens of training words (``B-X`` becomes ``I-X``); evaluation always scores one label per
    word. Words cut off by ``max_length`` are not scored. Metrics: entity-level ``f1`` (main), ``precision``,
    ``recall`` (seqeval semantics, IOB1/IOB2/IOBES) and per-word ``accuracy``. Needs a fast tokenizer; a
    byte-level BPE tokenizer (RoBERTa) is loaded with ``add_prefix_space=True`` for the pre-split words.

    Args:
        train_file: Training file.
        validation_file: Evaluation file.
        hub_name: Hub dataset instead of files (e.g. ``eriktks/conll2003``).
        hub_config: Its configuration name, if it has several.
        label_names: Tags in id order (must match a fine-tuned model's head); default the data's ``ClassLabel``
            names, else the training tags sorted.
        tokens_column: Token-list column of tables and hub data.
        tags_column: Tag-list column of tables and hub data.
        label_all_tokens: Label every sub-token of a training word, not only the first.
        metrics: Metric names, main one first (default ``f1``, ``precision``, ``recall``, ``accuracy``).
        task_name: Name used in logs, caches and exports.
        **kwargs: Shared options of ``EncoderDataModule`` (tokenizer, max_length, batch sizes, cache...).
    """

    def __init__(
        self,
        train_file: str | None = None,
        validation_file: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        label_names: list[str] | None = None,
        tokens_column: str = "tokens",
        tags_column: str = "ner_tags",
        label_all_tokens: bool = False,
        metrics: list[str] | None = None,
        task_name: str = "ner",
        **kwargs,
    ):
        files = check_data_sources(
            train_file, validation_file, hub_name, "token classification", "CoNLL, JSON, Parquet or CSV"
        )
        unknown = [m for m in metrics or [] if m not in ENTITY_METRICS]
        if unknown:
            raise ConfigError(f"unknown token classification metric(s) {unknown}", fix=f"use {list(ENTITY_METRICS)}")
        super().__init__(**kwargs)
        if not self.tokenizer.is_fast:
            raise ConfigError(
                f"tokenizer {self.tokenizer_name} is not a fast tokenizer; token classification needs the word of "
                "each sub-token",
                fix="use a model whose tokenizer has a tokenizer.json (every BERT, RoBERTa and DistilBERT on the hub)",
            )
        if needs_prefix_space(self.tokenizer):
            source = tokenizer_source(self.tokenizer_name)
            self.tokenizer = load_pretrained(transformers.AutoTokenizer, source, "tokenizer", add_prefix_space=True)
        self.data_files = files
        self.hub_name, self.hub_config = hub_name, hub_config
        self.columns = (tokens_column, tags_column)
        self.label_all_tokens = label_all_tokens
        self._raw, names = load_tagged_splits(
            train_validation_sources(self.data_files, self.hub_name, self.hub_config),
            tokens_column,
            tags_column,
            label_names,
        )
        self._spec = TaskSpec(
            name=task_name,
            kind="token_classification",
            num_labels=len(names),
            label_names=names,
            metrics=list(metrics or ENTITY_METRICS),
        )
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def cache_identity(self) -> dict:
        source = {k: file_fingerprint(v) for k, v in self.data_files.items()} or [self.hub_name, self.hub_config]
        return {
            "source": source,
            "columns": list(self.columns),
            "labels": self._spec.label_names,
            "label_all_tokens": self.label_all_tokens,
            "add_prefix_space": getattr(self.tokenizer, "add_prefix_space", None),
        }

    def build_datasets(self) -> datasets.DatasetDict:
        inside = begin_to_inside(self._spec.label_names) if self.label_all_tokens else None
        return datasets.DatasetDict(
            {
                split: dataset.map(
                    tokenize_and_align,
                    batched=True,
                    remove_columns=dataset.column_names,
                    fn_kwargs={
                        "tokenizer": self.tokenizer,
                        "max_length": self.max_length,
                        "inside": inside if split == "train" else None,
                    },
                    desc=f"Tokenizing {self._spec.name} {split}",
                )
                for split, dataset in self._raw.items()
            }
        )

    def train_collator(self):
        return transformers.DataCollatorForTokenClassification(self.tokenizer)
