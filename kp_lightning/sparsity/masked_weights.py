"""Keep-masks on named Linear weights whose zeros stay hard through training (plain torch).

Under FSDP2 (``fully_shard``) the weights are ``DTensor`` shards: the masks stay full (the same on every rank,
decided on the gathered weights, so they equal the masks of one process) and act on each rank's local shard.
"""

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


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch build without distributed support
        return None
    return DTensor


def is_sharded_tensor(tensor: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a sharded FSDP2 parameter or gradient)."""
    dtensor = _dtensor_class()
    return dtensor is not None and isinstance(tensor, dtensor)


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor: ``weight`` itself, or a sharded one gathered (collective: every rank must call it)."""
    return weight.full_tensor() if is_sharded_tensor(weight) else weight


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (a tensor of ``like``'s global shape, the same on every rank) that this rank holds of
    the sharded ``like``, on its device; ``full`` itself for an ordinary tensor. No communication."""
    if not is_sharded_tensor(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    local = like.to_local()
    full = full.to(local.device)
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def reshard(model: nn.Module) -> None:
    """Put every FSDP2 module of ``model`` back in its sharded state (a no-op elsewhere): the module's
    ``weight`` is then the sharded parameter the optimizer updates, not a temporary unsharded copy."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class MaskedWeights:
    """Boolean keep-masks for the ``weight`` of named ``nn.Linear`` layers.

    The weights stay ordinary parameters under their own names (Hugging Face keys never change); masks live
    here, not in the model. ``apply()`` zeroes the pruned entries and ``mask_gradients()`` zeroes their
    gradients, so optimizer state (AdamW momentum, weight decay) cannot revive them.

    The layers' current ``weight`` is looked up at every call, so the masks follow a model sharded after they were
    made (FSDP2 replaces the parameters by ``DTensor`` shards). On sharded weights ``prune_to``, ``lock``,
    ``sparsity`` and ``global_sparsity`` are collective (every rank calls them, in the same order); the masks
    stay full and identical on every rank; ``apply`` and ``mask_gradients`` act on the local shard only.

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
        self.model = model
        self.layers: dict[str, nn.Linear] = {}
        for name in layer_names:
            module = modules.get(name)
            if not isinstance(module, nn.Linear):
                raise SparsityPatternError(f"{name!r} is not an nn.Linear layer of this model")
            pattern.check(name, module.weight.shape)
            self.layers[name] = module
        self.pattern = pattern
        self.allocation = allocation
        self.masks: dict[str, torch.Tensor] = {}
        self._local: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (full mask, its local part)

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The selected layers' current weights (``DTensor`` shards under FSDP2)."""
        return {name: module.weight for name, module in self.layers.items()}

    def rebind(self, model: nn.Module) -> MaskedWeights:
        """The same layers and masks on ``model`` (e.g. an unsharded copy of the sharded model, to export)."""
        other = MaskedWeights(model, list(self.layers), self.pattern, self.allocation)
        other.masks = {name: mask.cpu() for name, mask in self.masks.items()}
        return other

    def _weights(self) -> dict[str, torch.Tensor]:
        reshard(self.model)
        return self.weights

    def _local_mask(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The mask of ``name`` for ``like`` (the weight or its gradient): the full mask on ``like``'s device, or
        the local shard of it for a sharded ``like``."""
        mask = self.masks[name]
        if not is_sharded_tensor(like):
            if mask.device != like.device:  # the model moved to its device after the masks were made
                mask = self.masks[name] = mask.to(like.device)
            return mask
        cached = self._local.get(name)
        if cached is None or cached[0] is not mask or cached[1].shape != like.to_local().shape:
            cached = self._local[name] = (mask, local_part(mask, like))
        return cached[1]

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks by magnitude at ``sparsity`` and zero the pruned weights (on sharded weights:
        chosen on the gathered weights, so every rank gets the masks one process would)."""
        weights = self._weights()
        full = {name: full_weight(weight) for name, weight in weights.items()}
        if self.allocation == "global":
            masks = global_magnitude_masks(full, sparsity)
        else:
            masks = {name: self._mask(weight, sparsity) for name, weight in full.items()}
        self.masks = {name: mask.to(full[name].device) for name, mask in masks.items()}
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
        """Pattern lock: the mask becomes ``weight != 0`` as it is now (of the whole weight, when sharded)."""
        self.masks = {name: full_weight(weight) != 0 for name, weight in self._weights().items()}

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (call after each optimizer step); a sharded weight's local shard."""
        weights = self._weights()
        for name in self.masks:
            weight = weights[name]
            mask = self._local_mask(name, weight)
            (weight.to_local() if is_sharded_tensor(weight) else weight).mul_(mask)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (call before each optimizer step); a sharded gradient's shard."""
        weights = self._weights()
        for name in self.masks:
            grad = weights[name].grad
            if grad is not None:
                mask = self._local_mask(name, grad)
                (grad.to_local() if is_sharded_tensor(grad) else grad).mul_(mask.to(dtype=grad.dtype))

    @torch.no_grad()
    def zero_counts(self) -> dict[str, int]:
        """Exact zeros of every selected weight (summed over the shards of a sharded one: collective)."""
        weights = self._weights()
        sharded = [name for name, w in weights.items() if is_sharded_tensor(w)]
        counts = {name: int((w == 0).sum()) for name, w in weights.items() if name not in sharded}
        if sharded:
            local = torch.tensor([int((weights[n].to_local() == 0).sum()) for n in sharded], dtype=torch.int64)
            mesh = weights[sharded[0]].device_mesh
            local = local.to(weights[sharded[0]].to_local().device)
            torch.distributed.all_reduce(local, group=mesh.get_group())
            counts.update(zip(sharded, local.tolist(), strict=True))
        return {name: counts[name] for name in weights}

    def sparsity(self) -> dict[str, float]:
        """Fraction of exact zeros in every selected weight (measured on the weights, not the masks)."""
        weights = self.weights
        return {name: zeros / weights[name].numel() for name, zeros in self.zero_counts().items()}

    def global_sparsity(self) -> float:
        """Fraction of exact zeros over all selected weights."""
        zeros = sum(self.zero_counts().values())
        return zeros / sum(w.numel() for w in self.weights.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full masks (the same on every rank, sharded or not), on the CPU."""
        return {name: mask.cpu() for name, mask in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - set(self.layers))
        if unknown:
            raise SparsityPatternError(f"saved masks for layers that are not selected now: {unknown[:4]}")
        weights = self.weights
        self.masks = {name: mask.to(local_device(weights[name]), torch.bool) for name, mask in state.items()}


def local_device(tensor: torch.Tensor) -> torch.device:
    """Where ``tensor``'s data is: a sharded tensor's local shard's device."""
    return tensor.to_local().device if is_sharded_tensor(tensor) else tensor.device
