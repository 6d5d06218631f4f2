"""CoFi on one student model: gates applied through mask hooks, per-step samples, penalty, materialization."""

from __future__ import annotations

import torch
from torch import nn

from kp_lightning.core.adapter import EncoderAdapter
from kp_lightning.core.compaction import compact
from kp_lightning.core.mask_hooks import MaskHandle, attach_masks
from kp_lightning.core.masks import StructuralMasks
from kp_lightning.core.structure import EncoderStructure
from kp_lightning.errors import ConfigError

from .gates import CoFiGates
from .lagrangian import LagrangeMultipliers, SparsitySchedule
from .model_size import structure_sparsity

_NOISE_STREAM = 1_000_003


class CoFiPruner(nn.Module):
    """Gates, Lagrange multipliers and the target schedule of one CoFi run on ``model``.

    The caller sets :attr:`step` (the optimizer step) before each training forward. Before the schedule's
    start the masks are all ones; afterwards every training forward uses the hard-concrete sample of the
    current step (the noise is drawn from ``seed`` and the step, so every DDP rank and a resumed run draw the
    same sample), and eval forwards use the deterministic masks.

    Args:
        model: The student (dense; a supported architecture).
        schedule: Target sparsity schedule.
        gates: The gates (default: all five groups with the reference's initialisation).
        seed: Seed of the per-step gate noise.
    """

    def __init__(self, model: nn.Module, schedule: SparsitySchedule, gates: CoFiGates | None = None, seed: int = 0):
        super().__init__()
        shape = EncoderAdapter(model).shape()
        self.gates = gates if gates is not None else CoFiGates(shape, seed=seed)
        if self.gates.shape != shape:
            raise ConfigError(f"the gates were built for {self.gates.shape}, the model is {shape}")
        self.multipliers = LagrangeMultipliers()
        self.schedule = schedule
        self.seed = seed
        self.step = 0
        self.masks = StructuralMasks.ones(shape)
        self._noise_step: int | None = None
        self._noise: dict | None = None
        self._handles: list = []
        self._mask_handle: MaskHandle | None = None

    # ---- hooks -----------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Apply the gates to ``model`` (its forward reads :attr:`masks`, refreshed by a pre-hook)."""
        self.detach()
        self.masks = StructuralMasks.ones(self.gates.shape, device=self.gates.hidden.device)
        self._mask_handle = attach_masks(model, self.masks)
        self._handles = [model.register_forward_pre_hook(self._refresh)]

    def detach(self) -> None:
        if self._mask_handle is not None:
            self._mask_handle.detach()
        for handle in self._handles:
            handle.remove()
        self._handles, self._mask_handle = [], None

    @property
    def pruning(self) -> bool:
        return self.schedule.pruning(self.step)

    def _refresh(self, module: nn.Module, args) -> None:
        if not self.pruning:
            new = StructuralMasks.ones(self.gates.shape, device=self.gates.hidden.device)
        elif module.training:
            new = self.gates.sample(self.noise())
        else:
            new = self.gates.deterministic()
        for name in ("head", "neuron", "hidden", "attention", "ffn"):
            setattr(self.masks, name, getattr(new, name))

    def noise(self) -> dict:
        """The gate noise of the current step (the same on every rank and after a resume)."""
        if self._noise_step != self.step:
            generator = torch.Generator().manual_seed(self.seed * _NOISE_STREAM + self.step)
            self._noise, self._noise_step = self.gates.draw_noise(generator), self.step
        return self._noise

    # ---- loss ------------------------------------------------------------------------------------------
    def penalty(self) -> tuple[torch.Tensor, dict[str, float]]:
        """The Lagrangian term of the current step and what to log.

        Before pruning starts the term is ``0·(gates + λ)``: zero gradients, but every parameter takes part,
        which DDP needs.
        """
        if not self.pruning:
            params = [*self.gates.learned_parameters(), *self.multipliers.parameters()]
            return sum(p.sum() for p in params) * 0.0, {"target_sparsity": 0.0}
        expected = self.gates.expected_sparsity()
        target = self.schedule.at(self.step)
        loss = self.multipliers.penalty(expected, target)
        stats = {
            "target_sparsity": target,
            "expected_sparsity": float(expected.detach()),
            "lambda_1": float(self.multipliers.lambda_1.detach()),
            "lambda_2": float(self.multipliers.lambda_2.detach()),
        }
        return loss, stats

    def existing_layers(self) -> list[bool]:
        """Per layer, whether the current masks keep its attention or its FFN sublayer."""
        return [
            not (self.masks.attention_removed(i) and self.masks.ffn_removed(i))
            for i in range(self.gates.shape.num_layers)
        ]

    # ---- results ---------------------------------------------------------------------------------------
    def deterministic_masks(self) -> StructuralMasks:
        return self.gates.deterministic()

    def structure(self) -> EncoderStructure:
        """What the deterministic masks keep."""
        return self.deterministic_masks().to_structure(self.gates.shape)

    def actual_sparsity(self) -> float:
        """Fraction of encoder-layer parameters the deterministic masks remove."""
        return structure_sparsity(self.structure())

    def materialize(self, model: nn.Module) -> nn.Module:
        """The physically smaller model: deterministic gate values folded into the weights, zeros sliced away."""
        device = next(model.parameters()).device  # an FSDP2 run gathers the student on the CPU
        return compact(model, self.deterministic_masks().to(device))
