"""Unlabeled sentences for pruning and distilling sentence-embedding models: sources, cleaning, sampling.

A source is ``"glue:<TASK>"`` (the train file of a task folder under ``glue_dir``, every text column;
``"glue:<TASK>:<split>"`` for another split), ``"wikitext:<path>"`` or a plain file path: ``.txt``/``.text``
(one sentence per line), ``.tokens`` (WikiText), or ``.tsv``/``.csv``/``.json``/``.jsonl``/``.parquet`` with
named text columns.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from kp_lightning.data.glue_files import DataFormatError, read_glue_tsv
from kp_lightning.data.glue_tasks import GlueTask, glue_task
from kp_lightning.data.named_columns import NAMED_COLUMN_SUFFIXES, read_named_columns, require_columns
from kp_lightning.errors import ConfigError, MissingFileError

DEFAULT_MIN_CHARS = 10
DEFAULT_TEXT_COLUMNS = ("text",)
TEXT_SUFFIXES = (".txt", ".text")
WIKITEXT_SUFFIXES = (".tokens",)
_HEADING = re.compile(r"(= )+\S.*?( =)+")
_FORMS = (
    "'glue:<TASK>' (e.g. glue:SST-2, read from glue_dir), 'glue:<TASK>:<split>', 'wikitext:<path>', or a path "
    f"ending in {list(TEXT_SUFFIXES + WIKITEXT_SUFFIXES + NAMED_COLUMN_SUFFIXES)}"
)


@dataclass(frozen=True)
class SentenceSource:
    """One parsed sentence source.

    Attributes:
        spec: The source as the user wrote it.
        kind: ``"glue"``, ``"wikitext"``, ``"text"`` (one sentence per line) or ``"table"`` (named columns).
        path: The file read.
        glue: The GLUE task of a ``glue:`` source.
    """

    spec: str
    kind: str
    path: Path
    glue: GlueTask | None = None


def parse_sentence_source(spec: str, glue_dir: str | Path | None) -> SentenceSource:
    """Parse one source string (no file is opened).

    Raises:
        ConfigError: an unknown GLUE task or split, a ``glue:`` source without ``glue_dir``, or an unknown suffix.
    """
    if spec.startswith("glue:"):
        name, _, split = spec.removeprefix("glue:").partition(":")
        task = glue_task(name)
        split = split or "train"
        if split not in task.tsv_files:
            raise ConfigError(
                f"sentence source {spec!r}: GLUE {task.folder} has no split {split!r}",
                fix=f"use one of {list(task.tsv_files)}",
            )
        if glue_dir is None:
            raise ConfigError(f"sentence source {spec!r} needs glue_dir", fix="set glue_dir to the glue_data folder")
        return SentenceSource(spec, "glue", Path(glue_dir) / task.folder / task.tsv_files[split], task)
    if spec.startswith("wikitext:"):
        return SentenceSource(spec, "wikitext", Path(spec.removeprefix("wikitext:")))
    suffix = Path(spec).suffix.lower()
    kinds = {**dict.fromkeys(TEXT_SUFFIXES, "text"), **dict.fromkeys(WIKITEXT_SUFFIXES, "wikitext")}
    kinds.update(dict.fromkeys(NAMED_COLUMN_SUFFIXES, "table"))
    if suffix not in kinds:
        raise ConfigError(f"unknown sentence source {spec!r}", fix=f"use {_FORMS}")
    return SentenceSource(spec, kinds[suffix], Path(spec))


def check_sentence_sources(specs: list[str], glue_dir: str | Path | None) -> list[SentenceSource]:
    """Parse every source and check that its file exists, before any work.

    Raises:
        ConfigError: no source, or a source :func:`parse_sentence_source` refuses.
        MissingFileError: a source's file does not exist.
    """
    if not specs:
        raise ConfigError("no sentence source given", fix=f"set sentences to a list of sources: {_FORMS}")
    sources = [parse_sentence_source(spec, glue_dir) for spec in specs]
    for source in sources:
        if source.path.is_file():
            continue
        if source.kind == "glue":
            raise MissingFileError(
                f"sentence source {source.spec!r}: {source.path} not found",
                fix=f"set glue_dir to the folder holding {source.glue.folder}/ (now {glue_dir}), "
                "or remove the source from sentences",
            )
        raise MissingFileError(
            f"sentence source {source.spec!r}: file {source.path} not found", fix="correct the path in sentences"
        )
    return sources


def is_wikitext_heading(line: str) -> bool:
    """Whether a stripped WikiText line is a heading such as ``= Title =`` or ``= = Section = =``."""
    return _HEADING.fullmatch(line) is not None


def read_source_texts(
    source: SentenceSource, text_columns: list[str] | None = None, skip_malformed_rows: bool = False
) -> list[str]:
    """The raw texts of one source, in file order (table and GLUE rows give their text columns in turn).

    Args:
        source: A parsed source.
        text_columns: Text columns of a table source (default ``["text"]``); GLUE sources use the task's.
        skip_malformed_rows: Skip GLUE rows with a wrong field count instead of failing.

    Raises:
        DataFormatError: a missing column (the message names the file's columns) or a malformed row.
    """
    if source.kind == "glue":
        columns = read_glue_tsv(source.path, source.glue, skip_malformed_rows)
        names = list(source.glue.text_columns)
    elif source.kind == "table":
        columns = read_named_columns(source.path)
        names = list(text_columns or DEFAULT_TEXT_COLUMNS)
        require_columns(columns, names, source.path, "text_columns")
    else:
        with source.path.open(encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
        if source.kind == "wikitext":
            lines = [line for line in lines if not is_wikitext_heading(line)]
        return lines
    return [str(value) for row in zip(*(columns[n] for n in names), strict=True) for value in row if value is not None]


def clean_sentences(texts: list[str], min_chars: int = DEFAULT_MIN_CHARS) -> list[str]:
    """Strip each text and drop those shorter than ``min_chars`` characters (and empty ones)."""
    stripped = (text.strip() for text in texts)
    return [text for text in stripped if text and len(text) >= min_chars]


def deduplicate(texts: list[str]) -> list[str]:
    """The distinct texts, each at its first occurrence, in order."""
    return list(dict.fromkeys(texts))


def sample_sentences(sentences: list[str], max_sentences: int | None, seed: int) -> list[str]:
    """A seeded random subset of ``max_sentences`` sentences, kept in their original order (None: all)."""
    if max_sentences is None or max_sentences >= len(sentences):
        return list(sentences)
    chosen = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
    return [sentences[i] for i in chosen]


def load_sentences(
    specs: list[str],
    glue_dir: str | Path | None = None,
    text_columns: list[str] | None = None,
    min_chars: int = DEFAULT_MIN_CHARS,
    max_sentences: int | None = None,
    seed: int = 42,
    skip_malformed_rows: bool = False,
) -> list[str]:
    """Read, clean, deduplicate (first occurrence order, across sources) and sample the sentences of all sources.

    Args:
        specs: Source strings (see the module docstring).
        glue_dir: Folder holding the GLUE task folders, for ``glue:`` sources.
        text_columns: Text columns of table sources (default ``["text"]``).
        min_chars: Shortest sentence kept, in characters after stripping.
        max_sentences: Keep a seeded random subset of this many sentences (None: all).
        seed: Seed of that subset.
        skip_malformed_rows: Skip GLUE rows with a wrong field count instead of failing.

    Raises:
        ConfigError: a bad source string.
        MissingFileError: a missing file.
        DataFormatError: a missing column, a malformed row, or a source with no sentence (empty file, or every
            line shorter than ``min_chars``).
    """
    if min_chars < 0 or (max_sentences is not None and max_sentences < 1):
        raise ConfigError(f"min_chars must be >= 0 and max_sentences >= 1 or null, got {min_chars}, {max_sentences}")
    sentences: list[str] = []
    for source in check_sentence_sources(specs, glue_dir):
        raw = read_source_texts(source, text_columns, skip_malformed_rows)
        kept = clean_sentences(raw, min_chars)
        if not kept:
            raise DataFormatError(
                f"sentence source {source.spec!r} ({source.path}) has no sentence: {len(raw)} text(s) read, "
                f"none non-empty with at least min_chars={min_chars} characters",
                fix="check the file (and text_columns), lower min_chars, or remove the source",
            )
        sentences.extend(kept)
    return sample_sentences(deduplicate(sentences), max_sentences, seed)


def tokenize_sentences(examples: dict[str, list], tokenizer, max_length: int) -> dict:
    """Batched ``Dataset.map`` function: tokenize the ``text`` column alone, truncated, unpadded."""
    return dict(tokenizer(examples["text"], truncation=True, max_length=max_length))
