"""Multiple-choice data module (SWAG-style CSV/JSON/Parquet files, or a hub dataset)."""

from __future__ import annotations

import datasets

from kp_lightning.data.multiple_choice import MultipleChoiceCollator, load_choice_splits, tokenize_choices
from kp_lightning.data.tables import check_data_sources, train_validation_sources
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.datamodules.base import EncoderDataModule, file_fingerprint

SWAG_ENDINGS = ["ending0", "ending1", "ending2", "ending3"]


class MultipleChoiceDataModule(EncoderDataModule):
    """Pick the right ending: each example is a context and N endings, tokenized as N pairs.

    Batches are ``[batch, choices, seq]`` (the model flattens them to ``batch·choices`` sequences); the metric is
    ``accuracy``. The defaults read SWAG (``sent1`` context, ``sent2`` question, ``ending0``-``ending3``,
    ``label``).

    Args:
        train_file: Training file (``.csv``, ``.json``, ``.jsonl`` or ``.parquet``).
        validation_file: Evaluation file.
        hub_name: Hub dataset instead of files (its ``train`` and ``validation`` splits), e.g. ``allenai/swag``.
        hub_config: Its configuration name (SWAG: ``regular``).
        context_column: The context (first text of every pair).
        question_column: Text put before each ending (SWAG's ``sent2``); null for none.
        ending_columns: One column per ending.
        choices_column: A column holding the list of endings instead (then ``ending_columns`` is not used).
        label_column: Index of the right ending.
        task_name: Name used in logs, caches and exports.
        **kwargs: Shared options of ``EncoderDataModule`` (tokenizer, max_length, batch sizes, cache...).
    """

    def __init__(
        self,
        train_file: str | None = None,
        validation_file: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        context_column: str = "sent1",
        question_column: str | None = "sent2",
        ending_columns: list[str] | None = None,
        choices_column: str | None = None,
        label_column: str = "label",
        task_name: str = "swag",
        **kwargs,
    ):
        files = check_data_sources(train_file, validation_file, hub_name, "multiple choice", "CSV, JSON or Parquet")
        super().__init__(**kwargs)
        self.data_files = files
        self.hub_name, self.hub_config = hub_name, hub_config
        self.columns = {
            "context_column": context_column,
            "question_column": question_column,
            "ending_columns": list(ending_columns or SWAG_ENDINGS),
            "choices_column": choices_column,
            "label_column": label_column,
        }
        self._raw = load_choice_splits(
            train_validation_sources(self.data_files, self.hub_name, self.hub_config), **self.columns
        )
        self._spec = TaskSpec(
            name=task_name,
            kind="multiple_choice",
            num_labels=len(self._raw["train"][0]["endings"]),
            metrics=["accuracy"],
        )
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def cache_identity(self) -> dict:
        source = {k: file_fingerprint(v) for k, v in self.data_files.items()} or [self.hub_name, self.hub_config]
        return {"source": source, "columns": self.columns}

    def build_datasets(self) -> datasets.DatasetDict:
        return datasets.DatasetDict(
            {
                split: dataset.map(
                    tokenize_choices,
                    batched=True,
                    remove_columns=dataset.column_names,
                    fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length},
                    desc=f"Tokenizing {self._spec.name} {split}",
                )
                for split, dataset in self._raw.items()
            }
        )

    def train_collator(self):
        return MultipleChoiceCollator(self.tokenizer)
