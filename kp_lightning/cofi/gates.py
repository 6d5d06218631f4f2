"""CoFi's five gate groups on one encoder: sampling, deterministic masks, expected sparsity (cofi.md §2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from kp_lightning.core.adapter import EncoderShape
from kp_lightning.core.masks import StructuralMasks
from kp_lightning.errors import ConfigError

from .hard_concrete import (
    LOG_ALPHA_MAX,
    LOG_ALPHA_MIN,
    TEMPERATURE,
    deterministic_gates,
    prob_nonzero,
    sample_gates,
    uniform_noise,
)
from .model_size import encoder_size, full_size

GRANULARITIES = ("attention", "head", "ffn", "neuron", "hidden")


class CoFiGates(nn.Module):
    """Learnable hard-concrete gates over whole attention/FFN sublayers, heads, FFN neurons and hidden dims.

    The hidden-dimension gates are shared by all layers. Each group holds ``log α`` parameters initialised
    from ``N(init, 0.01)``: 10 for every group except neurons (0, the reference's "droprate 0.5").

    Args:
        shape: The student's current shape.
        granularities: Which groups to learn (others stay 1 and do not count in the expected size).
        init_log_alpha: Initial mean of ``log α`` for sublayer, head and hidden gates.
        neuron_init_log_alpha: Initial mean of ``log α`` for FFN-neuron gates.
        temperature: Hard-concrete temperature β.
        seed: Seed of the initial ``log α`` draw.
    """

    def __init__(
        self,
        shape: EncoderShape,
        granularities: Sequence[str] = GRANULARITIES,
        init_log_alpha: float = 10.0,
        neuron_init_log_alpha: float = 0.0,
        temperature: float = TEMPERATURE,
        seed: int = 0,
    ):
        super().__init__()
        unknown = sorted(set(granularities) - set(GRANULARITIES))
        if unknown or not granularities:
            raise ConfigError(f"granularities must be a non-empty subset of {list(GRANULARITIES)}, got {granularities}")
        self.shape = shape
        self.granularities = tuple(g for g in GRANULARITIES if g in granularities)
        self.temperature = temperature
        gen = torch.Generator().manual_seed(seed)

        def init(size: int, mean: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(size, generator=gen) * 0.01 + mean)

        self.head = nn.ParameterList([init(h, init_log_alpha) for h in shape.heads])
        self.neuron = nn.ParameterList([init(n, neuron_init_log_alpha) for n in shape.neurons])
        self.attention = init(shape.num_layers, init_log_alpha)
        self.ffn = init(shape.num_layers, init_log_alpha)
        self.hidden = init(shape.hidden_size, init_log_alpha)
        for name in set(GRANULARITIES) - set(self.granularities):
            for param in self._group(name):
                param.requires_grad_(False)

    def _group(self, name: str) -> list[nn.Parameter]:
        value = getattr(self, name)
        return list(value) if isinstance(value, nn.ParameterList) else [value]

    def learned_parameters(self) -> list[nn.Parameter]:
        """The ``log α`` tensors of the learned groups."""
        return [p for name in self.granularities for p in self._group(name)]

    def draw_noise(self, generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
        """Uniform noise for one sample of every learned group (draw once per optimizer step)."""
        return {name: [uniform_noise(p.shape, generator) for p in self._group(name)] for name in self.granularities}

    def _masks(self, value_of) -> StructuralMasks:
        ref = self.hidden
        masks = StructuralMasks.ones(self.shape, dtype=ref.dtype, device=ref.device)
        for name in self.granularities:
            values = [value_of(name, i, p) for i, p in enumerate(self._group(name))]
            setattr(masks, name, values if name in ("head", "neuron") else values[0])
        return masks

    def sample(self, noise: dict[str, list[torch.Tensor]]) -> StructuralMasks:
        """Differentiable training masks from ``noise`` (one sample shared by the whole batch)."""
        return self._masks(lambda name, i, p: sample_gates(p, noise[name][i], self.temperature))

    def deterministic(self) -> StructuralMasks:
        """Eval masks: the expected number of zeros per group set to 0, the rest at their soft value.

        Head and neuron gates are decided per layer, sublayer gates one by one, hidden gates globally.
        """

        def value_of(name: str, i: int, p: nn.Parameter) -> torch.Tensor:
            if name in ("attention", "ffn"):
                return torch.stack([deterministic_gates(p[j : j + 1], self.temperature)[0] for j in range(p.numel())])
            return deterministic_gates(p, self.temperature)

        with torch.no_grad():
            return self._masks(value_of)

    def probabilities(self) -> dict[str, list[torch.Tensor]]:
        """``P(z > 0)`` of every gate (1 for groups that are not learned)."""
        out = {}
        for name in GRANULARITIES:
            params = self._group(name)
            if name in self.granularities:
                out[name] = [prob_nonzero(p, self.temperature) for p in params]
            else:
                out[name] = [torch.ones_like(p) for p in params]
        return out

    def expected_size(self) -> torch.Tensor:
        """Expected encoder-layer parameter count (differentiable in ``log α``)."""
        p = self.probabilities()
        return encoder_size(
            heads=[h.sum() for h in p["head"]],
            neurons=[n.sum() for n in p["neuron"]],
            attention=p["attention"][0],
            ffn=p["ffn"][0],
            hidden=p["hidden"][0].sum(),
            shape=self.shape,
        )

    def expected_sparsity(self) -> torch.Tensor:
        """``ŝ = 1 - E[size] / full size``."""
        return 1 - self.expected_size() / full_size(self.shape)

    @torch.no_grad()
    def constrain(self) -> None:
        """Clamp every ``log α`` to ``[log 0.01, log 100]`` (after each optimizer step)."""
        for param in self.learned_parameters():
            param.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
