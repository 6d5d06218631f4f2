"""Strict reader for the classic ``glue_data/<TASK>/*.tsv`` files (no header in CoLA, BOM in MRPC, bare quotes)."""

from __future__ import annotations

from pathlib import Path

from kp_lightning.data.glue_tasks import GlueTask
from kp_lightning.errors import KPError, MissingFileError


class DataFormatError(KPError, ValueError):
    """A data file does not have the expected layout; the message names the file, line and fix."""


def parse_label(raw: str, label_names: tuple[str, ...] | list[str], where: str) -> int | float:
    """Turn a raw label into a class id (by name or by integer id) or, without label names, a float score."""
    raw = raw.strip()
    if not label_names:
        try:
            return float(raw)
        except ValueError:
            raise DataFormatError(f"{where}: regression label {raw!r} is not a number.") from None
    if raw in label_names:
        return list(label_names).index(raw)
    if raw.lstrip("-").isdigit() and 0 <= int(raw) < len(label_names):
        return int(raw)
    raise DataFormatError(
        f"{where}: label {raw!r} is not one of {list(label_names)} nor a class id in [0, {len(label_names) - 1}]."
    )


def read_glue_tsv(path: str | Path, task: GlueTask, skip_malformed_rows: bool = False) -> dict[str, list]:
    """Read one classic GLUE TSV file into hub-style columns (``task.text_columns`` + ``label``).

    Fields are split on tabs only, never unquoted (RTE/QNLI sentences may start with a bare ``"``).

    Args:
        path: The ``.tsv`` file.
        task: Which GLUE task the file belongs to (gives the column layout and the label set).
        skip_malformed_rows: Skip rows with the wrong number of fields instead of raising (QQP's
            train file has a few); the count of skipped rows is returned under ``"_skipped"``.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFormatError: Missing header columns, a row with the wrong field count, or an unknown label.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"GLUE file {path} not found; expected the classic layout <data_dir>/{task.folder}/"
            f"{{{', '.join(task.tsv_files.values())}}}."
        )
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.removesuffix("\r") for line in lines]
    if task.tsv_header:
        if not lines:
            raise DataFormatError(f"{path} is empty; expected a header row.")
        header = lines[0].split("\t")
        missing = [c for c in (*task.tsv_text_fields, task.tsv_label_field) if c not in header]
        if missing:
            raise DataFormatError(f"{path}: header has no column(s) {missing}; it has {header}. Is this {task.folder}?")
        text_idx = [header.index(c) for c in task.tsv_text_fields]
        label_idx = header.index(task.tsv_label_field)
        n_fields, first = len(header), 1
    else:
        text_idx, label_idx = list(task.tsv_text_fields), int(task.tsv_label_field)
        n_fields, first = len(lines[0].split("\t")) if lines else 0, 0
    columns: dict[str, list] = {name: [] for name in (*task.text_columns, "label")}
    skipped = 0
    for number, line in enumerate(lines[first:], start=first + 1):
        fields = line.split("\t")
        if len(fields) != n_fields:
            if skip_malformed_rows:
                skipped += 1
                continue
            raise DataFormatError(
                f"{path}, line {number}: expected {n_fields} tab-separated fields, found {len(fields)}",
                fix="fix the row, or set skip_malformed_rows: true (--data.init_args.skip_malformed_rows true) "
                "to drop such rows",
            )
        for name, idx in zip(task.text_columns, text_idx, strict=True):
            columns[name].append(fields[idx])
        columns["label"].append(parse_label(fields[label_idx], task.label_names, f"{path}, line {number}"))
    if not columns["label"]:
        raise DataFormatError(f"{path} has no data rows.")
    if skipped:
        columns["_skipped"] = [skipped]
    return columns
