"""Evaluation on STS-B and QNLI retrieval of torch, ONNX and model2vec embedders; a model's size record."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.flops import encoder_flops
from kp_lightning.data.embedding_metrics import EmbeddingMetrics
from kp_lightning.data.retrieval import retrieval_rows
from kp_lightning.datamodules.embedding import SPLIT_METRICS, EmbeddingDataModule
from kp_lightning.embedding.pooling import model_pooling, pool
from kp_lightning.modules import TaskModule
from kp_lightning.modules.model_loading import accepted_inputs

METRIC_KEYS = {  # column -> (split, metric)
    "stsb_spearman": ("sts", "spearman"),
    "stsb_pearson": ("sts", "pearson"),
    "retrieval_ndcg10": ("retrieval", "ndcg10"),
    "retrieval_mrr10": ("retrieval", "mrr10"),
    "retrieval_recall1": ("retrieval", "recall1"),
    "retrieval_recall10": ("retrieval", "recall10"),
}


def metric_columns(values: dict[tuple[str, str], float]) -> dict:
    return {column: values.get(key) for column, key in METRIC_KEYS.items()}


def evaluate_module(module: TaskModule, dm: EmbeddingDataModule) -> dict:
    """``Trainer.validate`` of the module (the ``train.py validate`` path), as the table's metric columns."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    merged = {}
    for result in trainer.validate(module, datamodule=dm, verbose=False):
        merged.update({k.split("/dataloader_idx")[0]: float(v) for k, v in result.items()})
    return metric_columns({(s, m): merged[f"val/{s}/{m}"] for s, m in METRIC_KEYS.values() if f"val/{s}/{m}" in merged})


@torch.no_grad()
def evaluate_batches(embed, dm: EmbeddingDataModule) -> dict:
    """Metrics of ``embed(batch) -> [N, dim]`` over the data module's own evaluation batches."""
    loaders = dm.val_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    values = {}
    for split, loader in zip(dm.task_spec.eval_splits, loaders, strict=True):
        metrics = EmbeddingMetrics(SPLIT_METRICS[split])
        for batch in loader:
            metrics.update(torch.as_tensor(embed(batch)), batch)
        values.update({(split, k): float(v) for k, v in metrics.compute().items()})
    return metric_columns(values)


@torch.no_grad()
def evaluate_texts(encode, dm: EmbeddingDataModule) -> dict:
    """Metrics of ``encode(list of texts) -> [N, dim]`` on the same STS pairs and retrieval set (raw texts)."""
    values = {}
    pairs = dm.sts_pairs
    metrics = EmbeddingMetrics(SPLIT_METRICS["sts"])
    first = torch.as_tensor(encode([t.strip() for t in pairs.first]))
    second = torch.as_tensor(encode([t.strip() for t in pairs.second]))
    metrics.update(torch.cat([first, second]), {"sts_scores": torch.tensor(pairs.scores, dtype=torch.float32)})
    values.update({("sts", k): float(v) for k, v in metrics.compute().items()})
    rows = retrieval_rows(dm.retrieval_set)
    width = max(1, *(len(r) for r in rows["relevant_ids"]))
    relevant = torch.full((len(rows["text"]), width), -1, dtype=torch.long)
    for i, ids in enumerate(rows["relevant_ids"]):
        relevant[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    batch = {
        "retrieval_role": torch.tensor(rows["retrieval_role"]),
        "retrieval_id": torch.tensor(rows["retrieval_id"]),
        "relevant_ids": relevant,
    }
    metrics = EmbeddingMetrics(SPLIT_METRICS["retrieval"])
    metrics.update(torch.as_tensor(encode(rows["text"])), batch)
    values.update({("retrieval", k): float(v) for k, v in metrics.compute().items()})
    return metric_columns(values)


def torch_embedder(model):
    pooling, keys = model_pooling(model), accepted_inputs(model)

    def embed(batch):
        inputs = {k: batch[k] for k in keys if k in batch}
        return pool(model(**inputs).last_hidden_state, batch["attention_mask"], pooling)

    return embed


def size_record(model, dense) -> dict:
    """Parameters, fp32 weight bytes, kept sizes, encoder sparsity and FLOPs reductions at 128 tokens."""
    params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in {id(t): t for t in model.state_dict().values()}.values())
    encoder = sum(p.numel() for p in EncoderAdapter(model).encoder_modules().parameters())
    dense_encoder = sum(p.numel() for p in EncoderAdapter(dense).encoder_modules().parameters())
    shape, dense_shape = EncoderAdapter(model).shape(), EncoderAdapter(dense).shape()
    return {
        "params": params,
        "size_bytes": size,
        "encoder_params": encoder,
        "sparsity": 1 - encoder / dense_encoder,
        "heads_per_layer": list(shape.heads),
        "neurons_per_layer": list(shape.neurons),
        "hidden_size": shape.hidden_size,
        "flops_reduction_at_128": 1 - encoder_flops(shape, 128) / encoder_flops(dense_shape, 128),
        "flops_reduction_at_16": 1 - encoder_flops(shape, 16) / encoder_flops(dense_shape, 16),
    }
