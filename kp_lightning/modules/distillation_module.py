"""LightningModule that trains a student with a frozen teacher: task loss + soft-label KD + extra terms."""

from __future__ import annotations

import torch
import transformers

from kp_lightning.data.task_kinds import task_kind
from kp_lightning.data.task_spec import TaskSpec
from kp_lightning.embedding.losses import DEFAULT_EMBEDDING_LOSS, check_embedding_loss
from kp_lightning.embedding.pooling import add_sentence_embedding
from kp_lightning.errors import ConfigError, KPError
from kp_lightning.modules.distillation_losses import prediction_distillation_loss
from kp_lightning.modules.extensions import StepContext
from kp_lightning.modules.model_loading import accepted_inputs, load_task_model, tokenizer_source
from kp_lightning.modules.task_module import TaskModule
from kp_lightning.pretrained_loading import load_pretrained


class TokenizerMismatchError(KPError, ValueError):
    """Teacher and student tokenize differently, so their outputs cannot be compared token by token."""


def check_same_tokenizer(student_path: str, teacher_path: str) -> None:
    """Raise ``TokenizerMismatchError`` if the two checkpoints' vocabularies differ."""
    student = load_pretrained(transformers.AutoTokenizer, student_path, "tokenizer")
    teacher = load_pretrained(transformers.AutoTokenizer, teacher_path, "teacher tokenizer")
    if student.get_vocab() != teacher.get_vocab():
        only_student = len(set(student.get_vocab()) - set(teacher.get_vocab()))
        raise TokenizerMismatchError(
            f"Student {student_path} and teacher {teacher_path} use different tokenizers "
            f"(vocabulary sizes {len(student)} vs {len(teacher)}, {only_student} student tokens unknown to the "
            "teacher). Distillation needs the same tokenizer: pick a teacher from the student's model family."
        )


class DistillationModule(TaskModule):
    """Student training with a frozen teacher.

    ``loss = alpha_ce · task loss + alpha_kd · KD(teacher ‖ student) + Σ extra terms``, where KD is
    ``T² · KL`` of the temperature-softened predictions (MSE for regression). The teacher is loaded from
    ``teacher_name_or_path``, kept in eval mode without gradients, is not part of the optimizer and is not
    saved in checkpoints (checkpoints store its path).

    Args:
        model_name_or_path: The student.
        teacher_name_or_path: The teacher (hub name, directory or export) fine-tuned on the same task.
        task_spec: Task description (linked from the data module by ``train.py``).
        alpha_ce: Weight of the task loss on gold labels.
        alpha_kd: Weight of the prediction distillation loss.
        temperature: Softmax temperature ``T`` of the distillation loss.
        embedding_loss: Embedding tasks: the embedding-distillation loss between pooled sentence embeddings
            (``similarity_kl``, ``cosine_mse``, ``contrastive`` or several joined by ``+``:
            :mod:`kp_lightning.embedding.losses`); the teacher pools with its own settings.
        **kwargs: ``TaskModule`` options (learning rate, schedule, loss terms...).
    """

    def __init__(
        self,
        model_name_or_path: str,
        teacher_name_or_path: str,
        task_spec: TaskSpec | None = None,
        alpha_ce: float = 0.5,
        alpha_kd: float = 0.5,
        temperature: float = 2.0,
        embedding_loss: str = DEFAULT_EMBEDDING_LOSS,
        **kwargs,
    ):
        if alpha_ce < 0 or alpha_kd < 0 or alpha_ce + alpha_kd == 0:
            raise ConfigError(f"alpha_ce and alpha_kd must be >= 0 and not both 0, got {alpha_ce}, {alpha_kd}.")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}.")
        check_embedding_loss(embedding_loss)
        check_same_tokenizer(tokenizer_source(model_name_or_path), tokenizer_source(teacher_name_or_path))
        super().__init__(model_name_or_path, task_spec, **kwargs)
        if task_kind(self.task.kind).pooled and alpha_ce > 0:
            raise ConfigError(
                f"embedding task {self.task.name!r} has no labels, so there is no task loss to weight by alpha_ce",
                fix="set alpha_ce: 0 (the embedding recipes do) and alpha_kd > 0",
            )
        teacher = load_task_model(teacher_name_or_path, self.task).eval().requires_grad_(False)
        student_out = getattr(self.model.config, "num_labels", None)
        if task_kind(self.task.kind).sized_by_labels and teacher.config.num_labels != student_out:
            raise ConfigError(
                f"Teacher {teacher_name_or_path} predicts {teacher.config.num_labels} labels, the student "
                f"{student_out}: distill from a teacher fine-tuned on {self.task.name!r}."
            )
        # Kept out of the module tree: not in state_dict, optimizer, DDP or FSDP wrapping.
        object.__setattr__(self, "teacher", teacher)
        self.teacher_input_keys = accepted_inputs(teacher)

    def _apply(self, fn, *args, **kwargs):
        """Move and cast the teacher together with the student (``.to(device)``, ``.half()``...)."""
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def teacher_outputs(self, batch: dict, output_hidden_states: bool = False):
        self.teacher.eval()
        inputs = {key: batch[key] for key in self.teacher_input_keys if key in batch}
        inputs.pop("labels", None)
        inputs.pop("start_positions", None)
        inputs.pop("end_positions", None)
        with torch.no_grad():
            outputs = self.teacher(**inputs, output_hidden_states=output_hidden_states)
            if task_kind(self.task.kind).pooled:
                add_sentence_embedding(self.teacher, outputs, inputs.get("attention_mask"))
            return outputs

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        hidden = self.extensions.needs_hidden_states
        outputs = self(batch, output_hidden_states=hidden)
        teacher = self.teacher_outputs(batch, output_hidden_states=hidden)
        hp = self.hparams
        parts = {}
        if hp.alpha_ce > 0:
            parts["task"] = hp.alpha_ce * self.task_loss(outputs, batch)
        parts["kd"] = hp.alpha_kd * prediction_distillation_loss(
            self.task.kind, outputs, teacher, batch, hp.temperature, hp.embedding_loss
        )
        parts.update(self.extensions.losses(StepContext(self, batch, outputs, teacher)))
        return parts
