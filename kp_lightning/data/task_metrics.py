"""Official metrics per task as torchmetrics objects, so distributed runs reduce their states correctly."""

from __future__ import annotations

import torch
import torchmetrics
from torch import nn
from torchmetrics import aggregation, classification, regression, text

from kp_lightning.data.embedding_metrics import EMBEDDING_METRICS, EmbeddingMetrics
from kp_lightning.data.entity_metrics import ENTITY_METRICS, EntityCounts
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.errors import ConfigError

COUNT_STATES = ("correct", "predicted", "gold", "correct_tags", "tags")


class EntityScores(torchmetrics.Metric):
    """Entity-level precision/recall/F1 (seqeval semantics) and tag accuracy of token classification.

    Only positions with a label id (not ``-100``: the first sub-token of each word) are scored. The states are
    sums, so distributed runs reduce them exactly.

    Args:
        label_names: Tag of each label id (``O``, ``B-PER``, ...).
    """

    full_state_update = False

    def __init__(self, label_names: list[str]):
        super().__init__()
        self.label_names = list(label_names)
        for name in COUNT_STATES:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch of predicted label ids and gold label ids, both ``[batch, seq]``."""
        counts = EntityCounts()
        for pred_row, gold_row in zip(predictions.cpu().tolist(), labels.cpu().tolist(), strict=True):
            kept = [(p, g) for p, g in zip(pred_row, gold_row, strict=True) if g != -100]
            counts.add([self.label_names[g] for _, g in kept], [self.label_names[p] for p, _ in kept])
        for name in COUNT_STATES:
            setattr(self, name, getattr(self, name) + getattr(counts, name))

    def compute(self) -> dict[str, torch.Tensor]:
        counts = EntityCounts(**{name: int(getattr(self, name)) for name in COUNT_STATES})
        return {name: torch.tensor(value) for name, value in counts.scores().items()}


def _metric(name: str, spec: TaskSpec) -> torchmetrics.Metric:
    if spec.kind == "masked_lm":
        if name == "accuracy":  # mean correctness over the selected (labelled) tokens
            return aggregation.MeanMetric()
        if name == "perplexity":
            return text.Perplexity(ignore_index=-100)
    elif spec.kind in ("classification", "multiple_choice"):  # multiple choice: one class per choice
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


def _check_metric_names(spec: TaskSpec, available) -> None:
    unknown = [m for m in spec.metrics if m not in available]
    if unknown:
        raise ConfigError(
            f"Metric(s) {unknown} are not available for {spec.kind} task {spec.name!r}.",
            fix=f"choose from {list(available)}",
        )


class TaskMetrics(nn.Module):
    """The metrics of one task and one evaluation split, fed with model outputs and batches.

    For question answering the batch must carry the eval ``examples`` and ``window_counts`` made by
    ``SquadEvalCollator``; predictions are post-processed into answer text per example before scoring. Token
    classification scores entities (:class:`EntityScores`: ``f1``, ``precision``, ``recall``, ``accuracy``).
    """

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        if spec.kind == "question_answering":
            self.squad = text.SQuAD()
            self.metrics = nn.ModuleDict()
        elif spec.kind == "embedding":
            _check_metric_names(spec, EMBEDDING_METRICS)
            self.embedding = EmbeddingMetrics(spec.metrics)
            self.metrics = nn.ModuleDict()
        elif spec.kind == "token_classification":
            _check_metric_names(spec, ENTITY_METRICS)
            self.entities = EntityScores(spec.label_names)
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
        if kind == "embedding":
            self.embedding.update(outputs["sentence_embedding"], batch)
            return
        logits = outputs.logits.detach().float()
        labels = batch["labels"]
        if kind == "token_classification":
            self.entities.update(logits.argmax(-1), labels)
            return
        for name, metric in self.metrics.items():
            if kind == "masked_lm":
                if name == "perplexity":
                    metric.update(logits, labels)
                else:
                    selected = labels != -100
                    metric.update((logits.argmax(-1)[selected] == labels[selected]).float())
            elif kind in ("classification", "multiple_choice"):
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
        if self.spec.kind == "embedding":
            return self.embedding.compute()
        if self.spec.kind == "token_classification":
            values = self.entities.compute()
            return {name: values[name] for name in self.spec.metrics}
        return {name: metric.compute() for name, metric in self.metrics.items()}

    def reset(self) -> None:
        extra = [getattr(self, name) for name in ("squad", "entities", "embedding") if hasattr(self, name)]
        for metric in (*self.metrics.values(), *extra):
            metric.reset()
