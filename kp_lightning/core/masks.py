"""Structural mask tensors (0/1 or real-valued scales) for heads, neurons, hidden dims and sublayers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter import EncoderShape
from .structure import EncoderStructure, StructureError


@dataclass
class StructuralMasks:
    """Multiplicative masks over the prunable units of an encoder.

    Values may be 0/1 or real-valued scales (CoFi gates, Kwon mask tuning). A sublayer whose scale is 0, or all
    of whose units are 0, is removed: a post-LayerNorm sublayer then computes ``LN(x + s·b)``. Hooks read these
    tensors at every forward, so a training method may replace them between steps.

    Attributes:
        head: Per layer, one value per attention head (scales the head's context vector).
        neuron: Per layer, one value per FFN neuron (scales the activation).
        hidden: One value per hidden dimension (scales the hidden stream; LayerNorms see only non-zero dims).
        attention: One scale per layer for the attention sublayer output.
        ffn: One scale per layer for the FFN sublayer output.
    """

    head: list[torch.Tensor]
    neuron: list[torch.Tensor]
    hidden: torch.Tensor
    attention: torch.Tensor
    ffn: torch.Tensor

    @classmethod
    def ones(cls, shape: EncoderShape, dtype: torch.dtype = torch.float32, device=None) -> StructuralMasks:
        """Masks that keep everything."""
        kw = {"dtype": dtype, "device": device}
        return cls(
            head=[torch.ones(h, **kw) for h in shape.heads],
            neuron=[torch.ones(n, **kw) for n in shape.neurons],
            hidden=torch.ones(shape.hidden_size, **kw),
            attention=torch.ones(shape.num_layers, **kw),
            ffn=torch.ones(shape.num_layers, **kw),
        )

    @classmethod
    def from_structure(
        cls, structure: EncoderStructure, dtype: torch.dtype = torch.float32, device=None
    ) -> StructuralMasks:
        """0/1 masks that keep exactly what ``structure`` keeps."""
        masks = cls.ones(structure.shape, dtype=dtype, device=device)
        for layer, kept in enumerate(structure.heads):
            masks.head[layer] = _keep_only(masks.head[layer], kept)
        for layer, kept in enumerate(structure.neurons):
            masks.neuron[layer] = _keep_only(masks.neuron[layer], kept)
        masks.hidden = _keep_only(masks.hidden, structure.hidden)
        return masks

    def to(self, device) -> StructuralMasks:
        """The same masks on ``device``."""
        return StructuralMasks(
            head=[t.to(device) for t in self.head],
            neuron=[t.to(device) for t in self.neuron],
            hidden=self.hidden.to(device),
            attention=self.attention.to(device),
            ffn=self.ffn.to(device),
        )

    def validate(self, shape: EncoderShape) -> None:
        """Check every tensor matches ``shape``.

        Raises:
            StructureError: naming the first tensor whose size is wrong.
        """
        if len(self.head) != shape.num_layers or len(self.neuron) != shape.num_layers:
            raise StructureError(
                f"masks cover {len(self.head)} attention / {len(self.neuron)} FFN layers, "
                f"the model has {shape.num_layers}"
            )
        for layer in range(shape.num_layers):
            _check_size(self.head[layer], shape.heads[layer], f"head[{layer}]")
            _check_size(self.neuron[layer], shape.neurons[layer], f"neuron[{layer}]")
        _check_size(self.hidden, shape.hidden_size, "hidden")
        _check_size(self.attention, shape.num_layers, "attention")
        _check_size(self.ffn, shape.num_layers, "ffn")
        if not bool((self.hidden != 0).any()):
            raise StructureError("the hidden mask is all zero; at least one hidden dimension must stay")

    def attention_removed(self, layer: int) -> bool:
        return bool(self.attention[layer] == 0) or not bool((self.head[layer] != 0).any())

    def ffn_removed(self, layer: int) -> bool:
        return bool(self.ffn[layer] == 0) or not bool((self.neuron[layer] != 0).any())

    def to_structure(self, shape: EncoderShape) -> EncoderStructure:
        """The 0/1 structure of these masks: non-zero units of sublayers that are not removed."""
        self.validate(shape)
        return EncoderStructure(
            shape=shape,
            heads=[[] if self.attention_removed(i) else _nonzero(h) for i, h in enumerate(self.head)],
            neurons=[[] if self.ffn_removed(i) else _nonzero(n) for i, n in enumerate(self.neuron)],
            hidden=_nonzero(self.hidden),
        )


def _keep_only(ones: torch.Tensor, kept: list[int]) -> torch.Tensor:
    mask = torch.zeros_like(ones)
    mask[kept] = 1
    return mask


def _nonzero(t: torch.Tensor) -> list[int]:
    return torch.nonzero(t.detach() != 0).flatten().tolist()


def _check_size(t: torch.Tensor, size: int, where: str) -> None:
    if t.dim() != 1 or t.numel() != size:
        raise StructureError(f"mask '{where}' has shape {tuple(t.shape)}, expected ({size},)")
