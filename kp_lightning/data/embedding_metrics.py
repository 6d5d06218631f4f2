"""Evaluation of sentence embeddings: STS correlation and retrieval ranking, as torchmetrics objects.

Batches follow :class:`kp_lightning.datamodules.EmbeddingDataModule`'s contract: an STS batch holds ``2B``
sentences (the first sentences of ``B`` pairs, then the second ones) and ``sts_scores``; a retrieval batch holds
queries and documents with ``retrieval_role`` (0 query, 1 document), ``retrieval_id`` and, for queries, the
``relevant_ids`` (``-1`` padded). States are concatenated across processes, so distributed runs score the
whole set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall, retrieval_reciprocal_rank
from torchmetrics.regression import PearsonCorrCoef, SpearmanCorrCoef

STS_METRICS = ("spearman", "pearson")
RETRIEVAL_METRICS = ("ndcg10", "mrr10", "recall1", "recall10")
EMBEDDING_METRICS = STS_METRICS + RETRIEVAL_METRICS


class RetrievalScores(torchmetrics.Metric):
    """nDCG@10, MRR@10, recall@1 and recall@10 of cosine-similarity ranking of the whole corpus per query."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("query_embeddings", "query_ids", "pair_queries", "pair_docs", "doc_embeddings", "doc_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, embeddings: torch.Tensor, role: torch.Tensor, ids: torch.Tensor, relevant: torch.Tensor) -> None:
        embeddings = F.normalize(embeddings.detach().float(), dim=-1)
        queries, docs = role == 0, role == 1
        self.query_embeddings.append(embeddings[queries])
        self.query_ids.append(ids[queries])
        rows = relevant[queries]  # (query, document) pairs: the padding width differs between batches
        valid = rows >= 0
        self.pair_queries.append(ids[queries].unsqueeze(1).expand_as(rows)[valid])
        self.pair_docs.append(rows[valid])
        self.doc_embeddings.append(embeddings[docs])
        self.doc_ids.append(ids[docs])

    @staticmethod
    def _cat(state) -> torch.Tensor | None:
        if isinstance(state, list):
            return torch.cat(state) if state else None
        return state

    def compute(self) -> dict[str, torch.Tensor]:
        queries, query_ids = self._cat(self.query_embeddings), self._cat(self.query_ids)
        docs, doc_ids = self._cat(self.doc_embeddings), self._cat(self.doc_ids)
        if queries is None or docs is None or not len(queries) or not len(docs):
            nan = torch.tensor(float("nan"))
            return {name: nan for name in RETRIEVAL_METRICS}
        pair_queries, pair_docs = self._cat(self.pair_queries), self._cat(self.pair_docs)
        doc_ids, first = _unique_rows(doc_ids)
        docs = docs[first]
        query_ids, first = _unique_rows(query_ids)
        queries = queries[first]
        scores = queries @ docs.T + 2.0  # > 0: torchmetrics' recall counts a document with score <= 0 as unretrieved
        sums = dict.fromkeys(RETRIEVAL_METRICS, 0.0)
        for row, query_id in zip(scores, query_ids, strict=True):
            target = torch.isin(doc_ids, pair_docs[pair_queries == query_id])
            sums["ndcg10"] += float(retrieval_normalized_dcg(row, target, top_k=10))
            sums["mrr10"] += float(retrieval_reciprocal_rank(row, target, top_k=10))
            sums["recall1"] += float(retrieval_recall(row, target, top_k=1))
            sums["recall10"] += float(retrieval_recall(row, target, top_k=10))
        return {name: torch.tensor(value / len(scores)) for name, value in sums.items()}


def _unique_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct ids and the index of each one's first occurrence."""
    order = torch.argsort(ids, stable=True)
    sorted_ids = ids[order]
    keep = torch.ones_like(sorted_ids, dtype=torch.bool)
    keep[1:] = sorted_ids[1:] != sorted_ids[:-1]
    return sorted_ids[keep], order[keep]


class EmbeddingMetrics(nn.Module):
    """The metrics of one evaluation split of an embedding task: STS (Spearman and Pearson of the cosine
    similarity against the gold score) or retrieval, chosen by the batches it is fed; ``compute`` returns the
    requested names of the kind that was fed."""

    def __init__(self, metrics: list[str]):
        super().__init__()
        self.names = list(metrics)
        self.spearman, self.pearson = SpearmanCorrCoef(), PearsonCorrCoef()
        self.retrieval = RetrievalScores()
        self.fed: set[str] = set()

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, batch: dict) -> None:
        """Add the ``[N, dim]`` sentence embeddings of one evaluation batch."""
        if "sts_scores" in batch:
            half = embeddings.shape[0] // 2
            similarity = F.cosine_similarity(embeddings[:half].float(), embeddings[half:].float(), dim=-1)
            gold = batch["sts_scores"].float()
            self.spearman.update(similarity, gold)
            self.pearson.update(similarity, gold)
            self.fed.add("sts")
        else:
            self.retrieval.update(embeddings, batch["retrieval_role"], batch["retrieval_id"], batch["relevant_ids"])
            self.fed.add("retrieval")

    def compute(self) -> dict[str, torch.Tensor]:
        values = {}
        if "sts" in self.fed:
            values.update(spearman=self.spearman.compute(), pearson=self.pearson.compute())
        if "retrieval" in self.fed:
            values.update(self.retrieval.compute())
        return {name: values[name] for name in self.names if name in values}

    def reset(self) -> None:
        for metric in (self.spearman, self.pearson, self.retrieval):
            metric.reset()
        self.fed.clear()
