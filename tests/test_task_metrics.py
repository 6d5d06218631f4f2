"""Metric values checked against hand-computed ones."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kp_lightning.data.glue_tasks import glue_task
from kp_lightning.data.task_metrics import TaskMetrics
from kp_lightning.data.task_spec import TaskSpec


def logits_for(preds: list[int], num_labels: int = 2) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), num_labels).float()


def feed(metrics: TaskMetrics, logits: torch.Tensor, labels: torch.Tensor, batches: int = 2) -> dict[str, float]:
    for chunk_logits, chunk_labels in zip(logits.chunk(batches), labels.chunk(batches), strict=True):
        metrics.update(SimpleNamespace(logits=chunk_logits), {"labels": chunk_labels})
    return {k: float(v) for k, v in metrics.compute().items()}


def test_accuracy_and_binary_f1_by_hand():
    preds, gold = [1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 1, 0]
    tp = sum(p == g == 1 for p, g in zip(preds, gold, strict=True))  # 3
    fp = sum(p == 1 and g == 0 for p, g in zip(preds, gold, strict=True))  # 2
    fn = sum(p == 0 and g == 1 for p, g in zip(preds, gold, strict=True))  # 1
    values = feed(TaskMetrics(glue_task("mrpc").task_spec()), logits_for(preds), torch.tensor(gold))
    assert values["accuracy"] == pytest.approx(5 / 8)
    assert values["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_matthews_correlation_by_hand():
    preds, gold = [1, 1, 0, 0, 1, 0, 1, 1, 1, 0], [1, 0, 0, 1, 1, 0, 1, 0, 1, 0]
    pairs = list(zip(preds, gold, strict=True))
    tp, tn = pairs.count((1, 1)), pairs.count((0, 0))
    fp, fn = pairs.count((1, 0)), pairs.count((0, 1))
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    values = feed(TaskMetrics(glue_task("cola").task_spec()), logits_for(preds), torch.tensor(gold))
    assert values["mcc"] == pytest.approx(expected, abs=1e-6)


def test_pearson_and_spearman_by_hand():
    pred = [0.5, 2.0, 1.0, 4.0, 3.5, 2.5]
    gold = [1.0, 1.5, 0.5, 5.0, 3.0, 4.0]

    def pearson(x, y):
        mx, my = sum(x) / len(x), sum(y) / len(y)
        cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
        return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))

    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        out = [0.0] * len(x)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    values = feed(TaskMetrics(glue_task("stsb").task_spec()), torch.tensor(pred).unsqueeze(-1), torch.tensor(gold))
    assert values["pearson"] == pytest.approx(pearson(pred, gold), abs=1e-5)
    assert values["spearman"] == pytest.approx(pearson(ranks(pred), ranks(gold)), abs=1e-5)


def test_masked_lm_accuracy_and_perplexity_by_hand():
    spec = TaskSpec(name="mlm", kind="masked_lm", num_labels=5, metrics=["accuracy", "perplexity"])
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 2, 3, -100], [1, -100, -100, 4]])
    values = feed(TaskMetrics(spec), logits, labels)
    picked = labels != -100
    nll = -torch.log_softmax(logits, -1)[picked].gather(-1, labels[picked].unsqueeze(-1)).squeeze(-1)
    assert values["perplexity"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    assert values["accuracy"] == pytest.approx((logits.argmax(-1)[picked] == labels[picked]).float().mean().item())


def test_reset_starts_a_new_epoch_and_unknown_metric_is_rejected():
    metrics = TaskMetrics(glue_task("sst2").task_spec())
    feed(metrics, logits_for([0, 0]), torch.tensor([1, 1]), batches=1)
    metrics.reset()
    assert feed(metrics, logits_for([1, 1]), torch.tensor([1, 1]), batches=1)["accuracy"] == 1.0
    with pytest.raises(ValueError, match="Unknown metric"):
        TaskSpec(name="x", kind="classification", num_labels=2, metrics=["bleu"])
    with pytest.raises(ValueError, match="not available for regression"):
        TaskMetrics(TaskSpec(name="x", kind="regression", num_labels=1, metrics=["accuracy"]))
