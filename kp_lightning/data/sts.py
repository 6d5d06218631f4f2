"""Semantic textual similarity (STS) pairs: reading, tokenizing both sentences, and batches of 2B sentences."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.named_columns import read_named_columns, require_columns

DEFAULT_STS_COLUMNS = ("sentence1", "sentence2", "score")
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class StsPairs:
    """Sentence pairs with a gold similarity score each.

    Attributes:
        first: The first sentence of each pair.
        second: The second sentence of each pair.
        scores: The gold scores (any scale; only their ranks and correlation are used).
    """

    first: list[str]
    second: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict[str, list]:
        """Columns ``sentence_a``, ``sentence_b``, ``score`` for ``datasets.Dataset.from_dict``."""
        return {"sentence_a": self.first, "sentence_b": self.second, "score": self.scores}


def _score(raw, where: str) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
    if raw is None or isinstance(raw, bool) or not math.isfinite(value):
        raise DataFormatError(f"{where}: score {raw!r} is not a number", fix="give every pair a numeric score")
    return value


def read_sts_pairs(path: str | Path, columns: list[str] | tuple[str, ...] = DEFAULT_STS_COLUMNS) -> StsPairs:
    """Read STS pairs from a table file with named columns (GLUE ``STS-B/dev.tsv`` with the defaults).

    TSV files are split on tabs only, never unquoted, like the GLUE reader.

    Args:
        path: A ``.tsv``, ``.csv``, ``.json``, ``.jsonl`` or ``.parquet`` file.
        columns: Names of the first sentence, second sentence and score columns.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: a missing column (the message names the columns present), a score that is not a
            number (the message names the data row, counted from 1 after the header), or no pair at all.
    """
    if len(columns) != 3:
        raise DataFormatError(f"STS columns must be [first sentence, second sentence, score], got {list(columns)}")
    first, second, score = columns
    table = read_named_columns(path)
    require_columns(table, list(columns), path, "sts_columns")
    scores = [_score(raw, f"{path}, row {row}") for row, raw in enumerate(table[score], start=1)]
    if not scores:
        raise DataFormatError(f"{path} has no STS pairs", fix="check the file")
    text = [["" if t is None else str(t) for t in table[name]] for name in (first, second)]
    return StsPairs(text[0], text[1], scores)


def tokenize_sts_pairs(examples: dict[str, list], tokenizer, max_length: int) -> dict:
    """Batched ``Dataset.map`` function: tokenize each sentence alone (``<key>_a``, ``<key>_b``); keep ``score``."""
    out = {"score": [float(s) for s in examples["score"]]}
    for side in ("a", "b"):
        encoded = tokenizer(examples[f"sentence_{side}"], truncation=True, max_length=max_length)
        out.update({f"{key}_{side}": value for key, value in encoded.items()})
    return out


class StsCollator:
    """Pad the 2B sentences of a batch together: rows ``0..B-1`` are the first sentences, ``B..2B-1`` the second.

    Returns ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when the rows have them), each ``[2B, L]``,
    and ``sts_scores`` (float32 ``[B]``).
    """

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase):
        self.pad = transformers.DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        sentences = [
            {key: feature[f"{key}_{side}"] for key in TOKEN_KEYS if f"{key}_{side}" in feature}
            for side in ("a", "b")
            for feature in features
        ]
        batch = dict(self.pad(sentences))
        batch["sts_scores"] = torch.tensor([float(f["score"]) for f in features], dtype=torch.float32)
        return batch
