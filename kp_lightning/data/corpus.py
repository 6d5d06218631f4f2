"""Plain-text corpora for masked-language modelling: reading, tokenizing and grouping into fixed-size blocks.

No Lightning import: a DataModule wraps these functions (``Dataset.map(tokenize_and_group, batched=True, ...)``).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np

from kp_lightning.errors import ConfigError, MissingFileError

# HF tokenizers without a known limit report ``model_max_length = int(1e30)``; anything above this is "unknown".
_UNKNOWN_MAX_LENGTH = 1_000_000
MIN_BLOCK_SIZE = 8


def read_text_files(paths: list[str | Path]) -> datasets.Dataset:
    """Read UTF-8 text files into a dataset with one ``text`` row per non-blank line.

    Lines are stripped of surrounding whitespace; lines that are empty after stripping are dropped.

    Args:
        paths: Text files, read in the given order.

    Returns:
        A ``datasets.Dataset`` with the single column ``text``.

    Raises:
        FileNotFoundError: If a path does not exist or is not a file.
        ValueError: If no paths are given or the files contain no non-blank line.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ConfigError("read_text_files needs at least one file path; got an empty list")
    lines: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise MissingFileError(f"Text file not found: {str(path)!r} (check the corpus path)")
        with path.open(encoding="utf-8") as handle:
            lines.extend(stripped for line in handle if (stripped := line.strip()))
    if not lines:
        raise ConfigError(f"No non-blank line in {[str(p) for p in paths]}; the MLM corpus would be empty")
    return datasets.Dataset.from_dict({"text": lines})


def _looks_like_local(source: str) -> bool:
    path = Path(source)
    return path.is_file() or path.suffix.lower() in {".txt", ".tokens", ".raw", ".text"}


def load_text_corpus(
    source: str | list[str],
    split: str = "train",
    hub_config: str | None = None,
    text_column: str = "text",
) -> datasets.Dataset:
    """Load a text corpus from local files or from a Hugging Face Hub dataset.

    ``source`` is treated as local when it is a list, an existing file, or has a text-file suffix (``.txt``,
    ``.tokens``, ``.raw``, ``.text``); then ``split``, ``hub_config`` and ``text_column`` are ignored. Otherwise
    it is passed to ``datasets.load_dataset(source, hub_config, split=split)`` (needs network or a warm cache).

    Args:
        source: File path(s), or a hub dataset name such as ``"Salesforce/wikitext"``.
        split: Hub split to load.
        hub_config: Hub dataset configuration, e.g. ``"wikitext-103-raw-v1"``.
        text_column: Column of the hub dataset holding the text; it is returned as ``text``.

    Returns:
        A dataset with the single column ``text`` and no blank rows.

    Raises:
        FileNotFoundError: If a local path is missing.
        ValueError: If the hub dataset has no ``text_column`` or no non-blank row.
    """
    if isinstance(source, (list, tuple)):
        return read_text_files(list(source))
    if _looks_like_local(str(source)):
        return read_text_files([source])
    dataset = datasets.load_dataset(source, hub_config, split=split)
    if text_column not in dataset.column_names:
        raise ConfigError(
            f"Dataset {source!r} (config {hub_config!r}, split {split!r}) has no column {text_column!r}; "
            f"set text_column to one of {dataset.column_names}"
        )
    dataset = dataset.select_columns([text_column])
    if text_column != "text":
        dataset = dataset.rename_column(text_column, "text")
    dataset = dataset.filter(
        lambda batch: [bool(text and text.strip()) for text in batch["text"]], batched=True, desc="Drop blank rows"
    )
    if len(dataset) == 0:
        raise ConfigError(f"Dataset {source!r} (config {hub_config!r}, split {split!r}) has no non-blank text row")
    return dataset


