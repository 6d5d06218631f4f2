"""Prediction-layer distillation losses per task kind (plain torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kp_lightning.data.task_kinds import (
    ALL_TOKENS,
    EMBEDDING,
    LABELLED_TOKENS,
    SEQUENCE,
    SPAN,
    TASK_KIND_TABLE,
    VALUE,
    task_kind,
)
from kp_lightning.embedding.losses import DEFAULT_EMBEDDING_LOSS, embedding_loss
from kp_lightning.errors import ConfigError


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``T² · KL(teacher ‖ student)`` at temperature ``T`` over the last dimension."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1) * temperature**2


def token_weights(predictions: str, batch: dict) -> torch.Tensor:
    """``[batch, seq]`` 0/1 weights of the tokens whose predictions are compared: every non-padding token
    (``all_tokens``) or the tokens carrying a label id, i.e. the first sub-token of each word
    (``labelled_tokens``, when the batch has labels; otherwise every non-padding token)."""
    mask = batch["attention_mask"].bool()
    labels = batch.get("labels")
    if predictions == LABELLED_TOKENS and labels is not None and labels.shape == mask.shape:
        mask = mask & (labels != -100)
    return mask


def prediction_distillation_loss(
    kind: str, student, teacher, batch: dict, temperature: float, embedding_loss_name: str = DEFAULT_EMBEDDING_LOSS
) -> torch.Tensor:
    """Distillation loss between student and teacher outputs for one task kind (its ``predictions`` entry in
    :mod:`kp_lightning.data.task_kinds`).

    Classification and multiple choice: mean KL over examples (over the classes / choices). Regression: MSE
    between predictions (no temperature). Question answering: mean of the start and end KL. Masked LM: KL
    averaged over every non-padding token (not only the masked ones). Token classification: KL averaged over
    the labelled tokens (first sub-token of each word). Embeddings: ``embedding_loss_name`` between the pooled
    sentence embeddings (:mod:`kp_lightning.embedding.losses`; temperature unused).
    """
    predictions = task_kind(kind).predictions if kind in TASK_KIND_TABLE else None
    if predictions == SEQUENCE:
        return soft_kl(student.logits, teacher.logits, temperature).mean()
    if predictions == VALUE:
        return F.mse_loss(student.logits.float(), teacher.logits.float())
    if predictions == EMBEDDING:
        return embedding_loss(student["sentence_embedding"], teacher["sentence_embedding"], embedding_loss_name)
    if predictions == SPAN:
        start = soft_kl(student.start_logits, teacher.start_logits, temperature)
        end = soft_kl(student.end_logits, teacher.end_logits, temperature)
        return (start.mean() + end.mean()) / 2
    if predictions in (ALL_TOKENS, LABELLED_TOKENS):
        per_token = soft_kl(student.logits, teacher.logits, temperature)
        mask = token_weights(predictions, batch).to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ConfigError(f"No distillation loss for task kind {kind!r}.")
