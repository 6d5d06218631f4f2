"""Multiple-choice data (SWAG-style): a context, N candidate endings, the index of the right one.

Each example becomes N (context, ending) pairs tokenized together; a batch is ``[batch, choices, seq]``.
"""

from __future__ import annotations

import datasets
import torch

from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.tables import read_table


def read_choice_rows(
    dataset: datasets.Dataset,
    source: str,
    context_column: str,
    question_column: str | None,
    ending_columns: list[str],
    choices_column: str | None,
    label_column: str,
) -> dict[str, list]:
    """``{"context": [str], "endings": [[str] * N], "label": [int]}`` of one split.

    The text paired with the context is ``"<question> <ending>"`` when ``question_column`` is set (SWAG's
    ``sent2``, the start of the continuation), else the ending alone. Endings come from ``choices_column`` (a
    list per row) when set, else from the ``ending_columns``.

    Raises:
        DataFormatError: a missing column, rows with different numbers of endings, or a label that is not a
            choice index; the message names the file and row.
    """
    wanted = [context_column, label_column, *([question_column] if question_column else [])]
    wanted += [choices_column] if choices_column else list(ending_columns)
    missing = [c for c in wanted if c not in dataset.column_names]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {missing}; it has {dataset.column_names}",
            fix="set context_column, question_column (null for none), ending_columns or choices_column, and "
            "label_column to the names your file uses",
        )
    out: dict[str, list] = {"context": [], "endings": [], "label": []}
    for row, example in enumerate(dataset, start=1):
        where = f"{source}, row {row}"
        endings = example[choices_column] if choices_column else [example[c] for c in ending_columns]
        if not isinstance(endings, list) or len(endings) < 2:
            raise DataFormatError(f"{where}: expected a list of at least 2 endings, got {endings!r}")
        if out["endings"] and len(endings) != len(out["endings"][0]):
            raise DataFormatError(
                f"{where}: {len(endings)} endings, but earlier rows have {len(out['endings'][0])}",
                fix="give every example the same number of choices",
            )
        prefix = f"{example[question_column]} " if question_column else ""
        out["context"].append(str(example[context_column]))
        out["endings"].append([prefix + str(e) for e in endings])
        out["label"].append(_choice_index(example[label_column], len(endings), where))
    if not out["label"]:
        raise DataFormatError(f"{source} has no examples", fix="check the file")
    return out


def _choice_index(raw, num_choices: int, where: str) -> int:
    text = str(raw).strip()
    if isinstance(raw, bool) or not text.isdigit() or not int(text) < num_choices:
        raise DataFormatError(
            f"{where}: label {raw!r} is not a choice index in [0, {num_choices - 1}]",
            fix="give the index of the right ending (0 for the first)",
        )
    return int(text)


def load_choice_splits(sources: dict[str, str | datasets.Dataset], **columns) -> datasets.DatasetDict:
    """Read each split (a JSON/JSON-lines/Parquet/CSV file, or a loaded hub split) with :func:`read_choice_rows`.

    Raises:
        DataFormatError: as :func:`read_choice_rows`, or the splits have different numbers of choices.
    """
    out = {}
    for split, source in sources.items():
        table = source if isinstance(source, datasets.Dataset) else read_table(source)
        name = f"hub split {split}" if isinstance(source, datasets.Dataset) else str(source)
        out[split] = datasets.Dataset.from_dict(read_choice_rows(table, name, **columns))
    counts = {split: len(d[0]["endings"]) for split, d in out.items()}
    if len(set(counts.values())) > 1:
        raise DataFormatError(f"the splits have different numbers of choices: {counts}", fix="use the same N")
    return datasets.DatasetDict(out)


def tokenize_choices(examples: dict, tokenizer, max_length: int) -> dict:
    """Batched ``Dataset.map`` function: N (context, ending) pairs per example, truncated and unpadded; every
    tokenizer output becomes a list of N per example."""
    counts = [len(endings) for endings in examples["endings"]]
    firsts = [context for context, n in zip(examples["context"], counts, strict=True) for _ in range(n)]
    seconds = [ending for endings in examples["endings"] for ending in endings]
    encoded = tokenizer(firsts, seconds, truncation=True, max_length=max_length)
    out, start = {key: [] for key in encoded}, 0
    for n in counts:
        for key, values in encoded.items():
            out[key].append(values[start : start + n])
        start += n
    out["labels"] = list(examples["label"])
    return out


class MultipleChoiceCollator:
    """Pads every choice of every example to the batch's longest sequence: tensors of ``[batch, choices, seq]``
    and ``labels`` of ``[batch]``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        keys = [k for k in features[0] if k != "labels"]
        choices = len(features[0]["input_ids"])
        flat = [{k: f[k][i] for k in keys} for f in features for i in range(choices)]
        batch = self.tokenizer.pad(flat, return_tensors="pt")
        out = {k: v.view(len(features), choices, -1) for k, v in batch.items()}
        out["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return out
