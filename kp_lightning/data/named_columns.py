"""Header-first table files (TSV, CSV, JSON, JSON lines, Parquet) read into named columns, in memory."""

from __future__ import annotations

import csv
from pathlib import Path

from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.tables import read_table
from kp_lightning.errors import MissingFileError

NAMED_COLUMN_SUFFIXES = (".tsv", ".csv", ".json", ".jsonl", ".parquet")


def has_named_columns(path: str | Path) -> bool:
    """Whether :func:`read_named_columns` reads files with the suffix of ``path``."""
    return Path(path).suffix.lower() in NAMED_COLUMN_SUFFIXES


def read_named_columns(path: str | Path) -> dict[str, list]:
    """``{column: values}`` of a table file whose first row (TSV, CSV) or keys (JSON, Parquet) name the columns.

    TSV fields are split on tabs only and never unquoted, like the GLUE files (a sentence may start with a bare
    ``"``); CSV uses standard CSV quoting; both keep every value a string. JSON and Parquet values keep their
    types. A UTF-8 byte-order mark is ignored.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: an unknown suffix, an empty TSV/CSV file, a header naming a column twice, or a row
            with the wrong field count (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in NAMED_COLUMN_SUFFIXES:
        raise DataFormatError(f"{path}: unknown table format", fix=f"use one of {list(NAMED_COLUMN_SUFFIXES)}")
    if suffix not in (".tsv", ".csv"):
        table = read_table(path)
        return {name: table[name] for name in table.column_names}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if suffix == ".tsv":
            lines = handle.read().split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            rows = [line.removesuffix("\r").split("\t") for line in lines]
        else:
            rows = list(csv.reader(handle))
    if not rows:
        raise DataFormatError(f"{path} is empty", fix="the first row must name the columns")
    header = rows[0]
    if len(set(header)) != len(header):
        raise DataFormatError(f"{path}: the header {header} names a column twice", fix="give each column its own name")
    columns: dict[str, list] = {name: [] for name in header}
    for number, fields in enumerate(rows[1:], start=2):
        if len(fields) != len(header):
            raise DataFormatError(
                f"{path}, line {number}: expected {len(header)} fields like the header, found {len(fields)}",
                fix="fix the row (TSV fields are split on every tab; quotes are kept as text)",
            )
        for name, value in zip(header, fields, strict=True):
            columns[name].append(value)
    return columns


def require_columns(columns: dict[str, list], wanted: list[str], path: str | Path, option: str) -> None:
    """Check that ``columns`` (from :func:`read_named_columns`) has every ``wanted`` name.

    Raises:
        DataFormatError: a missing column; the message names the ones the file has and the ``option`` to set.
    """
    missing = [name for name in wanted if name not in columns]
    if missing:
        raise DataFormatError(
            f"{path}: no column(s) {missing}; the file has {list(columns)}",
            fix=f"set {option} to the column names your file uses",
        )
