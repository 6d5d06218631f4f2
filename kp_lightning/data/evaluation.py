"""Evaluate a model on one dataloader with the task's metrics, outside a Trainer (e.g. a teacher's score)."""

from __future__ import annotations

import torch
from torch import nn

from kp_lightning.data.task_metrics import TaskMetrics
from kp_lightning.data.task_spec import TaskSpec


@torch.no_grad()
def evaluate_model(
    model: nn.Module, dataloader, task: TaskSpec, input_keys: tuple[str, ...], prefix: str = "val/"
) -> dict[str, float]:
    """Metric values of ``model`` over ``dataloader``, named like the training module logs them."""
    device = next(model.parameters()).device
    metrics = TaskMetrics(task).to(device)
    was_training = model.training
    model.eval()
    for batch in dataloader:
        inputs = {k: v.to(device) for k, v in batch.items() if k in input_keys and isinstance(v, torch.Tensor)}
        labels = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        metrics.update(model(**inputs), labels)
    model.train(was_training)
    return {prefix + name: float(value) for name, value in metrics.compute().items()}
