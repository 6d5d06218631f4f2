"""Sentence(-pair) classification and regression data modules: GLUE and your own CSV/JSON files."""

from __future__ import annotations

from pathlib import Path

import datasets

from kp_lightning.data.glue_tasks import glue_task
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.data.text_classification import load_glue_splits, load_labelled_files, tokenize_texts
from kp_lightning.datamodules.base import EncoderDataModule, file_fingerprint
from kp_lightning.errors import ConfigError, MissingFileError


def _tokenize_splits(module: EncoderDataModule, raw: datasets.DatasetDict, text_columns: list[str]):
    name = module.task_spec.name
    return datasets.DatasetDict(
        {
            split: dataset.map(
                tokenize_texts,
                batched=True,
                remove_columns=dataset.column_names,
                fn_kwargs={
                    "tokenizer": module.tokenizer,
                    "text_columns": text_columns,
                    "max_length": module.max_length,
                },
                desc=f"Tokenizing {name} {split}",
            )
            for split, dataset in raw.items()
        }
    )


class GlueDataModule(EncoderDataModule):
    """One GLUE task from the hub (``nyu-mll/glue``), a classic ``glue_data`` folder, or CSV/JSON files.

    Args:
        task: GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte or wnli.
        data_dir: Classic layout root (``<data_dir>/SST-2/{train,dev}.tsv``) or the task folder itself.
        train_file: CSV/JSON training file with the hub's column names (instead of ``data_dir``/hub).
        validation_file: CSV/JSON evaluation file, same columns.
        hub_name: Hub dataset used when no local source is given.
        skip_malformed_rows: Drop TSV rows with a wrong field count instead of failing.
        **kwargs: Shared options of ``EncoderDataModule`` (tokenizer, max_length, batch sizes, cache...).
    """

    def __init__(
        self,
        task: str,
        data_dir: str | None = None,
        train_file: str | None = None,
        validation_file: str | None = None,
        hub_name: str = "nyu-mll/glue",
        skip_malformed_rows: bool = False,
        **kwargs,
    ):
        self.glue = glue_task(task)
        if data_dir is not None and not Path(data_dir).is_dir():
            raise MissingFileError(
                f"GLUE data_dir {data_dir} does not exist",
                fix="point data_dir at the folder holding the task folders (SST-2/, MRPC/, ...), "
                "or leave it unset to load the hub's GLUE",
            )
        if (train_file or validation_file) and len(self.glue.eval_splits) > 1:
            raise ConfigError("MNLI has two evaluation splits; use data_dir or the hub instead of single files.")
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.data_files = {k: v for k, v in (("train", train_file), ("validation", validation_file)) if v}
        self.hub_name = hub_name
        self.skip_malformed_rows = skip_malformed_rows
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return self.glue.task_spec()

    def cache_identity(self) -> dict:
        if self.data_dir is not None:
            folder = Path(self.data_dir)
            folder = folder / self.glue.folder if (folder / self.glue.folder).is_dir() else folder
            files = sorted(file_fingerprint(p) for p in folder.glob("*.tsv"))
            return {"source": "glue_data", "files": files, "skip_malformed_rows": self.skip_malformed_rows}
        if self.data_files:
            return {"source": "files", "files": {k: file_fingerprint(v) for k, v in self.data_files.items()}}
        return {"source": "hub", "name": self.hub_name, "task": self.glue.name}

    def build_datasets(self) -> datasets.DatasetDict:
        raw = load_glue_splits(
            self.glue, self.data_dir, self.data_files or None, self.hub_name, self.skip_malformed_rows
        )
        return _tokenize_splits(self, raw, list(self.glue.text_columns))


class TextClassificationDataModule(EncoderDataModule):
    """Your own classification or regression data from CSV, TSV or JSON(-lines) files with named columns.

    Args:
        train_file: Training file.
        validation_file: Evaluation file.
        text_columns: One or two text column names (two make a sentence pair).
        label_column: Label column name.
        label_names: Class names in id order; labels may be these names or ids. Empty means regression.
        metrics: Metric names, main one first (default accuracy, or pearson/spearman for regression).
        task_name: Name used in logs, caches and exports.
        **kwargs: Shared options of ``EncoderDataModule``.
    """

    def __init__(
        self,
        train_file: str,
        validation_file: str,
        text_columns: list[str],
        label_column: str = "label",
        label_names: list[str] | None = None,
        metrics: list[str] | None = None,
        task_name: str = "classification",
        **kwargs,
    ):
        if not 1 <= len(text_columns) <= 2:
            raise ConfigError(f"text_columns must name one or two columns, got {text_columns}.")
        label_names = list(label_names or [])
        regression = not label_names
        self._spec = TaskSpec(
            name=task_name,
            kind="regression" if regression else "classification",
            num_labels=1 if regression else len(label_names),
            label_names=label_names,
            metrics=list(metrics or (["pearson", "spearman"] if regression else ["accuracy"])),
        )
        self.data_files = {"train": train_file, "validation": validation_file}
        for split, file in self.data_files.items():
            if not Path(file).is_file():
                raise MissingFileError(f"{split} file not found: {file}")
        super().__init__(**kwargs)
        self.text_columns = list(text_columns)
        self.label_column = label_column
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def cache_identity(self) -> dict:
        return {
            "files": {k: file_fingerprint(v) for k, v in self.data_files.items()},
            "columns": [self.text_columns, self.label_column, self._spec.label_names],
        }

    def build_datasets(self) -> datasets.DatasetDict:
        raw = load_labelled_files(self.data_files, self.text_columns, self.label_column, self._spec.label_names)
        return _tokenize_splits(self, raw, self.text_columns)
