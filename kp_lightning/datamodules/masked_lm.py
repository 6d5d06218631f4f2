"""Masked-language-modelling data module: text corpora grouped into blocks, 15 % masking (80/10/10)."""

from __future__ import annotations

import datasets

from kp_lightning.data.mlm import (
    MLMCollator,
    PaddingCollator,
    check_block_size,
    fixed_masking,
    load_text_corpus,
    tokenize_and_group,
)
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.datamodules.base import EncoderDataModule, source_identity
from kp_lightning.errors import ConfigError


class MLMDataModule(EncoderDataModule):
    """Text corpora for MLM training or sparse pre-training distillation.

    Sources are local text files (one paragraph per line, e.g. WikiText's ``wiki.*.tokens``) or a hub
    dataset. Lines are tokenized, concatenated and cut into blocks of ``max_length`` tokens. Training
    masks are drawn fresh every batch; evaluation masks are fixed per block (seeded by ``seed`` and
    the block index), so validation numbers do not depend on batch size or the number of processes.

    Args:
        train_source: Local text file(s) or hub dataset name for training.
        validation_source: Local text file(s) or hub dataset name for evaluation.
        hub_config: Hub dataset configuration (e.g. ``wikitext-2-raw-v1``).
        text_column: Text column of a hub dataset.
        mlm_probability: Fraction of tokens (or words) selected for prediction.
        whole_word_mask: Select whole words instead of single sub-word tokens.
        task_name: Name used in logs and caches.
        **kwargs: Shared options of ``EncoderDataModule`` (``max_length`` is the block size).
    """

    def __init__(
        self,
        train_source: str | list[str],
        validation_source: str | list[str],
        hub_config: str | None = None,
        text_column: str = "text",
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        task_name: str = "mlm",
        **kwargs,
    ):
        if not 0 < mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {mlm_probability}.")
        super().__init__(**kwargs)
        check_block_size(self.tokenizer, self.max_length)
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"Tokenizer {self.tokenizer_name} has no mask token, so it cannot be used for MLM.")
        self.sources = {"train": train_source, "validation": validation_source}
        self.hub_config = hub_config
        self.text_column = text_column
        self.mlm_probability = mlm_probability
        self.whole_word_mask = whole_word_mask
        self.task_name = task_name
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return TaskSpec(
            name=self.task_name, kind="masked_lm", num_labels=len(self.tokenizer), metrics=["accuracy", "perplexity"]
        )

    def cache_identity(self) -> dict:
        return {
            "sources": {split: source_identity(source) for split, source in self.sources.items()},
            "hub": [self.hub_config, self.text_column],
            "mlm_probability": self.mlm_probability,
            "whole_word_mask": self.whole_word_mask,
        }

    def build_datasets(self) -> datasets.DatasetDict:
        out = {}
        for split, source in self.sources.items():
            text = load_text_corpus(source, split=split, hub_config=self.hub_config, text_column=self.text_column)
            blocks = text.map(
                tokenize_and_group,
                batched=True,
                remove_columns=text.column_names,
                fn_kwargs={"tokenizer": self.tokenizer, "block_size": self.max_length},
                desc=f"Tokenizing and grouping {split}",
            )
            if split == "validation":
                blocks = blocks.map(
                    fixed_masking,
                    with_indices=True,
                    remove_columns=["special_tokens_mask", "word_ids"],
                    fn_kwargs={
                        "tokenizer": self.tokenizer,
                        "mlm_probability": self.mlm_probability,
                        "whole_word_mask": self.whole_word_mask,
                        "seed": self.seed,
                    },
                    desc="Masking evaluation blocks",
                )
            out[split] = blocks
        return datasets.DatasetDict(out)

    def train_collator(self):
        return MLMCollator(self.tokenizer, self.mlm_probability, self.whole_word_mask)

    def eval_collator(self):
        return PaddingCollator(self.tokenizer)
