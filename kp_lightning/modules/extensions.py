"""How callbacks extend a training module without subclassing it: extra loss terms and parameter groups.

A callback (CoFi gates, pruning, QAT...) calls, typically in its ``setup`` hook, i.e. before checkpoint
restore and before ``configure_optimizers``::

    pl_module.add_loss_term("lagrangian", my_term)                 # an nn.Module: forward(ctx) -> scalar
    pl_module.add_param_group("gates", gate_params, lr=0.1, scheduled=False)

Loss terms are submodules, so their own parameters move with the model and are checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kp_lightning.errors import ConfigError


@dataclass
class StepContext:
    """What a loss term sees at one step.

    Attributes:
        module: The LightningModule (``module.model`` is the student).
        batch: The batch as given to the step.
        outputs: Student model outputs (hidden states included if any term needs them).
        teacher_outputs: Frozen teacher outputs in a distillation run, else ``None``.
        stage: ``"train"``, ``"val"`` or ``"test"``.
    """

    module: Any
    batch: dict
    outputs: Any
    teacher_outputs: Any = None
    stage: str = "train"


class LossTerm(nn.Module):
    """Base class of extra loss terms: ``forward(ctx) -> scalar tensor``, scaled by ``weight``.

    Args:
        weight: Multiplier applied to the term in the total loss.
        needs_hidden_states: The term reads ``outputs.hidden_states`` (and the teacher's).
    """

    def __init__(self, weight: float = 1.0, needs_hidden_states: bool = False):
        super().__init__()
        self.weight = weight
        self.needs_hidden_states = needs_hidden_states

    def bind(self, module) -> None:
        """Called by the module's ``setup`` (before optimizers and checkpoint restore) to build parameters
        that depend on the student or teacher, e.g. a learned projection. Must be idempotent."""

    def forward(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError


class HiddenStateMSE(LossTerm):
    """Layerwise distillation: mean squared error between student and teacher hidden states.

    Args:
        layer_pairs: ``[student_layer, teacher_layer]`` pairs, indices into ``hidden_states`` (0 = embeddings).
            Default: student layer i is matched to teacher layer ``round(i * L_teacher / L_student)``.
        weight: Multiplier of the term.
    """

    def __init__(self, layer_pairs: list[list[int]] | None = None, weight: float = 1.0):
        super().__init__(weight=weight, needs_hidden_states=True)
        self.layer_pairs = [tuple(pair) for pair in layer_pairs] if layer_pairs else None

    def forward(self, ctx: StepContext) -> torch.Tensor:
        if ctx.teacher_outputs is None:
            raise RuntimeError("HiddenStateMSE needs a teacher: use it with DistillationModule.")
        student, teacher = ctx.outputs.hidden_states, ctx.teacher_outputs.hidden_states
        pairs = self.layer_pairs or [
            (i, round(i * (len(teacher) - 1) / (len(student) - 1))) for i in range(1, len(student))
        ]
        mask = ctx.batch["attention_mask"].unsqueeze(-1).to(student[0].dtype)
        total = student[0].new_zeros(())
        for s, t in pairs:
            if student[s].shape[-1] != teacher[t].shape[-1]:
                raise ConfigError(
                    f"HiddenStateMSE: student layer {s} has width {student[s].shape[-1]} but teacher layer {t} "
                    f"has {teacher[t].shape[-1]}; layerwise MSE needs equal widths."
                )
            squared = (student[s] - teacher[t].detach()) ** 2 * mask
            total = total + squared.sum() / (mask.sum() * student[s].shape[-1])
        return total / len(pairs)


@dataclass
class ParamGroup:
    """An optimizer parameter group added by a callback.

    Attributes:
        name: Group name (shown in learning-rate logs).
        params: The parameters; they are removed from the module's default groups.
        lr: Learning rate of this group.
        weight_decay: Weight decay of this group.
        scheduled: Follow the module's warmup/decay schedule (``False``: constant ``lr``).
        maximize: Gradient ascent for this group (e.g. Lagrange multipliers).
        clip_gradients: Include this group in the trainer's gradient clipping.
    """

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    scheduled: bool = True
    maximize: bool = False
    clip_gradients: bool = True
    extra: dict = field(default_factory=dict)


class ExtensionRegistry(nn.Module):
    """Holds the loss terms and parameter groups registered on a module."""

    def __init__(self):
        super().__init__()
        self.loss_terms = nn.ModuleDict()
        self.param_groups: list[ParamGroup] = []

    def add_loss_term(self, name: str, term: LossTerm) -> None:
        if not isinstance(term, LossTerm):
            raise TypeError(f"Loss term {name!r} must be a LossTerm (an nn.Module with forward(ctx)), got {term!r}.")
        if name in self.loss_terms:
            raise ConfigError(f"A loss term named {name!r} is already registered.")
        self.loss_terms[name] = term

    def add_param_group(self, group: ParamGroup) -> None:
        if any(g.name == group.name for g in self.param_groups):
            raise ConfigError(f"A parameter group named {group.name!r} is already registered.")
        if not group.params:
            raise ConfigError(f"Parameter group {group.name!r} has no parameters.")
        self.param_groups.append(group)

    @property
    def needs_hidden_states(self) -> bool:
        return any(term.needs_hidden_states for term in self.loss_terms.values())

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Weighted value of every registered term."""
        return {name: term.weight * term(ctx) for name, term in self.loss_terms.items()}
