"""Retrieval evaluation sets (queries, a corpus, relevance judgements): builders, rows and batches.

Query ids and document ids both count from 0 (a query and a document may share an id; the role tells them
apart). Sources: ``"qnli:<path>"`` (GLUE QNLI ``dev.tsv``: questions retrieve their entailing sentences) or a
table file with query, document and relevance columns.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from kp_lightning.data.glue_files import DataFormatError, read_glue_tsv
from kp_lightning.data.glue_tasks import glue_task
from kp_lightning.data.named_columns import has_named_columns, read_named_columns, require_columns
from kp_lightning.errors import ConfigError

DEFAULT_RETRIEVAL_COLUMNS = ("query", "document", "relevant")
QUERY, DOCUMENT = 0, 1
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class RetrievalSet:
    """Queries, a corpus and which documents are relevant to each query.

    Attributes:
        queries: Query texts; the query id is the index.
        corpus: Document texts; the document id is the index.
        relevant: Query id -> ids of its relevant documents (every query has at least one).
    """

    queries: list[str]
    corpus: list[str]
    relevant: dict[int, set[int]]

    @property
    def num_pairs(self) -> int:
        """Number of (query, relevant document) pairs."""
        return sum(len(docs) for docs in self.relevant.values())

    def subset(self, max_queries: int | None, seed: int) -> RetrievalSet:
        """A seeded random subset of ``max_queries`` queries (original order, renumbered); the corpus stays whole."""
        if max_queries is None or max_queries >= len(self.queries):
            return self
        chosen = sorted(random.Random(seed).sample(range(len(self.queries)), max_queries))
        return RetrievalSet(
            [self.queries[q] for q in chosen], self.corpus, {new: set(self.relevant[q]) for new, q in enumerate(chosen)}
        )


def _build(pairs: list[tuple[str, str, bool]], documents: list[str]) -> RetrievalSet:
    """Queries in first-occurrence order among the relevant pairs; corpus = ``documents`` deduplicated."""
    doc_ids = {doc: i for i, doc in enumerate(dict.fromkeys(documents))}
    query_ids: dict[str, int] = {}
    relevant: dict[int, set[int]] = {}
    for query, doc, is_relevant in pairs:
        if is_relevant:
            qid = query_ids.setdefault(query, len(query_ids))
            relevant.setdefault(qid, set()).add(doc_ids[doc])
    return RetrievalSet(list(query_ids), list(doc_ids), relevant)


def qnli_retrieval_set(path: str | Path, max_queries: int | None = None, seed: int = 42) -> RetrievalSet:
    """Retrieval from GLUE QNLI (``dev.tsv``: ``question``, ``sentence``, ``label``).

    Queries are the distinct questions with at least one ``entailment`` sentence; the corpus is every distinct
    sentence of the file; a sentence is relevant to a question when the pair is labelled ``entailment``.

    Args:
        path: The QNLI TSV file (classic GLUE layout).
        max_queries: Keep a seeded random subset of this many queries (the corpus stays whole); None: all.
        seed: Seed of that subset.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: not a QNLI file (header, field counts, labels), or no entailment pair.
    """
    task = glue_task("qnli")
    columns = read_glue_tsv(path, task)
    questions = [q.strip() for q in columns["question"]]
    sentences = [s.strip() for s in columns["sentence"]]
    entails = [label == task.label_names.index("entailment") for label in columns["label"]]
    built = _build(list(zip(questions, sentences, entails, strict=True)), sentences)
    if not built.queries:
        raise DataFormatError(f"{path}: no entailment pair, so no query", fix="use a QNLI file with labels")
    return built.subset(max_queries, seed)


def _relevance(raw, where: str) -> bool:
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = math.nan
    if raw is None or not math.isfinite(value) or value < 0:
        raise DataFormatError(
            f"{where}: relevance {raw!r} is not a number >= 0", fix="use 0 (not relevant) or a number > 0 (relevant)"
        )
    return value > 0


def pairs_retrieval_set(
    path: str | Path,
    columns: list[str] | tuple[str, ...] = DEFAULT_RETRIEVAL_COLUMNS,
    max_queries: int | None = None,
    seed: int = 42,
) -> RetrievalSet:
    """Retrieval from a table of judged (query, document, relevance) rows.

    The corpus is every distinct document of the file; a document is relevant to a query when a row pairs them
    with a relevance > 0 (``0`` rows only add their document to the corpus). Texts are stripped.

    Args:
        path: A ``.tsv`` (tab-split, unquoted), ``.csv``, ``.json``, ``.jsonl`` or ``.parquet`` file.
        columns: Names of the query, document and relevance columns.
        max_queries: Keep a seeded random subset of this many queries (the corpus stays whole); None: all.
        seed: Seed of that subset.

    Raises:
        MissingFileError: the file does not exist.
        DataFormatError: a missing column, a relevance that is not a number >= 0 (the message names the data
            row, counted from 1 after the header), no row, or a query without any relevant document (the
            message gives how many and the first).
    """
    if len(columns) != 3:
        raise DataFormatError(f"retrieval columns must be [query, document, relevance], got {list(columns)}")
    table = read_named_columns(path)
    require_columns(table, list(columns), path, "retrieval_columns")
    query_col, doc_col, rel_col = columns
    queries = ["" if q is None else str(q).strip() for q in table[query_col]]
    documents = ["" if d is None else str(d).strip() for d in table[doc_col]]
    flags = [_relevance(raw, f"{path}, row {row}") for row, raw in enumerate(table[rel_col], start=1)]
    if not queries:
        raise DataFormatError(f"{path} has no rows", fix="add (query, document, relevance) rows")
    built = _build(list(zip(queries, documents, flags, strict=True)), documents)
    judged = set(built.queries)
    unjudged = [q for q in dict.fromkeys(queries) if q not in judged]
    if unjudged:
        raise DataFormatError(
            f"{path}: {len(unjudged)} quer{'y has' if len(unjudged) == 1 else 'ies have'} no relevant document, "
            f"the first is {unjudged[0]!r}",
            fix="give each query at least one row with a relevance > 0, or remove its rows",
        )
    return built.subset(max_queries, seed)


def parse_retrieval_source(spec: str) -> tuple[str, Path]:
    """``("qnli", path)`` for ``"qnli:<path>"``, else ``("pairs", path)`` for a table file (no file is opened).

    Raises:
        ConfigError: a path with a suffix no table reader takes.
    """
    if spec.startswith("qnli:"):
        return "qnli", Path(spec.removeprefix("qnli:"))
    if not has_named_columns(spec):
        raise ConfigError(
            f"unknown retrieval source {spec!r}",
            fix="use 'qnli:<path to QNLI dev.tsv>' or a .tsv/.csv/.json/.jsonl/.parquet file with query, document "
            "and relevance columns",
        )
    return "pairs", Path(spec)


def load_retrieval_set(
    spec: str,
    columns: list[str] | tuple[str, ...] = DEFAULT_RETRIEVAL_COLUMNS,
    max_queries: int | None = None,
    seed: int = 42,
) -> RetrievalSet:
    """The retrieval set of a source string (see :func:`parse_retrieval_source`)."""
    kind, path = parse_retrieval_source(spec)
    if kind == "qnli":
        return qnli_retrieval_set(path, max_queries, seed)
    return pairs_retrieval_set(path, columns, max_queries, seed)


def retrieval_rows(retrieval: RetrievalSet) -> dict[str, list]:
    """Columns ``text``, ``retrieval_role``, ``retrieval_id``, ``relevant_ids``: the queries first, then the corpus."""
    n_queries, n_docs = len(retrieval.queries), len(retrieval.corpus)
    return {
        "text": [*retrieval.queries, *retrieval.corpus],
        "retrieval_role": [QUERY] * n_queries + [DOCUMENT] * n_docs,
        "retrieval_id": [*range(n_queries), *range(n_docs)],
        "relevant_ids": [sorted(retrieval.relevant[q]) for q in range(n_queries)] + [[] for _ in range(n_docs)],
    }


class RetrievalCollator:
    """Pad the tokens of queries and documents; ``retrieval_role``, ``retrieval_id`` (long ``[N]``) and
    ``relevant_ids`` (long ``[N, R]``, padded with -1, ``R`` the most in the batch and at least 1)."""

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase):
        self.pad = transformers.DataCollatorWithPadding(tokenizer)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = dict(self.pad([{k: f[k] for k in TOKEN_KEYS if k in f} for f in features]))
        batch["retrieval_role"] = torch.tensor([int(f["retrieval_role"]) for f in features], dtype=torch.long)
        batch["retrieval_id"] = torch.tensor([int(f["retrieval_id"]) for f in features], dtype=torch.long)
        width = max([1, *(len(f["relevant_ids"]) for f in features)])
        relevant = torch.full((len(features), width), -1, dtype=torch.long)
        for row, feature in enumerate(features):
            relevant[row, : len(feature["relevant_ids"])] = torch.as_tensor(feature["relevant_ids"], dtype=torch.long)
        batch["relevant_ids"] = relevant
        return batch
