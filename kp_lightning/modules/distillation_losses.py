"""Prediction-layer distillation losses per task kind (plain torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kp_lightning.errors import ConfigError


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``T² · KL(teacher ‖ student)`` at temperature ``T`` over the last dimension."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1) * temperature**2


def prediction_distillation_loss(kind: str, student, teacher, batch: dict, temperature: float) -> torch.Tensor:
    """Distillation loss between student and teacher outputs for one task kind.

    Classification: mean KL over examples. Regression: MSE between predictions (no temperature).
    Question answering: mean of the start and end KL. Masked LM: KL averaged over every non-padding
    token (not only the masked ones).
    """
    if kind == "classification":
        return soft_kl(student.logits, teacher.logits, temperature).mean()
    if kind == "regression":
        return F.mse_loss(student.logits.float(), teacher.logits.float())
    if kind == "question_answering":
        start = soft_kl(student.start_logits, teacher.start_logits, temperature)
        end = soft_kl(student.end_logits, teacher.end_logits, temperature)
        return (start.mean() + end.mean()) / 2
    if kind == "masked_lm":
        per_token = soft_kl(student.logits, teacher.logits, temperature)
        mask = batch["attention_mask"].to(per_token.dtype)
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ConfigError(f"No distillation loss for task kind {kind!r}.")
