"""Sentence-embedding data module: unlabeled sentences to prune/distill on, STS pairs and a retrieval set to score."""

from __future__ import annotations

from pathlib import Path

import datasets

from kp_lightning.data.named_columns import has_named_columns
from kp_lightning.data.retrieval import (
    DEFAULT_RETRIEVAL_COLUMNS,
    RetrievalCollator,
    load_retrieval_set,
    parse_retrieval_source,
    retrieval_rows,
)
from kp_lightning.data.sentences import DEFAULT_MIN_CHARS, check_sentence_sources, load_sentences, tokenize_sentences
from kp_lightning.data.sts import DEFAULT_STS_COLUMNS, StsCollator, read_sts_pairs, tokenize_sts_pairs
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.datamodules.base import EncoderDataModule, file_fingerprint
from kp_lightning.errors import ConfigError, MissingFileError

DEFAULT_SENTENCES = ("glue:SST-2", "glue:MRPC", "glue:STS-B", "glue:RTE", "glue:CoLA")
SPLIT_METRICS = {"sts": ["spearman", "pearson"], "retrieval": ["ndcg10", "mrr10", "recall1", "recall10"]}
DATA_FORMAT = 1  # bump when the rows built here change
_RETRIEVAL_FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "retrieval_role": datasets.Value("int64"),
        "retrieval_id": datasets.Value("int64"),
        "relevant_ids": datasets.Sequence(datasets.Value("int64")),
    }
)


def _three_columns(columns: list[str] | None, default: tuple[str, ...], option: str) -> list[str]:
    columns = list(columns or default)
    if len(columns) != 3:
        raise ConfigError(
            f"{option} must name 3 columns {list(default)}, got {columns}", fix=f"e.g. {option}: {list(default)}"
        )
    return columns


