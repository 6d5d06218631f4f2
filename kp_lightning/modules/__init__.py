"""LightningModules: task fine-tuning and distillation, with extension points for pruning callbacks."""

from kp_lightning.modules.cofi_losses import CoFiSparsityLoss, DynamicLayerDistillation
from kp_lightning.modules.distillation_module import DistillationModule, TokenizerMismatchError
from kp_lightning.modules.extensions import HiddenStateMSE, LossTerm, ParamGroup, StepContext
from kp_lightning.modules.task_module import TaskModule

__all__ = [
    "CoFiSparsityLoss",
    "DynamicLayerDistillation",
    "DistillationModule",
    "HiddenStateMSE",
    "LossTerm",
    "ParamGroup",
    "StepContext",
    "TaskModule",
    "TokenizerMismatchError",
]
