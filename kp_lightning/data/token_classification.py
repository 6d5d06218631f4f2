"""Token classification (NER) data: CoNLL-style files, or tables / hub datasets with token and tag columns.

Words are tokenized pre-split (a fast tokenizer gives each sub-token its word); the word's label goes on its
first sub-token and the others get ``-100`` (or, with ``label_all_tokens``, the word's label with ``B-`` turned
into ``I-``).
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from kp_lightning.data.conll import check_tag, read_conll, unknown_tag_error
from kp_lightning.data.glue_files import DataFormatError
from kp_lightning.data.tables import is_table_file, read_table
from kp_lightning.errors import ConfigError

IGNORE = -100


def _as_list(value, where: str, column: str) -> list:
    """A cell holding a list: a list already, or (CSV) a JSON list or whitespace-separated items."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError:
                pass
        else:
            return text.split()
    raise DataFormatError(
        f"{where}: column {column!r} holds {value!r}, not a list",
        fix="give a list per row (JSON/Parquet), or in CSV a JSON list or space-separated items",
    )


def class_label_names(dataset: datasets.Dataset, column: str) -> list[str] | None:
    """The ``ClassLabel`` names of a sequence-of-labels column, or None."""
    feature = dataset.features.get(column)
    inner = getattr(feature, "feature", None)
    return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None


def table_sentences(
    dataset: datasets.Dataset, source: str, columns: tuple[str, str], known: list[str] | None, label_source: str
) -> dict[str, list]:
    """``{"tokens", "tags"}`` (tag strings) of a table or hub split; rows without tokens are left out.

    Integer tags are ids into the tag column's ``ClassLabel`` names, else into ``known``.

    Args:
        dataset: Rows with a token-list and a tag-list column.
        source: File or hub name, for messages.
        columns: Names of the token and the tag column.
        known: The label set every tag must belong to (None: not checked).
        label_source: Where ``known`` came from, for messages.
    """
    tokens_column, tags_column = columns
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataFormatError(
            f"{source}: missing column(s) {missing}; it has {dataset.column_names}",
            fix="set tokens_column / tags_column to the names your data uses",
        )
    id_names = class_label_names(dataset, tags_column) or known
    allowed = set(known) if known is not None else None
    out: dict[str, list] = {"tokens": [], "tags": []}
    for row, (words, tags) in enumerate(zip(dataset[tokens_column], dataset[tags_column], strict=True), start=1):
        where = f"{source}, row {row}"
        words, tags = _as_list(words, where, tokens_column), _as_list(tags, where, tags_column)
        if len(words) != len(tags):
            raise DataFormatError(f"{where}: {len(words)} tokens but {len(tags)} tags", fix="give one tag per token")
        names = [_tag_name(tag, id_names, where) for tag in tags]
        for tag in names:
            if allowed is not None and tag not in allowed:
                raise unknown_tag_error(tag, where, list(known), label_source)
            check_tag(tag, where)
        if words:
            out["tokens"].append([str(w) for w in words])
            out["tags"].append(names)
    return out


def _tag_name(tag, id_names: list[str] | None, where: str) -> str:
    """A tag string, from a string or from an id (an int, or a digit string in CSV) into ``id_names``."""
    if isinstance(tag, bool) or not (isinstance(tag, int) or (isinstance(tag, str) and tag.isdigit())):
        return str(tag)
    if id_names is None:
        raise DataFormatError(
            f"{where}: integer tags but no names for them",
            fix="pass label_names (the tag of each id, in id order), or store the tags as strings",
        )
    if not 0 <= int(tag) < len(id_names):
        raise DataFormatError(f"{where}: tag id {tag} is outside [0, {len(id_names) - 1}]", fix="check the tags")
    return id_names[int(tag)]


def read_split(source, known: list[str] | None, label_source: str, columns: tuple[str, str]):
    """Tag-string sentences of one split and its ``ClassLabel`` names (or None).

    Args:
        source: A CoNLL file, a JSON/Parquet/CSV file, or a loaded hub split (``datasets.Dataset``).
        known: The label set every tag must belong to (None: not checked).
        label_source: Where ``known`` came from, for messages.
        columns: Token and tag column names (tables and hub data).
    """
    if isinstance(source, datasets.Dataset):
        name = f"hub split {source.split}"
        return table_sentences(source, name, columns, known, label_source), class_label_names(source, columns[1])
    path = Path(source)
    if is_table_file(path):
        table = read_table(path)
        return table_sentences(table, str(path), columns, known, label_source), class_label_names(table, columns[1])
    return read_conll(path, known, label_source), None


