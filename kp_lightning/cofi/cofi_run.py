"""Bookkeeping of a CoFi run: input checks, the kept best model, structure metrics."""

from __future__ import annotations

from torch import nn

from kp_lightning.core.structure import EncoderStructure
from kp_lightning.errors import ConfigError

from .model_size import structure_sparsity

SUPPORTED_KINDS = ("classification", "regression", "question_answering", "embedding")


def check_student(module) -> None:
    """Refuse a task kind CoFi's recipes do not cover and a teacher that is not fine-tuned for the task.

    Args:
        module: A distillation module with ``task``, ``model`` and ``teacher``.

    Raises:
        ValueError: saying what to change.
    """
    if module.task.kind not in SUPPORTED_KINDS:
        raise ConfigError(f"CoFi prunes task models ({', '.join(SUPPORTED_KINDS)}), not {module.task.kind!r} models")
    fresh = getattr(module.teacher, "kp_newly_initialized", [])
    if fresh:
        raise ConfigError(
            f"the teacher's task head was newly initialised when loading it for {module.task.name!r} "
            f"({', '.join(fresh[:3])}): the teacher must be fine-tuned on this task (train.py fit first)"
        )
    teacher_arch = (getattr(module.teacher.config, "architectures", None) or [""])[0]
    student_class = type(module.model).__name__
    for suffix in ("ForSequenceClassification", "ForQuestionAnswering") if teacher_arch else ():
        if teacher_arch.endswith(suffix) != student_class.endswith(suffix):
            raise ConfigError(
                f"the teacher was saved as {teacher_arch} but the student is a {student_class}: "
                "use a teacher fine-tuned on the same task"
            )


def kept_structure_metrics(structure: EncoderStructure, prefix: str = "cofi/kept_") -> dict[str, float]:
    """Totals and per-layer counts of what a structure keeps, as loggable scalars."""
    metrics = {
        f"{prefix}hidden": float(len(structure.hidden)),
        f"{prefix}heads": float(sum(len(h) for h in structure.heads)),
        f"{prefix}neurons": float(sum(len(n) for n in structure.neurons)),
        f"{prefix}attention_layers": float(sum(1 for h in structure.heads if h)),
        f"{prefix}ffn_layers": float(sum(1 for n in structure.neurons if n)),
    }
    for i, (heads, neurons) in enumerate(zip(structure.heads, structure.neurons, strict=True)):
        metrics[f"{prefix}heads_layer{i}"] = float(len(heads))
        metrics[f"{prefix}neurons_layer{i}"] = float(len(neurons))
    return metrics


def best_state(
    small: nn.Module | None, structure: EncoderStructure, metric: float, metric_name: str, step: int, expected: float
) -> dict:
    """What CoFi keeps of its best validated model: the compact model (on the CPU; ``None`` on the ranks that do
    not hold it, under FSDP2) and how it scored."""
    return {
        "model": small.cpu().eval() if small is not None else None,
        "structure": structure.to_dict(),
        "metric": metric,
        "metric_name": metric_name,
        "step": step,
        "sparsity_expected": expected,
        "sparsity_actual": structure_sparsity(structure),
    }
