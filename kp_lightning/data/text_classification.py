"""Loading and tokenizing sentence(-pair) classification and regression data: GLUE or your own files."""

from __future__ import annotations

from pathlib import Path

import datasets

from kp_lightning.data.glue_files import DataFormatError, parse_label, read_glue_tsv
from kp_lightning.data.glue_tasks import GlueTask
from kp_lightning.errors import MissingFileError


def load_glue_splits(
    task: GlueTask,
    data_dir: str | None = None,
    data_files: dict[str, str] | None = None,
    hub_name: str = "nyu-mll/glue",
    skip_malformed_rows: bool = False,
) -> datasets.DatasetDict:
    """Load a GLUE task's train and evaluation splits with hub column names and integer/float labels.

    Sources, first match wins: ``data_dir`` in the classic ``glue_data`` layout (``<data_dir>/<TASK>/dev.tsv``
    or ``data_dir`` pointing at the task folder itself), ``data_files`` (CSV/JSON per split, hub column names),
    or the hub dataset ``hub_name``. A split whose local file is absent is left out (e.g. no train file).
    """
    if data_dir is not None:
        root = Path(data_dir)
        folder = root / task.folder if (root / task.folder).is_dir() else root
        if not folder.is_dir():
            raise MissingFileError(f"GLUE data_dir {root} does not exist.")
        splits = {}
        for split, name in task.tsv_files.items():
            if (folder / name).is_file():
                columns = read_glue_tsv(folder / name, task, skip_malformed_rows)
                columns.pop("_skipped", None)
                splits[split] = datasets.Dataset.from_dict(columns)
        if not splits:
            raise MissingFileError(
                f"No GLUE {task.folder} files in {folder}; expected {sorted(task.tsv_files.values())}."
            )
        return datasets.DatasetDict(splits)
    if data_files:
        return load_labelled_files(data_files, list(task.text_columns), "label", list(task.label_names))
    loaded = datasets.load_dataset(hub_name, task.name)
    return datasets.DatasetDict({split: loaded[split] for split in ("train", *task.eval_splits) if split in loaded})


def load_labelled_files(
    data_files: dict[str, str], text_columns: list[str], label_column: str, label_names: list[str]
) -> datasets.DatasetDict:
    """Load CSV or JSON(-lines) files per split; keep the text columns and a converted ``label`` column.

    Labels may be class names from ``label_names``, class ids, or (with no ``label_names``) numbers.
    """
    for split, file in data_files.items():
        if not Path(file).is_file():
            raise MissingFileError(f"Data file for split {split!r} not found: {file}")
    suffixes = {Path(f).suffix.lower() for f in data_files.values()}
    builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
    if len(suffixes) != 1 or next(iter(suffixes)) not in builder:
        raise DataFormatError(f"Data files must all be .csv, .tsv, .json or .jsonl, got {sorted(suffixes)}.")
    suffix = next(iter(suffixes))
    kwargs = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
    loaded = datasets.load_dataset(builder[suffix], data_files=dict(data_files), **kwargs)
    out = {}
    for split, dataset in loaded.items():
        missing = [c for c in (*text_columns, label_column) if c not in dataset.column_names]
        if missing:
            raise DataFormatError(
                f"{data_files[split]}: missing column(s) {missing}; the file has {dataset.column_names}. "
                "Set text_columns/label_column to the names your file uses."
            )
        labels = [
            parse_label(str(raw), label_names, f"{data_files[split]}, row {row + 1}")
            for row, raw in enumerate(dataset[label_column])
        ]
        texts = {column: [str(t) for t in dataset[column]] for column in text_columns}
        out[split] = datasets.Dataset.from_dict({**texts, "label": labels})
    return datasets.DatasetDict(out)


def tokenize_texts(examples: dict[str, list], tokenizer, text_columns: list[str], max_length: int) -> dict:
    """Batched ``Dataset.map`` function: tokenize one text or a text pair, truncated, unpadded."""
    texts = [examples[column] for column in text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    encoded["labels"] = examples["label"]
    return dict(encoded)
