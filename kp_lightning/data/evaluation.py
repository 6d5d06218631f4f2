"""Evaluate a model on one dataloader with the task's metrics, outside a Trainer (e.g. a teacher's score)."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn

from kp_lightning.data.task_kinds import task_kind
from kp_lightning.data.task_metrics import TaskMetrics
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.embedding.pooling import add_sentence_embedding


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    dataloader,
    task: TaskSpec,
    input_keys: tuple[str, ...],
    prefix: str = "val/",
    sync: bool = True,
) -> dict[str, float]:
    """Metric values of ``model`` over ``dataloader``, named like the training module logs them.

    Args:
        sync: In a distributed run, combine the metric states of all processes (torchmetrics' default: every rank
            must call this, or ``compute`` waits forever). ``False`` scores this process's batches alone, for a call
            made on one rank (an export on rank 0).
    """
    device = next(model.parameters()).device
    metrics = TaskMetrics(task).to(device)
    if not sync:
        for metric in metrics.modules():
            if isinstance(metric, torchmetrics.Metric):
                metric.sync_on_compute = False
                metric._to_sync = False  # what compute() reads (set from sync_on_compute when the metric was built)
    was_training = model.training
    model.eval()
    for batch in dataloader:
        inputs = {k: v.to(device) for k, v in batch.items() if k in input_keys and isinstance(v, torch.Tensor)}
        labels = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        outputs = model(**inputs)
        if task_kind(task.kind).pooled:
            add_sentence_embedding(model, outputs, inputs.get("attention_mask"))
        metrics.update(outputs, labels)
    model.train(was_training)
    return {prefix + name: float(value) for name, value in metrics.compute().items()}
