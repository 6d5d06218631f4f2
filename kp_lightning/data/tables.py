"""Local table files (JSON, JSON lines, Parquet, CSV) read with ``datasets``, in memory."""

from __future__ import annotations

import tempfile
from pathlib import Path

import datasets

from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.errors import ConfigError, MissingFileError

TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def is_table_file(path: str | Path) -> bool:
    """Whether ``path`` has a suffix :func:`read_table` reads."""
    return Path(path).suffix.lower() in TABLE_BUILDERS


def read_table(path: str | Path) -> datasets.Dataset:
    """A JSON(-lines), Parquet or CSV file as a ``datasets.Dataset`` kept in memory (no cache left on disk).

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: another suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}")
    if not is_table_file(path):
        raise DataFormatError(f"{path}: unknown table format", fix=f"use one of {sorted(TABLE_BUILDERS)}")
    with tempfile.TemporaryDirectory() as cache:
        loaded = datasets.load_dataset(
            TABLE_BUILDERS[path.suffix.lower()], data_files={"data": str(path)}, cache_dir=cache, keep_in_memory=True
        )
    return loaded["data"]


def train_validation_sources(data_files: dict, hub_name: str | None, hub_config: str | None = None) -> dict:
    """The ``train`` and ``validation`` sources of a data module: its local files, or the hub dataset's splits.

    Raises:
        ConfigError: the hub dataset lacks one of the two splits.
    """
    if hub_name is None:
        return dict(data_files)
    loaded = datasets.load_dataset(hub_name, hub_config)
    missing = [split for split in ("train", "validation") if split not in loaded]
    if missing:
        raise ConfigError(f"hub dataset {hub_name} has no {missing} split(s); it has {list(loaded)}")
    return {"train": loaded["train"], "validation": loaded["validation"]}


def check_data_sources(
    train_file: str | None, validation_file: str | None, hub_name: str | None, task: str, formats: str
) -> dict:
    """The ``{split: file}`` of a data module that takes both files or a hub name, checked before any work.

    Raises:
        ConfigError: neither both files nor a hub name, or both kinds given.
        MissingFileError: a given file does not exist.
    """
    files = {k: v for k, v in (("train", train_file), ("validation", validation_file)) if v}
    if hub_name is None and len(files) != 2:
        raise ConfigError(
            f"{task} needs train_file and validation_file, or hub_name",
            fix=f"set --data.init_args.train_file and --data.init_args.validation_file ({formats}), "
            "or --data.init_args.hub_name",
        )
    if hub_name is not None and files:
        raise ConfigError("give either hub_name or train_file/validation_file, not both")
    for split, file in files.items():
        if not Path(file).is_file():
            raise MissingFileError(f"{split} file not found: {file}")
    return files
