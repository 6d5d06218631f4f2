"""CoFi's loss terms for a DistillationModule: the Lagrangian sparsity penalty and dynamic layer distillation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from kp_lightning.cofi import CoFiPruner, default_teacher_layers, identity_transform, layer_distillation_loss
from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.compaction import original_structure
from kp_lightning.errors import ConfigError
from kp_lightning.modules.extensions import LossTerm, StepContext


class CoFiSparsityLoss(LossTerm):
    """``λ1(ŝ−t) + λ2(ŝ−t)²`` of a :class:`CoFiPruner` (which it owns, so gates and λ's are checkpointed)."""

    def __init__(self, pruner: CoFiPruner, weight: float = 1.0):
        super().__init__(weight=weight)
        self.pruner = pruner
        self.last_stats: dict[str, float] = {}

    def forward(self, ctx: StepContext) -> torch.Tensor:
        loss, self.last_stats = self.pruner.penalty()
        return loss


class DynamicLayerDistillation(LossTerm):
    """CoFi's layerwise distillation: ``Σ MSE(W·H_s^{m(t)}, H_t^t)`` over chosen teacher layers ``t``.

    ``m`` is recomputed every step (the closest existing student layer; ``ordered`` keeps the matching
    monotone). ``W`` is a learned linear map, trained with the model's learning rate and initialised to the
    identity on the student's kept hidden dims, so it also serves compacted students in a follow-up
    fine-tuning run.

    Args:
        teacher_layers: 1-based teacher layers (default: 4 evenly spaced ones, 3/6/9/12 for 12 layers).
        mapping: ``"ordered"`` (the paper's constraint) or ``"unordered"``.
        weight: Multiplier of the term (the reference's ``distill_loss_alpha``, 0.9).
    """

    def __init__(
        self,
        teacher_layers: list[int] | None = None,
        mapping: Literal["ordered", "unordered"] = "ordered",
        weight: float = 0.9,
    ):
        super().__init__(weight=weight, needs_hidden_states=True)
        if mapping not in ("ordered", "unordered"):
            raise ConfigError(f"mapping must be 'ordered' or 'unordered', got {mapping!r}")
        self.teacher_layers = list(teacher_layers) if teacher_layers else None
        self.mapping = mapping
        self.transform: torch.nn.Linear | None = None
        self.existing_layers: Callable[[], list[bool]] | None = None
        self.last_mapping: list[int | None] = []

    def bind(self, module) -> None:
        """Build ``W`` from the student's and teacher's widths and check the teacher layers."""
        teacher = getattr(module, "teacher", None)
        if teacher is None:
            raise ConfigError("DynamicLayerDistillation needs a teacher: use it with DistillationModule.")
        num_teacher_layers = teacher.config.num_hidden_layers
        if self.teacher_layers is None:
            self.teacher_layers = default_teacher_layers(num_teacher_layers)
        bad = [t for t in self.teacher_layers if not 1 <= t <= num_teacher_layers]
        if bad:
            raise ConfigError(f"teacher_layers {bad} are outside the teacher's layers 1..{num_teacher_layers}")
        if self.transform is not None:
            return
        adapter = EncoderAdapter(module.model)
        kept = original_structure(module.model).hidden
        self.transform = identity_transform(adapter.hidden_size, teacher.config.hidden_size, kept)
        self.transform.to(next(module.model.parameters()).device)

    def _existing(self, model) -> list[bool]:
        if self.existing_layers is not None:
            return self.existing_layers()
        return [view.has_attention or view.has_ffn for view in EncoderAdapter(model).layers]

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if self.transform is None:
            raise RuntimeError("DynamicLayerDistillation was not bound to a module (its setup did not run)")
        loss, self.last_mapping = layer_distillation_loss(
            ctx.outputs.hidden_states,
            ctx.teacher_outputs.hidden_states,
            self.teacher_layers,
            self.transform,
            ctx.batch["attention_mask"],
            self._existing(ctx.module.model),
            ordered=self.mapping == "ordered",
        )
        return loss
