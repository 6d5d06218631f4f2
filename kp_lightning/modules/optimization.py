"""AdamW parameter groups (no decay on biases and norms, callback groups) and a linear warmup/decay schedule."""

from __future__ import annotations

import torch
from torch import nn

from kp_lightning.modules.extensions import ParamGroup


def build_param_groups(module: nn.Module, weight_decay: float, extra: list[ParamGroup]) -> list[dict]:
    """Default groups (decay / no decay) of trainable parameters not claimed by an ``extra`` group."""
    claimed = {id(p) for group in extra for p in group.params}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad or id(param) in claimed:
            continue
        is_norm_or_bias = param.ndim < 2 or "norm" in name.lower()
        (no_decay if is_norm_or_bias else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay, "scheduled": True},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "scheduled": True},
    ]
    groups = [g for g in groups if g["params"]]
    for group in extra:
        groups.append(
            {
                "name": group.name,
                "clip_gradients": group.clip_gradients,
                "params": list(group.params),
                "lr": group.lr,
                "weight_decay": group.weight_decay,
                "scheduled": group.scheduled,
                "maximize": group.maximize,
                **group.extra,
            }
        )
    return groups


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, decay: bool = True):
    """Linear warmup to each group's lr, then linear decay to 0 (or constant if not ``decay``); groups with
    ``scheduled=False`` stay constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if not decay:
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    lambdas = [factor if group.get("scheduled", True) else (lambda step: 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
