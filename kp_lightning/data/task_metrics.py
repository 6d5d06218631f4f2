"""Official metrics per task as torchmetrics objects, so distributed runs reduce their states correctly."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn
from torchmetrics import aggregation, classification, regression, text

from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.errors import ConfigError


def _metric(name: str, spec: TaskSpec) -> torchmetrics.Metric:
    if spec.kind == "masked_lm":
        if name == "accuracy":  # mean correctness over the selected (labelled) tokens
            return aggregation.MeanMetric()
        if name == "perplexity":
            return text.Perplexity(ignore_index=-100)
    elif spec.kind == "classification":
        if name == "accuracy":
            return classification.MulticlassAccuracy(num_classes=spec.num_labels, average="micro")
        if name == "f1":
            if spec.num_labels == 2:
                return classification.BinaryF1Score()
            return classification.MulticlassF1Score(num_classes=spec.num_labels, average="macro")
        if name == "mcc":
            return classification.MulticlassMatthewsCorrCoef(num_classes=spec.num_labels)
    elif spec.kind == "regression":
        if name == "pearson":
            return regression.PearsonCorrCoef()
        if name == "spearman":
            return regression.SpearmanCorrCoef()
    raise ConfigError(f"Metric {name!r} is not available for {spec.kind} task {spec.name!r}.")


class TaskMetrics(nn.Module):
    """The metrics of one task and one evaluation split, fed with model outputs and batches.

    For question answering the batch must carry the eval ``examples`` and ``window_counts`` made by
    ``SquadEvalCollator``; predictions are post-processed into answer text per example before scoring.
    """

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        if spec.kind == "question_answering":
            self.squad = text.SQuAD()
            self.metrics = nn.ModuleDict()
        else:
            self.metrics = nn.ModuleDict({name: _metric(name, spec) for name in spec.metrics})

    @torch.no_grad()
    def update(self, outputs, batch: dict) -> None:
        """Add one batch of model ``outputs`` (with ``logits`` or ``start_logits``/``end_logits``)."""
        kind = self.spec.kind
        if kind == "question_answering":
            self._update_squad(outputs, batch)
            return
        logits = outputs.logits.detach().float()
        labels = batch["labels"]
        for name, metric in self.metrics.items():
            if kind == "masked_lm":
                if name == "perplexity":
                    metric.update(logits, labels)
                else:
                    selected = labels != -100
                    metric.update((logits.argmax(-1)[selected] == labels[selected]).float())
            elif kind == "classification":
                metric.update(logits.argmax(-1), labels)
            else:
                metric.update(logits.squeeze(-1), labels.float())

    def _update_squad(self, outputs, batch: dict) -> None:
        from kp_lightning.data.squad import decode_eval_batch, squad_metric_inputs

        start, end = outputs.start_logits.detach().float().cpu(), outputs.end_logits.detach().float().cpu()
        predictions = decode_eval_batch(batch, start, end, allow_impossible=self.spec.allow_impossible)
        self.squad.update(*squad_metric_inputs(predictions, batch["examples"]))

    def compute(self) -> dict[str, torch.Tensor]:
        """Metric values by name (SQuAD: ``exact_match`` and ``f1`` in percent)."""
        if self.spec.kind == "question_answering":
            return dict(self.squad.compute())
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in (*self.metrics.values(), *([self.squad] if hasattr(self, "squad") else [])):
            metric.reset()
