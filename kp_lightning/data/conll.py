"""Reader for CoNLL-style token classification files: ``token … label`` per line, a blank line between sentences."""

from __future__ import annotations

from pathlib import Path

from kp_lightning.data.entity_metrics import is_valid_tag
from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.errors import MissingFileError

DOCSTART = "-DOCSTART-"
TAG_FIX = "use IOB1, IOB2 or IOBES tags: O, or B-/I-/E-/S- followed by the entity type (B-PER, I-LOC, ...)"


def check_tag(tag: str, where: str) -> None:
    """Refuse a tag the entity metrics cannot read (not ``O`` and not ``B-``/``I-``/``E-``/``S-`` + type).

    Raises:
        DataFormatError: naming ``where`` (file and line, or the option that gave the tag).
    """
    if not is_valid_tag(tag):
        raise DataFormatError(f"{where}: {tag!r} is not an entity tag", fix=TAG_FIX)


def unknown_tag_error(tag: str, where: str, label_names: list[str], source: str) -> DataFormatError:
    """The error for a tag outside the label set, naming where it is and where the label set came from."""
    return DataFormatError(
        f"{where}: label {tag!r} is not in the label set {label_names} ({source})",
        fix="add it to label_names (in the order the model's head uses), or correct the label",
    )


def read_conll(path: str | Path, label_names: list[str] | None = None, label_source: str = "") -> dict[str, list]:
    """Read one CoNLL-style file into ``{"tokens": [[str]], "tags": [[str]]}``, one entry per sentence.

    Each non-blank line is whitespace-separated fields: the token first, the label last (columns between,
    e.g. POS and chunk tags, are ignored). Blank lines separate sentences; ``-DOCSTART-`` lines are skipped.

    Args:
        path: The file (UTF-8; a byte-order mark is accepted).
        label_names: If given, every label must be one of them.
        label_source: Where ``label_names`` came from, for the error message.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: a line with fewer than two fields, a label that is not an entity tag or not in
            ``label_names``, or no sentence at all; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"token classification file not found: {path}")
    known = set(label_names) if label_names is not None else None
    sentences: dict[str, list] = {"tokens": [], "tags": []}
    tokens: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0] == DOCSTART:
                if tokens:
                    sentences["tokens"].append(tokens)
                    sentences["tags"].append(tags)
                tokens, tags = [], []
                continue
            where = f"{path}, line {number}"
            if len(fields) < 2:
                raise DataFormatError(
                    f"{where}: expected a token and a label separated by whitespace, found {line.strip()!r}",
                    fix="write one 'token ... label' pair per line (label in the last column) and a blank line "
                    "between sentences",
                )
            tag = fields[-1]
            if known is not None and tag not in known:
                raise unknown_tag_error(tag, where, list(label_names), label_source)
            check_tag(tag, where)
            tokens.append(fields[0])
            tags.append(tag)
    if tokens:
        sentences["tokens"].append(tokens)
        sentences["tags"].append(tags)
    if not sentences["tokens"]:
        raise DataFormatError(f"{path} holds no sentence", fix="check that this is the CoNLL-style file you meant")
    return sentences
