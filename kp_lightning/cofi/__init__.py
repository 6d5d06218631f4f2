"""CoFi (Xia et al., 2022): hard-concrete L0 gates, Lagrangian sparsity control, dynamic layer distillation."""

from .gates import GRANULARITIES, CoFiGates
from .lagrangian import LagrangeMultipliers, SparsitySchedule
from .layer_distillation import default_teacher_layers, identity_transform, layer_distillation_loss, match_layers
from .model_size import encoder_size, full_size, structure_size, structure_sparsity
from .pruner import CoFiPruner

__all__ = [
    "GRANULARITIES",
    "CoFiGates",
    "CoFiPruner",
    "LagrangeMultipliers",
    "SparsitySchedule",
    "default_teacher_layers",
    "encoder_size",
    "full_size",
    "identity_transform",
    "layer_distillation_loss",
    "match_layers",
    "structure_size",
    "structure_sparsity",
]