def check_block_size(tokenizer, block_size: int) -> None:
    """Validate ``block_size`` against the minimum and the tokenizer's ``model_max_length``.

    Raises:
        ValueError: If ``block_size < 8`` or it exceeds a real (not "unknown") ``tokenizer.model_max_length``.
    """
    if not isinstance(block_size, int) or block_size < MIN_BLOCK_SIZE:
        raise ConfigError(f"block_size must be an int >= {MIN_BLOCK_SIZE} (CLS + SEP + content), got {block_size!r}")
    max_length = getattr(tokenizer, "model_max_length", None)
    if max_length is not None and max_length <= _UNKNOWN_MAX_LENGTH and block_size > max_length:
        raise ConfigError(
            f"block_size={block_size} exceeds tokenizer.model_max_length={max_length}; "
            f"use block_size <= {max_length} (the model has no positions beyond it)"
        )


def _boundary_ids(tokenizer) -> tuple[int, int]:
    """(start id, end id): CLS/SEP, falling back to BOS/EOS (RoBERTa's ``<s>``/``</s>`` are both)."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise ConfigError(
            f"{type(tokenizer).__name__} defines neither cls/sep nor bos/eos tokens; MLM blocks need both a start "
            "and an end token (use a BERT/RoBERTa-style tokenizer)"
        )
    return int(cls_id), int(sep_id)


def tokenize_and_group(examples: dict[str, list], tokenizer, block_size: int) -> dict[str, list]:
    """Tokenize a batch of lines, concatenate them and cut the stream into ``[CLS] ... [SEP]`` blocks.

    Batched function for ``Dataset.map(tokenize_and_group, batched=True, remove_columns=["text"],
    fn_kwargs={"tokenizer": tokenizer, "block_size": block_size})``. Blocks hold ``block_size - 2`` content
    tokens; the remainder of each map batch is dropped, except that a batch shorter than one block yields one
    shorter block (so tiny corpora still work).

    Args:
        examples: Batch with a ``text`` column (list of strings).
        tokenizer: A fast Hugging Face tokenizer (``word_ids()`` is needed).
        block_size: Tokens per block including the two special tokens (>= 8).

    Returns:
        Columns ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (1 for CLS/SEP and any special id in
        the text, e.g. ``[UNK]``) and ``word_ids`` (per token a word id unique within the block, -1 exactly where
        ``special_tokens_mask`` is 1; sub-tokens of one word share the id, different lines never do).

    Raises:
        TypeError: If the tokenizer is not fast.
        ValueError: If ``text`` is missing or ``block_size`` is invalid.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"tokenize_and_group needs a fast tokenizer (word_ids() is used for whole-word masking); got "
            f"{type(tokenizer).__name__}. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    if "text" not in examples:
        raise ConfigError(f"tokenize_and_group expects a 'text' column, got columns {list(examples)}")
    check_block_size(tokenizer, block_size)
    cls_id, sep_id = _boundary_ids(tokenizer)
    special_ids = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)

    texts = [text for text in examples["text"] if text and text.strip()]
    ids_parts: list[np.ndarray] = []
    new_word_parts: list[np.ndarray] = []
    if texts:
        encoding = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
        for line, line_ids in enumerate(encoding["input_ids"]):
            if not line_ids:
                continue
            words = np.array([-1 if w is None else w for w in encoding.word_ids(line)], dtype=np.int64)
            new_word = np.ones(len(words), dtype=bool)  # the first token of a line always starts a new word
            new_word[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
            ids_parts.append(np.asarray(line_ids, dtype=np.int64))
            new_word_parts.append(new_word)
    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "special_tokens_mask": [], "word_ids": []}
    if not ids_parts:
        return columns

    stream = np.concatenate(ids_parts)
    special = np.isin(stream, special_ids)
    word_stream = np.cumsum(np.concatenate(new_word_parts)) - 1
    content = block_size - 2
    num_blocks = len(stream) // content
    lengths = [content] * num_blocks if num_blocks else [len(stream)]
    for index, length in enumerate(lengths):
        span = slice(index * content, index * content + length)
        block_words = np.where(special[span], -1, word_stream[span] - word_stream[span][0])
        columns["input_ids"].append([cls_id, *stream[span].tolist(), sep_id])
        columns["attention_mask"].append([1] * (length + 2))
        columns["special_tokens_mask"].append([1, *special[span].astype(np.int64).tolist(), 1])
        columns["word_ids"].append([-1, *block_words.tolist(), -1])
    return columns
