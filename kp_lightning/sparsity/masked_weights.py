"""Keep-masks on named Linear weights whose zeros stay hard through training (plain torch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from kp_lightning.sparsity.patterns import (
    SparsityPattern,
    SparsityPatternError,
    global_magnitude_masks,
    magnitude_mask,
)

ALLOCATIONS = ("uniform", "global")


class MaskedWeights:
    """Boolean keep-masks for the ``weight`` of named ``nn.Linear`` layers.

    The weights stay ordinary parameters under their own names (Hugging Face keys never change); masks live
    here, not in the model. ``apply()`` zeroes the pruned entries and ``mask_gradients()`` zeroes their
    gradients, so optimizer state (AdamW momentum, weight decay) cannot revive them.

    Args:
        model: The model holding the layers.
        layer_names: Qualified names of ``nn.Linear`` layers (see ``select_linear_names``).
        pattern: How zeros are grouped (unstructured, ``block:RxC``, ``N:M``).
        allocation: ``uniform`` (every weight gets the same sparsity) or ``global`` (one magnitude threshold
            over all selected weights; unstructured only).

    Raises:
        SparsityPatternError: the pattern does not tile a weight, or global allocation with a structured pattern.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_names: list[str],
        pattern: SparsityPattern = SparsityPattern(),
        allocation: str = "uniform",
    ):
        if allocation not in ALLOCATIONS:
            raise SparsityPatternError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
        if allocation == "global" and pattern.kind != "unstructured":
            raise SparsityPatternError("global allocation needs the unstructured pattern; use uniform for blocks/N:M")
        modules = dict(model.named_modules())
        self.weights: dict[str, nn.Parameter] = {}
        for name in layer_names:
            module = modules.get(name)
            if not isinstance(module, nn.Linear):
                raise SparsityPatternError(f"{name!r} is not an nn.Linear layer of this model")
            pattern.check(name, module.weight.shape)
            self.weights[name] = module.weight
        self.pattern = pattern
        self.allocation = allocation
        self.masks: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks by magnitude at ``sparsity`` and zero the pruned weights."""
        if self.allocation == "global":
            masks = global_magnitude_masks(dict(self.weights), sparsity)
        else:
            masks = {name: self._mask(weight, sparsity) for name, weight in self.weights.items()}
        self.masks = {name: mask.to(self.weights[name].device) for name, mask in masks.items()}
        self.apply()

    def _mask(self, weight: torch.Tensor, sparsity: float) -> torch.Tensor:
        if self.pattern.kind != "n:m":
            return magnitude_mask(weight, sparsity, self.pattern)
        # N:M ramps up group by group: floor(s·M) zeros per group of M, at most M − N.
        zeros = min(math.floor(sparsity * self.pattern.m + 1e-9), self.pattern.m - self.pattern.n)
        if zeros == 0:
            return torch.ones_like(weight, dtype=torch.bool)
        return magnitude_mask(weight, 0.0, SparsityPattern("n:m", n=self.pattern.m - zeros, m=self.pattern.m))

    @torch.no_grad()
    def lock(self) -> None:
        """Pattern lock: the mask becomes ``weight != 0`` as it is now."""
        self.masks = {name: weight != 0 for name, weight in self.weights.items()}

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (call after each optimizer step)."""
        for name, mask in self.masks.items():
            weight = self.weights[name]
            if mask.device != weight.device:  # the model moved to its device after the masks were made
                mask = self.masks[name] = mask.to(weight.device)
            weight.mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (call before each optimizer step)."""
        for name, mask in self.masks.items():
            grad = self.weights[name].grad
            if grad is not None:
                grad.mul_(mask.to(device=grad.device, dtype=grad.dtype))

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in every selected weight (measured on the weights, not the masks)."""
        return {name: float((w == 0).sum()) / w.numel() for name, w in self.weights.items()}

    def global_sparsity(self) -> float:
        """Fraction of exact zeros over all selected weights."""
        zeros = sum(int((w == 0).sum()) for w in self.weights.values())
        return zeros / sum(w.numel() for w in self.weights.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: mask.cpu() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - set(self.weights))
        if unknown:
            raise SparsityPatternError(f"saved masks for layers that are not selected now: {unknown[:4]}")
        self.masks = {name: mask.to(self.weights[name].device, torch.bool) for name, mask in state.items()}