class EmbeddingDataModule(EncoderDataModule):
    """Sentence embeddings: a ``train`` split of unlabeled sentences, and STS and/or retrieval evaluation splits.

    Train rows are tokenized sentences only (``input_ids``, ``attention_mask``, ``token_type_ids`` when the
    tokenizer makes them), padded by ``DataCollatorWithPadding``. Evaluation splits, in this order:

    - ``sts`` (key ``validation_sts``): batches of B pairs as ``input_ids``/``attention_mask``/``token_type_ids``
      ``[2B, L]`` (rows ``0..B-1`` the first sentences, ``B..2B-1`` the second) and ``sts_scores`` float ``[B]``;
      metrics ``spearman``, ``pearson``.
    - ``retrieval`` (key ``validation_retrieval``): the queries, then the corpus, as token rows with
      ``retrieval_role`` (0 query, 1 document), ``retrieval_id`` and ``relevant_ids`` (``[N, R]``, -1 padded);
      metrics ``ndcg10``, ``mrr10``, ``recall1``, ``recall10``.

    Args:
        sentences: Sentence sources (default ``glue:`` SST-2, MRPC, STS-B, RTE, CoLA train files):
            ``"glue:<TASK>"`` (``"glue:<TASK>:<split>"``), ``"wikitext:<path>"``, or a ``.txt`` (one sentence a
            line), ``.tokens`` (WikiText: headings skipped), ``.tsv``/``.csv``/``.json``/``.jsonl``/``.parquet``
            path (``text_columns``). Stripped, deduplicated across sources in first-occurrence order.
        glue_dir: Folder holding the GLUE task folders (``SST-2/train.tsv``...), for ``glue:`` sources.
        text_columns: Text columns of table sources (default ``["text"]``).
        max_sentences: Keep a seeded random subset of this many sentences (null: all).
        min_chars: Drop sentences shorter than this many characters.
        skip_malformed_rows: Skip GLUE rows with a wrong field count instead of failing.
        sts_file: STS pairs (``.tsv`` split on tabs like GLUE, or CSV/JSON/Parquet); null for none.
        sts_columns: Its first sentence, second sentence and score columns (default sentence1, sentence2, score).
        retrieval: Retrieval set: ``"qnli:<QNLI dev.tsv>"`` or a table of query, document, relevance rows; null
            for none.
        retrieval_columns: Query, document and relevance columns of a retrieval table (default query, document,
            relevant; relevance 0 or a number > 0).
        max_queries: Keep a seeded random subset of this many retrieval queries (the corpus stays whole).
        task_name: Name used in logs, caches and exports.
        **kwargs: Shared options of ``EncoderDataModule`` (tokenizer, max_length, batch sizes, cache, seed).
    """

    def __init__(
        self,
        sentences: list[str] | None = None,
        glue_dir: str | None = "../shared/data/glue",
        text_columns: list[str] | None = None,
        max_sentences: int | None = None,
        min_chars: int = DEFAULT_MIN_CHARS,
        skip_malformed_rows: bool = False,
        sts_file: str | None = "../shared/data/glue/STS-B/dev.tsv",
        sts_columns: list[str] | None = None,
        retrieval: str | None = None,
        retrieval_columns: list[str] | None = None,
        max_queries: int | None = None,
        task_name: str = "embedding",
        **kwargs,
    ):
        if sts_file is None and retrieval is None:
            raise ConfigError(
                "embedding evaluation needs sts_file or retrieval (or both); both are null",
                fix="set sts_file (e.g. ../shared/data/glue/STS-B/dev.tsv) or retrieval "
                "(e.g. qnli:../shared/data/glue/QNLI/dev.tsv)",
            )
        if min_chars < 0:
            raise ConfigError(f"min_chars must be >= 0, got {min_chars}")
        for name, value in (("max_sentences", max_sentences), ("max_queries", max_queries)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be positive or null (all), got {value}")
        self.sentence_sources = list(DEFAULT_SENTENCES if sentences is None else sentences)
        self._sources = check_sentence_sources(self.sentence_sources, glue_dir)
        self.sts_columns = _three_columns(sts_columns, DEFAULT_STS_COLUMNS, "sts_columns")
        self.retrieval_columns = _three_columns(retrieval_columns, DEFAULT_RETRIEVAL_COLUMNS, "retrieval_columns")
        if sts_file is not None:
            if not has_named_columns(sts_file):
                raise ConfigError(
                    f"sts_file {sts_file}: unknown format",
                    fix="use a .tsv, .csv, .json, .jsonl or .parquet file with sts_columns",
                )
            if not Path(sts_file).is_file():
                raise MissingFileError(
                    f"sts_file not found: {sts_file}",
                    fix="set sts_file to an STS file (e.g. GLUE STS-B/dev.tsv), or null",
                )
        self._retrieval_source = None
        if retrieval is not None:
            self._retrieval_source = parse_retrieval_source(retrieval)
            if not self._retrieval_source[1].is_file():
                raise MissingFileError(
                    f"retrieval file not found: {self._retrieval_source[1]} (from retrieval: {retrieval})",
                    fix="set retrieval to 'qnli:<path to QNLI dev.tsv>' or a query/document/relevance table, or null",
                )
        super().__init__(**kwargs)
        self.glue_dir = glue_dir
        self.text_columns = list(text_columns) if text_columns else None
        self.max_sentences, self.min_chars, self.skip_malformed_rows = max_sentences, min_chars, skip_malformed_rows
        self.sts_file, self.retrieval, self.max_queries = sts_file, retrieval, max_queries
        self.train_sentences = load_sentences(
            self.sentence_sources, glue_dir, self.text_columns, min_chars, max_sentences, self.seed, skip_malformed_rows
        )
        self.sts_pairs = read_sts_pairs(sts_file, self.sts_columns) if sts_file is not None else None
        self.retrieval_set = None
        if retrieval is not None:
            self.retrieval_set = load_retrieval_set(retrieval, self.retrieval_columns, max_queries, self.seed)
        data = (("sts", self.sts_pairs), ("retrieval", self.retrieval_set))
        splits = [name for name, loaded in data if loaded is not None]
        self._spec = TaskSpec(
            name=task_name,
            kind="embedding",
            metrics=[metric for split in splits for metric in SPLIT_METRICS[split]],
            eval_splits=splits,
        )
        self.save_hyperparameters()

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def cache_identity(self) -> dict:
        retrieval = None
        if self._retrieval_source is not None:
            kind, path = self._retrieval_source
            retrieval = [kind, file_fingerprint(path), self.retrieval_columns if kind == "pairs" else None]
        return {
            "format": DATA_FORMAT,
            "sentences": [[s.spec, file_fingerprint(s.path)] for s in self._sources],
            "text_columns": self.text_columns,
            "max_sentences": self.max_sentences,
            "min_chars": self.min_chars,
            "skip_malformed_rows": self.skip_malformed_rows,
            "sts": None if self.sts_file is None else [file_fingerprint(self.sts_file), self.sts_columns],
            "retrieval": retrieval,
            "max_queries": self.max_queries,
        }

    def _tokenize(self, dataset: datasets.Dataset, function, split: str) -> datasets.Dataset:
        keep = {"retrieval_role", "retrieval_id", "relevant_ids"}
        return dataset.map(
            function,
            batched=True,
            remove_columns=[c for c in dataset.column_names if c not in keep],
            fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length},
            desc=f"Tokenizing {self._spec.name} {split}",
        )

    def build_datasets(self) -> datasets.DatasetDict:
        train = datasets.Dataset.from_dict({"text": self.train_sentences})
        splits = {"train": self._tokenize(train, tokenize_sentences, "train")}
        if self.sts_pairs is not None:
            pairs = datasets.Dataset.from_dict(self.sts_pairs.to_dict())
            splits["validation_sts"] = self._tokenize(pairs, tokenize_sts_pairs, "sts")
        if self.retrieval_set is not None:
            rows = datasets.Dataset.from_dict(retrieval_rows(self.retrieval_set), features=_RETRIEVAL_FEATURES)
            splits["validation_retrieval"] = self._tokenize(rows, tokenize_sentences, "retrieval")
        return datasets.DatasetDict(splits)

    def eval_split_collator(self, split: str):
        """``StsCollator`` for ``validation_sts``, ``RetrievalCollator`` for ``validation_retrieval``."""
        collators = {"validation_sts": StsCollator, "validation_retrieval": RetrievalCollator}
        if split not in collators:
            raise ConfigError(f"the embedding data has no evaluation split {split!r}; it has {list(collators)}")
        return collators[split](self.tokenizer)

    def eval_collator(self):
        """The collator of the first evaluation split."""
        return self.eval_split_collator(self._eval_split_keys()[0])