def resolve_label_names(train: dict[str, list], given: list[str] | None, class_names: list[str] | None) -> list[str]:
    """The label set: ``given``, else the training data's ``ClassLabel`` names, else its tags sorted."""
    names = list(given or class_names or sorted({tag for sentence in train["tags"] for tag in sentence}))
    if len(set(names)) != len(names):
        raise ConfigError(f"label_names has duplicates: {names}", fix="list each tag once, in id order")
    for tag in names:
        check_tag(tag, "label_names")
    return names


def to_label_ids(sentences: dict[str, list], names: list[str]) -> datasets.Dataset:
    """``tokens`` and integer ``ner_tags`` columns."""
    index = {name: i for i, name in enumerate(names)}
    return datasets.Dataset.from_dict(
        {"tokens": sentences["tokens"], "ner_tags": [[index[t] for t in tags] for tags in sentences["tags"]]}
    )


def load_tagged_splits(
    sources: dict[str, str | datasets.Dataset],
    tokens_column: str = "tokens",
    tags_column: str = "ner_tags",
    label_names: list[str] | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Read ``train`` and the evaluation splits, settle the label set, and convert tags to ids.

    Args:
        sources: Split name → CoNLL file, JSON/Parquet/CSV file, or a loaded hub split; must have ``train``.
        tokens_column: Token-list column of tables and hub data.
        tags_column: Tag-list column (strings, or ids with ``ClassLabel`` names or ``label_names``).
        label_names: The label set in id order; default the training data's ``ClassLabel`` names, else its
            tags sorted. Every tag of every split must be in it.

    Returns:
        ``(splits with "tokens" and "ner_tags", label names)``.
    """
    columns = (tokens_column, tags_column)
    given = list(label_names) if label_names else None
    train, class_names = read_split(sources["train"], given, "label_names", columns)
    names = resolve_label_names(train, given, class_names)
    label_source = "label_names" if given else f"the tags of the training data {_name(sources['train'])}"
    splits = {"train": train}
    for split, source in sources.items():
        if split != "train":
            splits[split] = read_split(source, names, label_source, columns)[0]
    return datasets.DatasetDict({split: to_label_ids(s, names) for split, s in splits.items()}), names


def _name(source) -> str:
    return f"hub split {source.split}" if isinstance(source, datasets.Dataset) else str(source)


def begin_to_inside(names: list[str]) -> list[int]:
    """For each label id, the id of its ``I-`` tag when it is a ``B-`` tag with an ``I-`` twin, else itself."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


def align_labels(word_ids: list[int | None], word_labels: list[int], inside: list[int] | None) -> list[int]:
    """Labels per sub-token: the word's label on its first sub-token, ``-100`` on special tokens, and on the
    other sub-tokens ``-100`` (``inside`` None) or the word's ``I-`` label (``inside`` from :func:`begin_to_inside`)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(word_labels[word])
        else:
            labels.append(IGNORE if inside is None else inside[word_labels[word]])
        previous = word
    return labels


def tokenize_and_align(examples: dict, tokenizer, max_length: int, inside: list[int] | None = None) -> dict:
    """Batched ``Dataset.map`` function: tokenize pre-split words (truncated, unpadded) and align the labels."""
    encoded = tokenizer(examples["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    encoded["labels"] = [align_labels(encoded.word_ids(i), tags, inside) for i, tags in enumerate(examples["ner_tags"])]
    return dict(encoded)


def needs_prefix_space(tokenizer) -> bool:
    """Whether a byte-level BPE tokenizer (RoBERTa) is set up without a prefix space: pre-split words would then
    be tokenized unlike the same words in running text."""
    if getattr(tokenizer, "add_prefix_space", None) is not False or not hasattr(tokenizer, "backend_tokenizer"):
        return False
    state = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    return '"ByteLevel"' in json.dumps(state)
